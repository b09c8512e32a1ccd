"""The DDIM extensions DDNM rests on, DeqIR's sequential chain, and DDNM / DDNM+.

References used here, none of them the code under test:
  * torch's float32 cumprod of float32 betas (what the ermongroup-derived codes run);
  * `../shared/fixtures/deqir/deqir_sr4_avgpool.npz`: the official DeqIR code's
    T-step Picard fixed point, whose last slot IS the sequential chain;
  * numpy float64 loops of DDNM's update (`functions/svd_ddnm.py` as the paper
    writes it) around the same network;
  * the official DDNM+ rule (`functions/svd_operators.py` `Lambda`, `Lambda_noise`,
    written out per coefficient with its masks) in numpy float64: per pixel for
    inpainting (V a permutation, where the official code and jaxir coincide) and
    with a dense float64 SVD for a matrix operator;
  * the official time-travel walk (`get_schedule_jump`: the full up/down list of
    levels), replayed step by step;
  * closed forms: the last DDNM step lands in {x : A x = y}; x0 clipping as an
    x0 map equals `clip_denoised`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from references import FIXTURES, ddpm_tiny_prior, nhwc, rel_err
import jaxir.diffusion as D
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators import AvgPoolSR, Blur, Inpaint, matrix_operator
from jaxir.operators.phase_retrieval import PhaseRetrieval
from jaxir.priors.analytic import gaussian_prior, gmm_prior
from jaxir.solvers.ddnm import (DDNM_PRESETS, DDNMConfig, ddnm, ddnm_chain, ddnm_plus_weights,
                                ddnm_preset, ddnm_sample, ddnm_schedule, draw_start,
                                uniform_timesteps)

FIX = str(FIXTURES)


@pytest.fixture(scope="module")
def tiny_prior():
  """The real upstream DDPM U-Net `ddpm/ddpm_tiny_a`, float32-betas schedule (as DeqIR)."""
  return ddpm_tiny_prior("float32")


@pytest.fixture(scope="module")
def deq():
  return np.load(f"{FIX}/deqir/deqir_sr4_avgpool.npz")


def _eps_jax(x, t):
  c = 0.5 + t.reshape(-1, 1, 1, 1) / 1000.0
  return 1.3 * jnp.tanh(c * x) + 0.1 * jnp.sin(t.reshape(-1, 1, 1, 1) / 100.0)


# ------------------------------------------------------------------ schedule and DDIM step

def test_float32_schedule_matches_torch_bitwise():
  betas = D.beta_schedule("linear", 1000)
  ref = (1 - torch.from_numpy(betas).float()).cumprod(0).numpy()
  s = D.get_schedule("linear", 1000, "float32")
  np.testing.assert_array_equal(np.asarray(s.alphas_cumprod), ref)
  np.testing.assert_array_equal(np.asarray(s.alphas_cumprod_prev), np.append(1.0, ref[:-1]))
  np.testing.assert_array_equal(np.asarray(s.betas), torch.from_numpy(betas).float().numpy())
  # The default stays guided-diffusion's float64 product, a different rounding.
  d = np.asarray(D.get_schedule("linear", 1000).alphas_cumprod)
  assert 0 < np.max(np.abs(d - ref)) < 1e-6
  with pytest.raises(ConfigError, match="cumprod_dtype"):
    D.get_schedule("linear", 1000, "float16")


def test_ddim_step_ddnm_weighting_against_numpy():
  rng = np.random.default_rng(0)
  x, e, z = (rng.standard_normal((8, 8, 3)).astype(np.float32) for _ in range(3))
  op = AvgPoolSR((8, 8, 3), 2)
  y = rng.uniform(-1, 1, (4, 4, 3)).astype(np.float32)
  a, an, etw, nw = 0.3, 0.7, 0.1, 0.2
  up = lambda v: np.repeat(np.repeat(v, 2, 0), 2, 1)  # A^+ of 2x2 average pooling
  pool = lambda v: v.reshape(4, 2, 4, 2, 3).mean((1, 3))
  x64, e64, z64 = (v.astype(np.float64) for v in (x, e, z))
  x0 = (x64 - np.sqrt(1 - a) * e64) / np.sqrt(a)
  x0h = x0 - up(pool(x0) - y)
  ref = (np.sqrt(an) * x0h + np.sqrt(1 - an) * nw * z64
         + np.sqrt(1 - an) * np.sqrt(1 - etw ** 2) * e64)
  corr = lambda v: v - op.pinv(op.A(v) - y)
  got, got_x0 = D.ddim_step(jnp.asarray(x), jnp.asarray(e), a, an, eta=nw, noise=jnp.asarray(z),
                            clip=False, x0_fn=corr, keep_eps=True, etw=etw)
  assert rel_err(got, ref) < 1e-5 and rel_err(got_x0, x0h) < 1e-5
  # Defaults unchanged: keyword-free call equals the explicit guided-diffusion form.
  sigma = 0.4 * np.sqrt((1 - an) / (1 - a)) * np.sqrt(1 - a / an)
  x0c = np.clip(x0, -1, 1)
  ec = (x64 / np.sqrt(a) - x0c) / np.sqrt(1 / a - 1)
  ref2 = np.sqrt(an) * x0c + np.sqrt(1 - an - sigma ** 2) * ec + sigma * z64
  got2, _ = D.ddim_step(jnp.asarray(x), jnp.asarray(e), a, an, eta=0.4, noise=jnp.asarray(z))
  assert rel_err(got2, ref2) < 1e-5


def test_ddim_sample_x0_fn_and_schedule_object():
  x_T = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  ts = D.space_timesteps(1000, "ddim10")
  clipped = D.ddim_sample(_eps_jax, x_T, ts, clip_denoised=True)
  # Clipping passed as an x0 map (eps recomputed from it) is the clip_denoised chain.
  as_map = D.ddim_sample(_eps_jax, x_T, ts, clip_denoised=False,
                         x0_fn=lambda x0, t: jnp.clip(x0, -1.0, 1.0))
  np.testing.assert_array_equal(np.asarray(as_map), np.asarray(clipped))
  # The same chain with alphas read from a Schedule (float32 table vs respaced float64).
  sched = D.ddim_sample(_eps_jax, x_T, ts, clip_denoised=False, schedule=D.get_schedule())
  named = D.ddim_sample(_eps_jax, x_T, ts, clip_denoised=False)
  assert rel_err(sched, named) < 1e-5
  # A traced schedule (e.g. a prior passed to jit) works.
  f = jax.jit(lambda s, x: D.ddim_sample(_eps_jax, x, ts, clip_denoised=False, schedule=s))
  assert rel_err(f(D.get_schedule(), x_T), named) < 1e-5
  # x0_fn sees the step's timestep.
  seen = D.ddim_sample(_eps_jax, x_T, [0, 500], clip_denoised=False,
                       x0_fn=lambda x0, t: x0 * 0 + t.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(seen), 0.0, atol=1e-6)  # last step: x0 := t = 0
  with pytest.raises(ShapeError, match="noise"):
    D.ddim_sample(_eps_jax, x_T, ts, eta=0.5, noise=jnp.zeros((1, 8, 8, 3)))


# ------------------------------------------------------------------ the DDNM chain

def test_uniform_timesteps():
  np.testing.assert_array_equal(uniform_timesteps(5), [800, 600, 400, 200, 0])
  np.testing.assert_array_equal(uniform_timesteps(3), [666, 333, 0])  # 999 dropped
  assert uniform_timesteps(25)[0] == 960 and len(uniform_timesteps(1000)) == 1000
  with pytest.raises(ConfigError):
    uniform_timesteps(0)


def test_chain_matches_official_fixed_point(tiny_prior, deq):
  """The official DeqIR T-step Picard fixed point ends in the sequential chain."""
  op = AvgPoolSR((32, 32, 3), int(deq["scale"]))
  x = jax.jit(lambda a, b: ddnm_chain(a, b, op, tiny_prior, T=int(deq["T"]),
                                      etw=float(deq["etw"])))(
      jnp.asarray(nhwc(deq["xT"][0])), jnp.asarray(nhwc(deq["y"][0])))
  assert rel_err(x, nhwc(deq["picard_T"][-1])) < 5e-6


def test_chain_matches_numpy_loop_with_noise(tiny_prior):
  """nw > 0, another operator: a float64 numpy loop around the same network."""
  rng = np.random.default_rng(1)
  mask = (rng.uniform(size=(32, 32, 1)) > 0.5).astype(np.float32) * np.ones((1, 1, 3), np.float32)
  op = Inpaint((32, 32, 3), mask)
  x_gt = rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)
  y = np.asarray(op.A(jnp.asarray(x_gt)))
  x_T, z = (rng.standard_normal((32, 32, 3)).astype(np.float32) for _ in range(2))
  T, etw, nw = 4, 0.3, 0.2
  got = jax.jit(lambda a, b, n: ddnm_chain(a, b, op, tiny_prior, T=T, etw=etw, nw=nw, noise=n))(
      jnp.asarray(x_T), jnp.asarray(y), jnp.asarray(z))
  eps = jax.jit(tiny_prior.eps)
  ac = np.asarray(tiny_prior.schedule.alphas_cumprod, np.float64)
  ts = [750, 500, 250, 0]
  x = x_T.astype(np.float64)
  for i, t in enumerate(ts):
    a, an = ac[t], (ac[ts[i + 1]] if i + 1 < T else 1.0)
    e = np.asarray(eps(jnp.asarray(x, jnp.float32)[None], jnp.array([t])))[0]
    x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
    x0 = x0 - mask * x0 + np.asarray(op.pinv(jnp.asarray(y)), np.float64)
    x = np.sqrt(an) * x0 + np.sqrt(1 - an) * (nw * z + np.sqrt(1 - etw ** 2) * e)
  assert rel_err(got, x) < 1e-4


def test_ddnm_solver_consistent_vmaps_and_refuses_bad_input(tiny_prior):
  op = AvgPoolSR((32, 32, 3), 4)
  rng = np.random.default_rng(2)
  ys = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32))
  keys = jax.random.split(jax.random.key(0), 2)
  cfg = ddnm_preset("deqir", T=3)
  solve = jax.jit(lambda k, y: ddnm(k, y, op, tiny_prior, cfg))
  xs, info = jax.vmap(solve)(keys, ys)
  for i in range(2):
    x, inf = solve(keys[i], ys[i])
    np.testing.assert_allclose(np.asarray(xs[i]), np.asarray(x), rtol=0, atol=1e-5)
    # The last step goes to abar = 1: the result is the range-space-corrected x0, A x = y.
    assert float(inf.residual) < 1e-4 * float(jnp.linalg.norm(ys[i]))
  assert info.nfe.tolist() == [3, 3]
  with pytest.raises(ConfigError, match="pseudo-inverse"):
    pr = PhaseRetrieval((32, 32, 3))
    ddnm(keys[0], jnp.zeros(pr.out_shape), pr, tiny_prior, cfg)
  with pytest.raises(ConfigError, match="etw"):
    DDNMConfig(etw=1.5)

  with pytest.raises(ShapeError):
    ddnm(keys[0], ys, op, tiny_prior, cfg)


# ------------------------------------------------------------------ DDNM / DDNM+ (official sampler)

def _levels_walk(T, L, r):
  """The official list of visited levels (RePaint's jumps, `get_schedule_jump`): T-1 down
  to -1 one level at a time; on landing on j in range(0, T - L, L), r - 1 times per j,
  climb back up L levels one at a time."""
  credit = dict.fromkeys(range(0, T - L, L), r - 1)
  out = [T - 1]
  while out[-1] > -1:
    lvl = out[-1] - 1
    out.append(lvl)
    if credit.get(lvl, 0):
      credit[lvl] -= 1
      out.extend(range(lvl + 1, lvl + L + 1))
  return out


def _official_weights(s, a, sigma_y, sigma_t, eta):
  """`Lambda` / `Lambda_noise` of the official operators, per coefficient, with their
  masks in their order (a = sqrt(abar_next), sigma_t = sqrt(1 - abar_next))."""
  s = np.asarray(s, np.float64)
  inv = np.where(s == 0, 0.0, 1.0 / np.where(s == 0, 1.0, s))
  lam = np.ones_like(s)
  d1 = np.full_like(s, sigma_t * eta)
  d2 = np.full_like(s, sigma_t * np.sqrt(1 - eta ** 2))
  if sigma_y != 0:
    c = sigma_t < a * sigma_y * inv
    lam = np.where(c, s * sigma_t * np.sqrt(1 - eta ** 2) / a / sigma_y, lam)
    d1, d2 = np.where(c, sigma_t * eta, d1), np.where(c, 0.0, d2)
    c = sigma_t > a * sigma_y * inv
    d1 = np.where(c, np.sqrt(np.maximum(sigma_t ** 2 - a ** 2 * sigma_y ** 2 * inv ** 2, 0)), d1)
    d2 = np.where(c, 0.0, d2)
    z = s == 0
    d1, d2 = np.where(z, sigma_t * eta, d1), np.where(z, sigma_t * np.sqrt(1 - eta ** 2), d2)
  return lam, d1, d2


def _replay(levels, x_T, noise, travel_noise, ac, skip, eps_fn, step):
  """Replay the official up/down walk; `step(x, e, a, an) -> (x_next, x0)` is one down step."""
  x, k, x0 = np.asarray(x_T, np.float64), 0, None
  for i, j in zip(levels[:-1], levels[1:]):
    if j < i:
      t = i * skip
      a, an = ac[t], (ac[j * skip] if j >= 0 else 1.0)
      x, x0 = step(x, eps_fn(x, t), a, an, noise[k])
      k += 1
    else:  # back in time: re-noise the last UNcorrected x0 (each climb overwrites x)
      x = np.sqrt(ac[j * skip]) * x0 + np.sqrt(1 - ac[j * skip]) * travel_noise[k - 1]
  return x


@pytest.mark.parametrize("T,L,r", [(10, 1, 1), (10, 2, 3), (7, 3, 2), (100, 1, 1), (3, 1, 4)])
def test_ddnm_schedule_matches_official_walk(T, L, r):
  lv = _levels_walk(T, L, r)
  skip = 1000 // T
  rows = []
  for idx, (i, j) in enumerate(zip(lv[:-1], lv[1:])):
    if j < i:
      back = -1
      nxt = idx + 1
      while nxt + 1 < len(lv) and lv[nxt + 1] > lv[nxt]:
        nxt += 1
        back = lv[nxt]
      rows.append((i * skip, j * skip if j >= 0 else -1, back * skip if back >= 0 else -1))
  sched = ddnm_schedule(T, L, r)
  np.testing.assert_array_equal(np.stack([sched.t, sched.t_next, sched.t_travel], 1), rows)
  assert len(sched.t) == T + (r - 1) * L * len(range(0, T - L, L))
  if r == 1:  # no travel: the DDNM skip rule k * (1000 // T), then abar = 1
    np.testing.assert_array_equal(sched.t, np.arange(T - 1, -1, -1) * skip)


def test_ddnm_plus_weights_follow_the_official_rule():
  rng = np.random.default_rng(3)
  s = np.concatenate([rng.uniform(0.01, 2.0, 40), np.zeros(8)]).astype(np.float32)
  for abar_next in (0.01, 0.3, 0.9, 0.9999, 1.0):
    for sigma_y, eta in ((0.1, 0.85), (0.4, 0.3), (0.0, 0.85)):
      a, sig = np.sqrt(abar_next), np.sqrt(1 - abar_next)
      got = ddnm_plus_weights(jnp.asarray(s), abar_next, sigma_y, eta)
      ref = _official_weights(s, a, sigma_y, sig, eta)
      if sigma_y == 0:  # the sigma_y -> 0 limit (the solver runs plain DDNM there instead)
        ref = (np.ones_like(s), np.where(s > 0, sig, sig * eta),
               np.where(s > 0, 0.0, sig * np.sqrt(1 - eta ** 2)))
      for g, w in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
      # Every coefficient of x_t' carries noise variance sigma_t^2, y's noise counted.
      lam, d1, d2 = (np.asarray(v, np.float64) for v in got)
      carried = np.where(s > 0, a * lam * sigma_y / np.where(s > 0, s, 1), 0.0)
      np.testing.assert_allclose(carried ** 2 + d1 ** 2 + d2 ** 2, sig ** 2, atol=1e-6)


def test_ddnm_plus_inpaint_with_time_travel_matches_pixel_loop(tiny_prior):
  """DDNM+ with travel on the real network: the official per-pixel rule (V = permutation)."""
  rng = np.random.default_rng(4)
  mask = (rng.uniform(size=(32, 32, 1)) > 0.5).astype(np.float32) * np.ones((1, 1, 3), np.float32)
  op = Inpaint((32, 32, 3), mask)
  sy, eta, T, L, r = 0.3, 0.85, 4, 1, 2
  y = (mask * (rng.uniform(-1, 1, (32, 32, 3)) + sy * rng.standard_normal((32, 32, 3)))
       ).astype(np.float32)
  cfg = DDNMConfig(T=T, eta=eta, sigma_y=sy, travel_length=L, travel_repeat=r)
  S = len(ddnm_schedule(T, L, r).t)
  x_T, *draws = (rng.standard_normal((n, 32, 32, 3)).astype(np.float32) for n in (1, S, S))
  got, info = jax.jit(lambda *a: ddnm_sample(a[0], a[1], a[2], op, tiny_prior, cfg, a[3]))(
      jnp.asarray(x_T[0]), jnp.asarray(draws[0]), jnp.asarray(y), jnp.asarray(draws[1]))
  assert int(info.nfe) == S == 7
  eps = jax.jit(tiny_prior.eps)
  eps_fn = lambda x, t: np.asarray(eps(jnp.asarray(x, jnp.float32)[None], jnp.array([t])))[0]

  def step(x, e, a, an, z):
    x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
    lam, d1, d2 = _official_weights(mask, np.sqrt(an), sy, np.sqrt(1 - an), eta)
    x0h = x0 - lam * (mask * x0 - y)
    return np.sqrt(an) * x0h + d1 * z + d2 * e, x0

  ac = np.asarray(tiny_prior.schedule.alphas_cumprod, np.float64)
  ref = _replay(_levels_walk(T, L, r), x_T[0], draws[0], draws[1], ac, 1000 // T, eps_fn, step)
  assert rel_err(got, ref) < 1e-4


@pytest.mark.parametrize("sigma_y", [0.0, 0.2])
def test_ddnm_matrix_operator_matches_dense_svd_loop(sigma_y):
  """DDNM (sigma_y 0, official `ddnm_diffusion`) and DDNM+ with a general V (dense SVD)."""
  rng = np.random.default_rng(5)
  shape, n, m = (4, 4, 1), 16, 8
  u, _ = np.linalg.qr(rng.standard_normal((m, m)))
  v, _ = np.linalg.qr(rng.standard_normal((n, n)))
  M = (u * np.geomspace(2.0, 0.05, m)) @ v[:m]
  op = matrix_operator(M, shape)
  prior = gaussian_prior(rng.uniform(-0.3, 0.3, shape), np.diag(rng.uniform(0.05, 0.3, n)))
  y = (M @ rng.uniform(-1, 1, n) + sigma_y * rng.standard_normal(m)).astype(np.float32)
  T, eta = 6, 0.85
  cfg = DDNMConfig(T=T, eta=eta, sigma_y=sigma_y)
  x_T, noise = rng.standard_normal(shape), rng.standard_normal((T,) + shape)
  got, info = jax.jit(lambda a, b, c: ddnm_sample(a, b, c, op, prior, cfg))(
      jnp.asarray(x_T, jnp.float32), jnp.asarray(noise, jnp.float32), jnp.asarray(y))
  _, s, vt = np.linalg.svd(M)
  s_full = np.concatenate([s, np.zeros(n - m)])
  M_pinv = np.linalg.pinv(M)

  def step(x, e, a, an, z):
    x0 = ((x - np.sqrt(1 - a) * e) / np.sqrt(a)).reshape(-1)
    lam, d1, d2 = _official_weights(s_full, np.sqrt(an), sigma_y, np.sqrt(1 - an), eta)
    x0h = x0 - vt.T @ (lam * (vt @ (M_pinv @ (M @ x0 - y))))
    nz = vt.T @ (d1 * (vt @ z.reshape(-1)) + d2 * (vt @ e.reshape(-1)))
    return (np.sqrt(an) * x0h + nz).reshape(shape), x0.reshape(shape)

  eps_fn = lambda x, t: np.asarray(prior.eps(jnp.asarray(x, jnp.float32)[None],
                                             jnp.array([t])), np.float64)[0]
  ac = np.asarray(prior.schedule.alphas_cumprod, np.float64)
  ref = _replay(_levels_walk(T, 1, 1), x_T, noise, None, ac, 1000 // T, eps_fn, step)
  assert rel_err(got, ref) < 1e-4
  if sigma_y == 0:  # DDNM lands exactly in {A x = y}
    assert float(info.residual) < 1e-5 * np.linalg.norm(y)


def test_official_sampler_and_deqir_preset_against_deqir_chain():
  """The official sampler with eta 0 and eps weight etw is DeqIR's chain where the two
  timestep rules agree (T = 5); the "deqir" preset is that chain from draw_start's x_T."""
  rng = np.random.default_rng(6)
  op = AvgPoolSR((8, 8, 3), 4)
  prior = gmm_prior(rng.uniform(-0.5, 0.5, (3, 8, 8, 3)), np.array([0.05, 0.1, 0.2]),
                    np.array([0.2, 0.3, 0.5]))
  x_T = jnp.asarray(rng.standard_normal((8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (2, 2, 3)), jnp.float32)
  got, _ = jax.jit(lambda a, b: ddnm_sample(a, jnp.zeros((5,) + a.shape), b, op, prior,
                                            DDNMConfig(T=5, eta=0.0, etw=0.1)))(x_T, y)
  ref = jax.jit(lambda a, b: ddnm_chain(a, b, op, prior, T=5, etw=0.1))(x_T, y)
  assert rel_err(got, ref) < 1e-5
  key = jax.random.key(3)
  got, info = jax.jit(lambda k, b: ddnm(k, b, op, prior, ddnm_preset("deqir", T=5)))(key, y)
  ref = jax.jit(lambda a, b: ddnm_chain(a, b, op, prior, T=5, etw=0.1))(
      draw_start(key, op, 0.0)[0], y)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
  assert int(info.nfe) == 5


def test_ddnm_plus_vmaps_counts_travel_and_refuses_bad_input():
  rng = np.random.default_rng(7)
  shape = (4, 4, 1)
  op = matrix_operator(rng.standard_normal((6, 16)) / 4, shape)
  prior = gaussian_prior(np.zeros(shape), 0.1)
  cfg = DDNMConfig(T=10, sigma_y=0.1, travel_length=2, travel_repeat=2)
  ys = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
  keys = jax.random.split(jax.random.key(1), 3)
  solve = lambda k, y: ddnm(k, y, op, prior, cfg)
  xs, info = jax.jit(jax.vmap(solve))(keys, ys)
  assert info.nfe.tolist() == [18] * 3  # 10 steps + 4 travels of 2 levels
  for i in range(3):
    x, _ = jax.jit(solve)(keys[i], ys[i])
    np.testing.assert_allclose(np.asarray(xs[i]), np.asarray(x), rtol=0, atol=1e-5)
  x_nojit, _ = solve(keys[2], ys[2])
  np.testing.assert_allclose(np.asarray(xs[2]), np.asarray(x_nojit), rtol=0, atol=1e-5)
  assert float(jnp.max(jnp.abs(xs[0] - xs[1]))) > 1e-2
  # Presets: the official DDNM runs, DeqIR's chain, the noisy denoising run.
  base = {k: v for k, v in DDNM_PRESETS.items() if k not in ("deqir", "denoise")}
  assert sorted(base) == ["box_inpaint", "colorize", "cs_wh", "deblur_gauss",
                          "random_inpaint", "sr4", "sr4_avgpool"]
  assert all(c == DDNMConfig(T=100, eta=0.85, sigma_y=0.0, travel_length=1, travel_repeat=1)
             for c in base.values())
  assert DDNM_PRESETS["denoise"].sigma_y == 0.2
  assert ddnm_preset("deqir") == DDNMConfig(T=25, eta=0.0, etw=0.1, chain="deqir")
  assert ddnm_preset("sr4", sigma_y=0.05).sigma_y == 0.05
  with pytest.raises(ConfigError, match="unknown DDNM preset"):
    ddnm_preset("sr16")
  with pytest.raises(ConfigError, match="SVD"):
    blur = Blur(shape, jnp.ones((3, 3)) / 9)
    ddnm(keys[0], jnp.zeros(shape), blur, prior, cfg)
  with pytest.raises(ConfigError, match="chain='deqir'"):
    DDNMConfig(chain="deqir", sigma_y=0.1)
  with pytest.raises(ConfigError, match="etw = eta"):
    DDNMConfig(sigma_y=0.1, etw=0.2)
  with pytest.raises(ConfigError, match="travel_length"):
    DDNMConfig(travel_length=0)
  with pytest.raises(ShapeError, match="noise"):
    ddnm_sample(jnp.zeros(shape), jnp.zeros((3,) + shape), ys[0], op, prior, DDNMConfig(T=4))
  with pytest.raises(ConfigError, match="travel_noise"):
    ddnm_sample(jnp.zeros(shape), jnp.zeros((18,) + shape), ys[0], op, prior, cfg)
