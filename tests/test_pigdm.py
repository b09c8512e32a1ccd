"""PiGDM against dense closed forms and exact posteriors.

References used here, none of them the code under test:
  * dense linear algebra in numpy float64: A^T (A A^T + c I)^{-1} r, the pseudo-
    inverse, the Gaussian prior's Tweedie mean and its Jacobian
    J = sqrt(a) Sigma (a Sigma + (1 - a) I)^{-1};
  * a numpy float64 loop of the update (DDIM c1, c2 as in the paper's Algorithm 1
    and RED-diff `algos/pgdm.py`, guidance from the dense Jacobian);
  * exact Gaussian and Gaussian-mixture posteriors (`jaxir.priors.posterior`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import gaussian16_problem, rel_err, sliced_w2_2d as sliced_w2
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.blur import Blur, CircularBlur
from jaxir.operators.inpaint import Inpaint
from jaxir.operators.kernels import gaussian_kernel
from jaxir.operators.matrix import matrix_operator
from jaxir.operators.phase_retrieval import PhaseRetrieval
from jaxir.operators.superres import AvgPoolSR
from jaxir.priors.analytic import gaussian_prior, gmm_prior, sample_prior
from jaxir.priors.posterior import (gaussian_posterior, gmm_posterior, gmm_posterior_mean,
                                    operator_matrix, sample_mixture)
from jaxir.solvers.pigdm import (PIGDM_PRESETS, PiGDMConfig, guidance, pigdm, pigdm_preset,
                                 pigdm_sample, pigdm_timesteps, weighted_pinv)
from jaxir.tasks import TASKS

_pinv = jax.jit(weighted_pinv, static_argnames=("cg_steps", "noiseless"))
_matrix = jax.jit(operator_matrix)


@pytest.fixture(scope="module")
def gauss16():
  """A 16-D Gaussian prior (dense covariance), an 8 x 16 matrix operator, noisy y."""
  return gaussian16_problem(0.1)


# ----------------------------------------------------------------------------- building blocks


def test_weighted_pinv_matches_dense():
  rng = np.random.default_rng(1)
  mask = (rng.uniform(size=(4, 4, 1)) > 0.4).astype(np.float32)
  ops = [matrix_operator(rng.standard_normal((6, 12)), (2, 2, 3)), Inpaint((4, 4, 1), mask),
         AvgPoolSR((8, 8, 1), 2), CircularBlur((6, 6, 1), gaussian_kernel(3, 0.6)),
         Blur((6, 6, 1), gaussian_kernel(3, 0.6), "circular")]     # by the FFT (`svd_form`)
  for op in ops:
    a = np.asarray(_matrix(op), np.float64)
    r = jnp.asarray(rng.standard_normal(op.out_shape), jnp.float32)
    rf = np.asarray(r, np.float64).reshape(-1)
    for c in (0.3, 0.01):
      ref = a.T @ np.linalg.solve(a @ a.T + c * np.eye(a.shape[0]), rf)
      assert rel_err(np.asarray(_pinv(op, r, c)).reshape(-1), ref) < 1e-4, (type(op).__name__, c)
    assert rel_err(np.asarray(_pinv(op, r, 0.0)).reshape(-1), np.linalg.pinv(a) @ rf) < 1e-4
  # No SVD form: conjugate gradients in the measurement space; c = 0 uses the pinv.
  op = Blur((6, 6, 1), gaussian_kernel(3, 0.6), "reflect")
  a = np.asarray(_matrix(op), np.float64)
  r = jnp.asarray(rng.standard_normal((6, 6, 1)), jnp.float32)
  rf = np.asarray(r, np.float64).reshape(-1)
  ref = a.T @ np.linalg.solve(a @ a.T + 0.3 * np.eye(36), rf)
  assert rel_err(np.asarray(_pinv(op, r, 0.3, cg_steps=36)).reshape(-1), ref) < 1e-4
  got = np.asarray(_pinv(op, r, 0.0, noiseless=True)).reshape(-1)
  assert rel_err(got, np.linalg.pinv(a) @ rf) < 1e-3
  # Ill-conditioned (s_min / s_max ~ 1e-4): iterating past convergence made
  # jax.scipy's cg return NaN here (p^T A p underflows to 0); fixed_cg holds still.
  op = Blur((12, 12, 1), gaussian_kernel(7, 1.5), "reflect")
  a = np.asarray(_matrix(op), np.float64)
  r = jax.random.normal(jax.random.key(2), (12, 12, 1))
  rf = np.asarray(r, np.float64).reshape(-1)
  ref = a.T @ np.linalg.solve(a @ a.T + 0.0025 * np.eye(144), rf)
  got = np.asarray(_pinv(op, r, 0.0025, cg_steps=144)).reshape(-1)
  assert np.all(np.isfinite(got)) and rel_err(got, ref) < 1e-4


def _dense_tweedie(cov, mu, x, a):
  """x0 = mu + J (x - sqrt(a) mu) / sqrt(a), J = sqrt(a) Sigma (a Sigma + (1 - a) I)^-1."""
  n = cov.shape[0]
  jac = np.sqrt(a) * cov @ np.linalg.inv(a * cov + (1 - a) * np.eye(n))
  return mu + jac @ (x - np.sqrt(a) * mu), jac


@pytest.mark.parametrize("sigma_y", [0.0, 0.2])
def test_guidance_is_the_dense_vector_jacobian_product(gauss16, sigma_y):
  prior, cov, mu, op, mat, y = gauss16
  cfg = PiGDMConfig(sigma_y=sigma_y)
  rng = np.random.default_rng(2)
  fn = jax.jit(lambda xx, t, a: guidance(xx, t, a, y, op, prior, cfg))
  for t in (900, 300, 20):
    a = float(prior.schedule.alphas_cumprod[t])
    x = rng.standard_normal(16)
    eps, x0, g, norm = fn(jnp.asarray(x.reshape(4, 4, 1), jnp.float32), t,
                          prior.schedule.alphas_cumprod[t])
    x0_ref, jac = _dense_tweedie(cov, mu.reshape(-1), x, a)
    r = np.asarray(y, np.float64) - mat @ x0_ref
    if sigma_y == 0:
      v = np.linalg.pinv(mat) @ r                               # the paper's noiseless g
    else:
      v = mat.T @ np.linalg.solve(mat @ mat.T + sigma_y ** 2 / (1 - a) * np.eye(8), r)
    assert rel_err(np.asarray(x0).reshape(-1), x0_ref) < 1e-4
    assert rel_err(np.asarray(eps).reshape(-1), (x - np.sqrt(a) * x0_ref) / np.sqrt(1 - a)) < 1e-4
    # J^T v = (v - sqrt(1 - a) (d eps / dx)^T v) / sqrt(a) cancels in float32: terms of
    # size |v| / sqrt(a) (50 |v| at t = 900) leave a difference of size ~|J| |v|.
    g_ref = jac.T @ v
    err = np.max(np.abs(np.asarray(g).reshape(-1) - g_ref))
    assert err < 1e-4 * np.max(np.abs(g_ref)) + 1e-6 * np.max(np.abs(v)) / np.sqrt(a), t
    assert abs(float(norm) - np.linalg.norm(r)) < 1e-4 * np.linalg.norm(r)


@pytest.mark.parametrize("weight", ["pgdm", "score"])
def test_chain_matches_float64_reference(gauss16, weight):
  prior, cov, mu, op, mat, y = gauss16
  cfg = PiGDMConfig(steps=5, eta=0.5, sigma_y=0.1, weight=weight, scale=0.8)
  rng = np.random.default_rng(3)
  x_T = rng.standard_normal((4, 4, 1)).astype(np.float32)
  noise = rng.standard_normal((5, 4, 4, 1)).astype(np.float32)
  got, info = jax.jit(lambda a, b: pigdm_sample(a, b, y, op, prior, cfg))(x_T, noise)
  ac = np.asarray(prior.schedule.alphas_cumprod, np.float64)
  ts = [800, 600, 400, 200, 0]                            # k (1000 // 5), highest first
  np.testing.assert_array_equal(pigdm_timesteps(5), ts)
  x, yy = x_T.reshape(-1).astype(np.float64), np.asarray(y, np.float64)
  for i, t in enumerate(ts):
    a, ap = ac[t], (ac[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    x0, jac = _dense_tweedie(cov, mu.reshape(-1), x, a)
    eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    r = yy - mat @ x0
    g = jac.T @ mat.T @ np.linalg.solve(mat @ mat.T + 0.01 / (1 - a) * np.eye(8), r)
    c1 = 0.5 * np.sqrt((1 - a / ap) * (1 - ap) / (1 - a))
    c2 = np.sqrt(1 - ap - c1 ** 2)
    z = noise[i].reshape(-1)
    if weight == "pgdm":    # RED-diff awd: network eps kept, sqrt(abar_s) sqrt(abar_t) g added
      x = np.sqrt(ap) * x0 + c1 * z + c2 * eps + 0.8 * np.sqrt(ap) * np.sqrt(a) * g
    else:                   # guided score: eps' = eps - sqrt(1 - a) grad log p(y | x_t)
      eps_g = eps - 0.8 * np.sqrt(1 - a) * g / (1 - a)
      x0_g = (x - np.sqrt(1 - a) * eps_g) / np.sqrt(a)
      x = np.sqrt(ap) * x0_g + c1 * z + c2 * eps_g
  assert rel_err(np.asarray(got).reshape(-1), x) < 1e-4
  assert int(info.nfe) == 5 and info.residual_x0.shape == (5,)


# ----------------------------------------------------------------------------- posteriors


def test_unit_gaussian_posterior_is_recovered_and_needs_the_noise_term():
  """Prior N(mu, I): p(x0 | x_t) has covariance (1 - abar_t) I = r_t^2 I exactly, so
  the "score" weight is the exact posterior score and the chain samples it.

  Measured (2000 samples, sigma_y 0.5, 8 x 16 operator): relative posterior-mean
  error 0.013 (10 steps), 0.012 (100 steps; sampling error ~0.02); relative
  covariance error 0.46 -> 0.11 and total variance 0.53 -> 0.91 of the posterior's.
  Dropping the sigma_y term (config sigma_y = 0 on the same data) gives mean error
  0.32."""
  rng = np.random.default_rng(0)
  shape, n, m, sigma_y = (4, 4, 1), 16, 8, 0.5
  mu = rng.uniform(-0.5, 0.5, shape)
  mat = rng.standard_normal((m, n)) / np.sqrt(n) * 1.5
  op, prior = matrix_operator(mat, shape), gaussian_prior(mu, 1.0)
  x = mu.reshape(-1) + rng.standard_normal(n)
  y = jnp.asarray(mat @ x + sigma_y * rng.standard_normal(m), jnp.float32)
  pm, pc = gaussian_posterior(prior, operator_matrix(op), y, sigma_y)
  pm, pc = np.asarray(pm, np.float64).reshape(-1), np.asarray(pc, np.float64)
  keys = jax.random.split(jax.random.key(1), 2000)
  stats = {}
  for steps, s_y in ((10, sigma_y), (100, sigma_y), (100, 0.0)):
    cfg = PiGDMConfig(steps=steps, sigma_y=s_y, weight="score")
    xs = np.asarray(jax.jit(jax.vmap(lambda k: pigdm(k, y, op, prior, cfg)[0]))(keys),
                    np.float64).reshape(2000, -1)
    c = np.cov(xs.T)
    stats[steps, s_y] = (np.linalg.norm(xs.mean(0) - pm) / np.linalg.norm(pm),
                         np.linalg.norm(c - pc) / np.linalg.norm(pc), np.trace(c) / np.trace(pc))
  (m10, c10, _), (m100, c100, tr100) = stats[10, sigma_y], stats[100, sigma_y]
  assert m10 < 0.05 and m100 < 0.05, stats
  assert c100 < 0.16 and c100 < 0.4 * c10 and 0.85 < tr100 < 1.1, stats
  assert stats[100, 0.0][0] > 0.2, stats


def test_gmm_posterior_with_inpainting():
  """2-D mixture, pixel 0 observed with noise 0.05, pixel 1 missing: modes near
  x1 = +0.5 and -0.6 with weights 0.49 / 0.51.

  Measured (4000 samples, 100 steps): "score" weight |mean error| 0.041, sliced W2
  to exact posterior samples 0.070, share of x1 > 0 0.523 (exact 0.481); the
  default "pgdm" weight overweights the first mode: share 0.622, W2 0.187 (prior
  samples: 0.47)."""
  means = np.array([[-0.6, -0.5], [0.6, 0.5], [0.5, -0.6]]).reshape(3, 1, 2, 1)
  prior = gmm_prior(means, np.array([0.03, 0.05, 0.02]), np.array([0.4, 0.35, 0.25]))
  op = Inpaint((1, 2, 1), np.array([1.0, 0.0]).reshape(1, 2, 1))
  sigma_y = 0.05
  y = jnp.asarray([0.55, 0.0], jnp.float32).reshape(1, 2, 1)
  a_mat, y_obs = operator_matrix(op)[:1], y.reshape(-1)[:1]   # the observed entry
  w, pmeans, pcovs = gmm_posterior(prior, a_mat, y_obs, sigma_y)
  pm = np.asarray(gmm_posterior_mean(prior, a_mat, y_obs, sigma_y)).reshape(-1)
  ref = np.asarray(sample_mixture(jax.random.key(7), w, pmeans, pcovs, 20000)).reshape(-1, 2)
  base = sliced_w2(np.asarray(sample_prior(jax.random.key(8), prior, 4000)).reshape(-1, 2), ref)
  keys = jax.random.split(jax.random.key(1), 4000)
  out = {}
  for weight in ("score", "pgdm"):
    cfg = PiGDMConfig(steps=100, sigma_y=sigma_y, weight=weight)
    xs = np.asarray(jax.jit(jax.vmap(lambda k: pigdm(k, y, op, prior, cfg)[0]))(keys))
    xs = xs.reshape(-1, 2)
    out[weight] = (np.linalg.norm(xs.mean(0) - pm), sliced_w2(xs, ref), np.mean(xs[:, 1] > 0))
  share_ref = np.mean(ref[:, 1] > 0)
  err, sw, share = out["score"]
  assert err < 0.07 and sw < 0.1 < 0.3 * base and abs(share - share_ref) < 0.07, (out, base)
  err, sw, share = out["pgdm"]
  assert sw < 0.25 < 0.75 * base and abs(share - share_ref) < 0.2, (out, base)


# ----------------------------------------------------------------------------- API


def test_same_key_vmap_jit_and_cg_path(gauss16):
  prior, _, _, op, _, y = gauss16
  cfg = PiGDMConfig(steps=5)
  solve = functools.partial(pigdm, operator=op, prior=prior, config=cfg)
  keys = jax.random.split(jax.random.key(0), 3)
  fast = jax.jit(solve)
  x0, info = fast(keys[0], y)
  np.testing.assert_array_equal(x0, fast(keys[0], y)[0])
  assert float(jnp.max(jnp.abs(fast(keys[1], y)[0] - x0))) > 1e-3
  assert int(info.nfe) == 5
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(op.A(x0) - y), rtol=1e-5)
  xb, _ = jax.jit(jax.vmap(solve, in_axes=(0, None)))(keys, y)
  for i in range(3):
    np.testing.assert_allclose(xb[i], fast(keys[i], y)[0], atol=1e-5)
  np.testing.assert_allclose(solve(keys[0], y)[0], x0, atol=1e-5)   # no jit
  # A linear operator without SVD form runs through CG (and the noiseless pinv).
  blur = Blur((4, 4, 1), gaussian_kernel(3, 0.6), "reflect")
  for s_y in (0.05, 0.0):
    xc, ic = jax.jit(lambda k: pigdm(k, jnp.zeros((4, 4, 1)), blur, prior,
                                     PiGDMConfig(steps=5, sigma_y=s_y, cg_steps=16)))(keys[0])
    assert np.all(np.isfinite(np.asarray(xc))) and np.all(np.isfinite(np.asarray(ic.residual_x0)))


def test_presets_and_bad_inputs(gauss16):
  prior, _, _, op, _, y = gauss16
  assert set(PIGDM_PRESETS) <= set(TASKS)
  for name, cfg in PIGDM_PRESETS.items():
    assert cfg.sigma_y == TASKS[name].sigma_y and cfg.steps == 100
  assert pigdm_preset("sr4", eta=0.0).eta == 0.0
  with pytest.raises(ConfigError, match="unknown PiGDM preset"):
    pigdm_preset("sr5")
  pr = PhaseRetrieval((4, 4, 1))
  with pytest.raises(ConfigError, match="not linear"):
    pigdm(jax.random.key(0), jnp.zeros(pr.out_shape), pr, prior, PiGDMConfig(steps=4))
  with pytest.raises(ShapeError, match="operator maps"):
    pigdm(jax.random.key(0), jnp.zeros((4, 4, 1)), op, prior, PiGDMConfig(steps=4))
  with pytest.raises(ShapeError, match="one draw per step"):
    pigdm_sample(jnp.zeros((4, 4, 1)), jnp.zeros((3, 4, 4, 1)), y, op, prior, PiGDMConfig(steps=4))
  for bad in (dict(eta=1.5), dict(steps=0), dict(weight="dps"), dict(sigma_y=-1.0),
              dict(cg_steps=0)):
    with pytest.raises(ConfigError):
      PiGDMConfig(**bad)
  with pytest.raises(ConfigError, match="exceeds"):
    pigdm(jax.random.key(0), y, op, prior, PiGDMConfig(steps=2000))
