"""The DDIM extensions DDNM rests on, and the sequential DDNM chain.

References used here, none of them the code under test:
  * torch's float32 cumprod of float32 betas (what the ermongroup-derived codes run);
  * `../shared/fixtures/deqir/deqir_sr4_avgpool.npz`: the official DeqIR code's
    T-step Picard fixed point, whose last slot IS the sequential chain;
  * a numpy float64 loop of DDNM's update (`functions/svd_ddnm.py` as the paper
    writes it) around the same network;
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
from jaxir.operators import AvgPoolSR, Inpaint
from jaxir.operators.phase_retrieval import PhaseRetrieval
from jaxir.solvers.ddnm import DDNMConfig, ddnm, ddnm_chain, uniform_timesteps

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
  cfg = DDNMConfig(T=3)
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
