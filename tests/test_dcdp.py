"""DCDP against the official code's recorded phases and against closed forms.

References used here, none of them the code under test:
  * `../shared/fixtures/dcdp/dcdp_sr4_{ddim,tweedie}.npz`: the official DCDP
    code run phase by phase with the upstream `adm_tiny_a` U-Net;
  * the schedule, NFE count and presets stated in the DCDP issue / official configs;
  * a numpy float64 DDIM loop over guided-diffusion's `space_timesteps` and betas;
  * a numpy heavy-ball loop with hand-derived gradients (nonlinear operator);
  * the exact Gaussian posterior mean (`jaxir.priors.posterior`, Bayes' rule);
  * a call counter inside the model (`jax.debug.callback`) and finite differences.
"""
import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import space_timesteps as gd_space_timesteps

from references import FIXTURES, nhwc, rel_err
from jaxir.diffusion import get_schedule, q_sample
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import Operator
from jaxir.operators.inpaint import Inpaint
from jaxir.operators.superres import BicubicSR
from jaxir.priors import make_prior
from jaxir.priors.analytic import gaussian_prior, sample_prior
from jaxir.priors.posterior import gaussian_posterior, operator_matrix
from jaxir.solvers.dcdp import (DCDP_PRESETS, DCDPConfig, data_consistency, dcdp,
                                dcdp_nfe, dcdp_preset, dcdp_schedule, effective_step, for_noise,
                                purification_table, purify, purify_row, rescale_lr)

FIX = str(FIXTURES)
H = 8


@pytest.fixture(scope="module")
def adm_prior():
  from jaxir.models import from_torch
  with open(f"{FIX}/adm/adm_tiny_a.json") as f:
    cfg = json.load(f)
  model, params = from_torch(f"{FIX}/adm/adm_tiny_a.pt", "adm", cfg)
  return make_prior(lambda p, x, t: model.apply(p, x, t), params)


@pytest.fixture(scope="module")
def gauss():
  """A correlated Gaussian prior on 8x8x1 images (mean 0.3, std 0.2, so clipping to
  [-1, 1] hardly acts) and a 4x4 box hole."""
  ii, jj = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
  p = np.stack([ii.ravel(), jj.ravel()], 1)
  d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
  cov = 0.2 ** 2 * np.exp(-d2 / (2 * 2.0 ** 2)) + 1e-4 * np.eye(H * H)
  prior = gaussian_prior(np.full((H, H, 1), 0.3, np.float32), cov)
  mask = np.ones((H, H, 1), np.float32)
  mask[2:6, 2:6] = 0
  return prior, Inpaint((H, H, 1), mask), mask


# 2 lr / m = 1 on the 64 entries of the inpainting measurement.
SMALL = DCDPConfig(K=10, tau=100, lr=32.0, T0=400)
solve = jax.jit(dcdp, static_argnames="config")


# ---------------------------------------------------------------- fixtures

def test_fixture_settings_and_schedule():
  for name in ("ddim", "tweedie"):
    d = np.load(f"{FIX}/dcdp/dcdp_sr4_{name}.npz")
    np.testing.assert_array_equal(dcdp_schedule(int(d["K"]), int(d["T0"]), int(d["TK"])),
                                  d["schedule"])
  # The example.
  np.testing.assert_array_equal(dcdp_schedule(10, 400),
                                [400, 356, 311, 267, 222, 178, 133, 89, 44, 1])


def test_fixture_phase_by_phase(adm_prior):
  """Each phase, fed the recorded input and draw, gives the recorded output."""
  op = BicubicSR((32, 32, 3), 4)
  dc = jax.jit(data_consistency, static_argnames=("tau",))
  # DDIM and Tweedie rows padded to one length: one compilation serves both.
  pur = jax.jit(purify_row)
  ac = get_schedule().alphas_cumprod
  for name in ("ddim", "tweedie"):
    d = np.load(f"{FIX}/dcdp/dcdp_sr4_{name}.npz")
    y = nhwc(d["y"][0])
    assert rel_err(op.A(nhwc(d["x_gt"][0])), y) < 1e-5
    tab = purification_table(d["t_k"], int(d["ddim_steps"]), bool(d["tweedie"]), pad_to=20)
    for k in range(int(d["K"])):
      x_dc = dc(nhwc(d["x_in"][k, 0]), y, op, tau=int(d["tau"]), lr=float(d["lr"]),
                momentum=float(d["momentum"]))
      assert rel_err(x_dc, nhwc(d["x_dc"][k, 0])) < 1e-5, (name, k)
      x_noisy = q_sample(nhwc(d["x_dc"][k, 0]), ac[int(d["t_k"][k]) - 1],
                         nhwc(d["q_noise"][k, 0]))
      assert rel_err(x_noisy, nhwc(d["x_noisy"][k, 0])) < 1e-5, (name, k)
      row = jax.tree.map(lambda a: a[k], tab)
      x_pur = pur(adm_prior, nhwc(d["x_dc"][k, 0]), nhwc(d["q_noise"][k, 0]), row)
      assert rel_err(x_pur, nhwc(d["x_pur"][k, 0])) < 2e-5, (name, k)


# ---------------------------------------------------------------- building blocks

def _ddim_reference(eps_fn, x, t_k, noise, ddim_steps, tweedie):
  """float64 numpy purification as the official code runs it (with the t_k = 1 quirk)."""
  ac = np.cumprod(1.0 - gd.get_named_beta_schedule("linear", 1000))
  x = np.sqrt(ac[t_k - 1]) * np.asarray(x, np.float64) + np.sqrt(1 - ac[t_k - 1]) * noise
  td = max(t_k, 2)
  ts = [td - 1] if tweedie else sorted(gd_space_timesteps(td, [min(ddim_steps, td)]))
  for i in range(len(ts) - 1, -1, -1):
    a, a_prev = ac[ts[i]], (ac[ts[i - 1]] if i > 0 else 1.0)
    e = np.asarray(eps_fn(x.astype(np.float32), ts[i]), np.float64)
    x0 = np.clip(np.sqrt(1 / a) * x - np.sqrt(1 / a - 1) * e, -1, 1)
    e = (np.sqrt(1 / a) * x - x0) / np.sqrt(1 / a - 1)
    x = x0 * np.sqrt(a_prev) + np.sqrt(1 - a_prev) * e
  return x


@pytest.mark.parametrize("t_k,tweedie", [(1, False), (1, True), (13, False), (300, False)])
def test_purify_matches_numpy_reference(gauss, t_k, tweedie):
  prior, _, _ = gauss
  rng = np.random.default_rng(t_k)
  x = rng.uniform(-1, 1, (H, H, 1)).astype(np.float32)
  noise = rng.standard_normal((H, H, 1)).astype(np.float32)
  eps_fn = lambda v, t: prior.eps(v[None], jnp.array([t]))[0]
  ref = _ddim_reference(eps_fn, x, t_k, noise, 20, tweedie)
  out = purify(prior, x, t_k, noise, tweedie=tweedie)
  # float32 sqrt(1/abar - 1) near abar = 1 (t = 0, 1) costs ~1e-5 against float64.
  assert rel_err(out, ref) < 1e-4
  # A key draws the noise itself; same key, same result.
  k = jax.random.key(3)
  np.testing.assert_array_equal(purify(prior, x, t_k, k, tweedie=tweedie),
                                purify(prior, x, t_k, k, tweedie=tweedie))


class _Tanh(Operator):
  """A nonlinear test operator: A(x) = tanh(2 x) on every other column."""

  def A(self, x):
    return jnp.tanh(2.0 * x[:, ::2])


def test_data_consistency_nonlinear_heavy_ball():
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-0.5, 0.5, (H, H, 1))
  anchor = rng.uniform(-0.5, 0.5, (H, H, 1))
  y = np.tanh(2.0 * rng.uniform(-0.5, 0.5, (H, H, 1)))[:, ::2]
  tau, lr, mom, mu = 30, 2.0, 0.9, 0.3
  m, n = y.size, x0.size
  x, buf = x0.copy(), np.zeros_like(x0)
  for _ in range(tau):
    g = np.zeros_like(x)
    th = np.tanh(2.0 * x[:, ::2])
    g[:, ::2] = 2.0 / m * (th - y) * 2.0 * (1 - th ** 2)
    g += mu * 2.0 / n * (x - anchor)
    buf = mom * buf + g
    x = x - lr * buf
  out = data_consistency(jnp.asarray(x0, jnp.float32), jnp.asarray(y, jnp.float32),
                         _Tanh((H, H, 1)), tau=tau, lr=lr, momentum=mom, mu=mu,
                         x_anchor=jnp.asarray(anchor, jnp.float32))
  assert rel_err(out, x) < 1e-5


def test_presets_and_effective_step():
  want = {"sr4": (10, 100, 1e3, 400, 0), "gaussian_deblur": (10, 100, 1e5, 400, 0),
          "motion_deblur": (10, 100, 1e5, 400, 0), "box_inpaint": (20, 50, 1e3, 700, 0),
          "phase_retrieval": (200, 100, 500.0, 1000, 20)}
  for name, (K, tau, lr, T0, TK) in want.items():
    c = dcdp_preset(name)
    assert (c.K, c.tau, c.lr, c.T0, c.TK, c.momentum, c.mu, c.sigma_y) == (
        K, tau, lr, T0, TK, 0.9, 0.0, 0.0)
  sr = DCDP_PRESETS["sr4"]
  official = 2 * 1e3 / (3 * 64 * 64)           # FFHQ-256, 64x64x3 measurement
  for m in (3 * 64 * 64, 3 * 16 * 16, 1 * 8 * 8):
    assert effective_step(sr, m) == pytest.approx(official)
    moved = rescale_lr(sr, m)
    assert 2 * moved.lr / m == pytest.approx(official)
    assert effective_step(moved, m) == pytest.approx(official)
  assert dcdp_preset("sr4", tweedie=True).tweedie
  with pytest.raises(ConfigError, match="unknown DCDP preset"):
    dcdp_preset("sr3")


def test_for_noise_scales_the_proximal_weight_with_the_noise_variance():
  tuned = DCDPConfig(mu=0.1, sigma_y=0.05)
  assert for_noise(tuned, 0.1).mu == pytest.approx(0.4)
  assert for_noise(tuned, 0.025).mu == pytest.approx(0.025)
  assert for_noise(tuned, 0.0).mu == 0.0 and for_noise(tuned, 0.0).sigma_y == 0.0
  official = for_noise(dcdp_preset("motion_deblur"), 0.05)   # mu 0: only sigma_y changes
  assert (official.mu, official.sigma_y, official.lr) == (0.0, 0.05, 1e5)
  untuned = for_noise(DCDPConfig(mu=0.3), 0.2)              # no reference noise: mu kept
  assert untuned.mu == 0.3
  with pytest.raises(ConfigError, match="sigma_y must be >= 0"):
    for_noise(tuned, -0.1)


def test_for_noise_keeps_the_data_consistency_phase_stable_at_high_noise():
  # The mnist32 Gaussian-deblur preset (mu 1 at sigma_y 0.05) scaled to sigma_y 0.1 would take
  # mu 4, past the heavy-ball limit 2 (1 + momentum) / e - 1 = 2.74 for this step: for_noise
  # caps it, and the capped phase converges where the uncapped one blows up.
  from jaxir.solvers.dcdp import stable_mu
  from jaxir.tasks import make_operator
  preset = DCDP_PRESETS["mnist32/gaussian_deblur"]
  cfg = for_noise(preset, 0.1)
  assert cfg.mu == pytest.approx(stable_mu(preset)) and 1.0 < cfg.mu < 2.74
  assert for_noise(preset, 0.05).mu == preset.mu                # below the cap: unchanged
  op = make_operator("gaussian_deblur", jax.random.key(0), (32, 32, 1))
  x_true = jnp.tanh(jax.random.normal(jax.random.key(1), (32, 32, 1)))
  y = op.A(x_true) + 0.1 * jax.random.normal(jax.random.key(2), op.out_shape)
  lr = preset.lr * int(np.prod(op.out_shape)) / preset.lr_size
  anchor = jnp.zeros((32, 32, 1))

  def run(mu):
    return data_consistency(anchor, y, op, tau=100, lr=lr, momentum=preset.momentum, mu=mu)

  capped, uncapped = run(cfg.mu), run(4 * preset.mu)
  assert float(jnp.max(jnp.abs(capped))) < 5.0
  assert float(jnp.mean((op.A(capped) - y) ** 2)) < float(jnp.mean(y ** 2))
  assert not float(jnp.max(jnp.abs(uncapped))) < 1e3            # diverged (or NaN)
  # the solver says so: `info.diverged` for the uncapped mu, not for the capped one
  prior = gaussian_prior(jnp.zeros((32, 32, 1)), 0.5 ** 2)
  flags = [bool(solve(jax.random.key(3), y, op, prior,
                      config=dataclasses.replace(preset, mu=mu, K=2, ddim_steps=2))[1].diverged)
           for mu in (cfg.mu, 4 * preset.mu)]
  assert flags == [False, True]


def test_nfe_formula_and_counted_calls(gauss):
  assert dcdp_nfe(DCDPConfig(K=10, T0=400)) == 182
  assert dcdp_nfe(DCDPConfig(K=10, T0=400, tweedie=True)) == 10
  prior, op, _ = gauss
  calls = []
  counted = make_prior(
      lambda p, x, t: (jax.debug.callback(lambda: calls.append(1)), prior.apply_fn(p, x, t))[1],
      prior.params, prior.schedule)
  y = op.A(jnp.full((H, H, 1), 0.5))
  _, info = solve(jax.random.key(0), y, op, counted, config=DCDPConfig(K=10, tau=1, lr=32.0))
  jax.block_until_ready(info)
  assert len(calls) == 182 == int(info.nfe)
  np.testing.assert_array_equal(info.t, dcdp_schedule(10, 400))


# ---------------------------------------------------------------- solver

def test_vmap_equals_loop_with_batched_operator(gauss):
  prior, _, _ = gauss
  rng = np.random.default_rng(1)
  masks = (rng.uniform(size=(3, H, H, 1)) > 0.4).astype(np.float32)
  ops = Inpaint((H, H, 1), masks)
  xs = sample_prior(jax.random.key(5), prior, 3)
  ys = masks * xs
  keys = jax.random.split(jax.random.key(6), 3)
  batched = jax.jit(jax.vmap(functools.partial(dcdp, config=SMALL), in_axes=(0, 0, 0, None)))
  xb, ib = batched(keys, ys, ops, prior)
  for i in range(3):
    xi, ii = solve(keys[i], ys[i], Inpaint((H, H, 1), masks[i]), prior, config=SMALL)
    np.testing.assert_allclose(xb[i], xi, atol=1e-5)
    np.testing.assert_allclose(ib.residual[i], ii.residual, atol=1e-5)
    np.testing.assert_allclose(ib.x_before_last_purification[i], ii.x_before_last_purification,
                               atol=1e-5)


def test_gaussian_prior_beats_least_squares_and_converges_in_K(gauss):
  """RMS error to the exact posterior mean in the hole, over 4 images x 8 keys.

  DCDP's output is random (each purification injects noise), so the error is
  measured over many runs; it falls well below the least-squares (pinv) error
  and keeps falling as K grows (measured: about 0.22 at K = 3, 0.12 at K = 30,
  0.09 at K = 100, against 0.39 for pinv).
  """
  prior, op, mask = gauss
  hole = mask[..., 0] == 0
  xs = sample_prior(jax.random.key(11), prior, 4)
  ys = jax.vmap(op.A)(xs)
  A = operator_matrix(op)
  pm = jnp.stack([gaussian_posterior(prior, A, y, 0.0)[0] for y in ys])
  pinv_err = np.sqrt(np.mean((np.asarray(jax.vmap(op.pinv)(ys) - pm)[:, hole] ** 2)))
  keys = jax.random.split(jax.random.key(12), 32).reshape(4, 8)
  errs = []
  for K in (3, 30):
    cfg = DCDPConfig(K=K, tau=100, lr=32.0, T0=400)
    one = functools.partial(dcdp, operator=op, prior=prior, config=cfg)
    x, info = jax.jit(jax.vmap(jax.vmap(one, in_axes=(0, None))))(keys, ys)
    errs.append(np.sqrt(np.mean(np.asarray(x - pm[:, None])[:, :, hole] ** 2)))
    # Data consistency holds on the observed pixels.
    assert float(jnp.max(info.residual_dc[..., -1])) < 1e-2
  assert errs[1] < 0.5 * pinv_err, (errs, pinv_err)
  assert errs[1] < 0.75 * errs[0], errs


def test_grad_through_the_solve_matches_finite_differences(gauss):
  prior, op, _ = gauss
  cfg = DCDPConfig(K=3, tau=5, lr=32.0, T0=50, ddim_steps=4)
  y = op.A(sample_prior(jax.random.key(2), prior, 1)[0])
  key = jax.random.key(4)
  vg = jax.jit(jax.value_and_grad(lambda y: jnp.sum(dcdp(key, y, op, prior, cfg)[0] ** 2)))
  _, g = vg(y)
  v = jax.random.normal(jax.random.key(9), y.shape) * jnp.asarray(op.mask)
  h = 1e-2
  fd = (vg(y + h * v)[0] - vg(y - h * v)[0]) / (2 * h)
  assert abs(float(jnp.vdot(g, v)) - float(fd)) < 2e-2 * abs(float(fd)) + 1e-3


def test_bad_inputs_raise(gauss):
  prior, op, _ = gauss
  with pytest.raises(ShapeError, match="operator maps"):
    dcdp(jax.random.key(0), jnp.zeros((H, H, 3)), op, prior, SMALL)
  with pytest.raises(ConfigError, match="K <= T0"):
    DCDPConfig(K=20, T0=10)
  with pytest.raises(ConfigError, match="lr > 0"):
    DCDPConfig(lr=-1.0)
  short = make_prior(prior.apply_fn, prior.params, get_schedule("linear", 100))
  with pytest.raises(ConfigError, match="exceeds"):
    dcdp(jax.random.key(0), jnp.zeros((H, H, 1)), op, short, SMALL)
  with pytest.raises(ConfigError, match="Python int"):
    jax.jit(lambda t: purify(prior, jnp.zeros((H, H, 1)), t, jax.random.key(0)))(5)
  with pytest.raises(ShapeError, match="noise array"):
    purify(prior, jnp.zeros((H, H, 1)), 5, jnp.zeros((H, H, 3)))
