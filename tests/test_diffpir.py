"""DiffPIR against the official algorithm's formulas and against exact posteriors.

References used here, none of them the code under test:
  * the official timestep rule as `main_ddpir_*.py` runs it: float32 betas and
    cumprod, sigma matching by the nearest `reduced_alpha_cumprod`
    (`utils_model.find_nearest`);
  * the official rho table (`rhos.append(lambda_*(sigma**2)/(sigma_ks[i]**2))`,
    sigma = max(0.001, noise_level_img) on [0, 1]);
  * dense normal equations in numpy float64 for the data step;
  * a numpy float64 loop of the official update (`main_ddpir_deblur.py`: clipped
    x0, data step, eps recomputed from the corrected x0, zeta re-noising);
  * exact Gaussian and Gaussian-mixture posteriors (`jaxir.priors.posterior`).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import gaussian16_problem, rel_err, sliced_w2_2d as sliced_w2
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import Operator
from jaxir.operators.blur import Blur, CircularBlur
from jaxir.operators.color import Colorization
from jaxir.operators.inpaint import Inpaint
from jaxir.operators.kernels import gaussian_kernel
from jaxir.operators.matrix import matrix_operator
from jaxir.operators.denoise import Identity
from jaxir.operators.separable import deblur_gauss
from jaxir.operators.superres import AvgPoolSR, BicubicSR
from jaxir.operators.walsh_hadamard import walsh_hadamard_cs
from jaxir.priors.analytic import gmm_prior, sample_prior
from jaxir.priors.posterior import (gaussian_posterior, gmm_posterior, gmm_posterior_mean,
                                    operator_matrix, sample_mixture)
from jaxir.solvers.diffpir import (DIFFPIR_PRESETS, DiffPIRConfig, diffpir, diffpir_preset,
                                   diffpir_rho, diffpir_start, diffpir_sample, diffpir_timesteps,
                                   proximal)
from jaxir.tasks import TASKS

T = 1000


def official_alphas_cumprod():
  """`main_ddpir_*.py`: float32 linspace betas, cumprod of the float32 alphas."""
  betas = np.linspace(0.1 / 1000, 20 / 1000, T, dtype=np.float32)
  return np.cumprod(1.0 - betas)


def official_timesteps(steps, skip_type):
  """Official seq, then t_i = find_nearest(reduced_alpha_cumprod, sigmas[seq[i]])."""
  ac = official_alphas_cumprod()
  reduced = np.sqrt(1.0 - ac) / np.sqrt(ac)
  sigmas = reduced[::-1]
  skip = T // steps
  if skip_type == "uniform":
    seq = [i * skip for i in range(steps)] + ([T - 1] if skip > 1 else [])
  else:
    seq = [int(s) for s in list(np.sqrt(np.linspace(0, T ** 2, steps)))]
    seq[-1] = seq[-1] - 1
  return [int(np.argmin(np.abs(reduced - sigmas[s]))) for s in seq]


def _normal_equations(a_mat, y, x0, rho):
  """(AᵀA + rho I, Aᵀy + rho x0) of the data step, in float64."""
  a = np.asarray(a_mat, np.float64)
  rhs = a.T @ np.asarray(y, np.float64).reshape(-1) + rho * np.asarray(x0, np.float64).reshape(-1)
  return a.T @ a + rho * np.eye(a.shape[1]), rhs


def _normal_eq_residuals(a_mat, y, x0, rho, *solutions):
  """Relative residuals of the normal equations for each solution."""
  lhs, rhs = _normal_equations(a_mat, y, x0, rho)
  return [float(np.linalg.norm(lhs @ np.asarray(x, np.float64).reshape(-1) - rhs)
                / np.linalg.norm(rhs)) for x in solutions]


def dense_prox(a_mat, y, x0, rho):
  return np.linalg.solve(*_normal_equations(a_mat, y, x0, rho))


class Tanh(Operator):
  """A toy nonlinear operator, y = tanh(x)."""

  def A(self, x):
    return jnp.tanh(x)


@pytest.fixture(scope="module")
def gauss16():
  """A 16-D Gaussian prior with a dense covariance, a 8 x 16 matrix operator, noisy y."""
  prior, _, _, op, _, y = gaussian16_problem(0.1)
  return prior, op, y, 0.1


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("skip_type,steps", [("quad", 100), ("uniform", 100), ("quad", 20)])
def test_timesteps_match_official_sigma_matching(skip_type, steps):
  ref = official_timesteps(steps, skip_type)
  got = diffpir_timesteps(steps, T, skip_type)
  assert got.tolist() == ref
  assert got[0] == T - 1 and got[-1] == 0 and len(got) == steps + (skip_type == "uniform")
  # t_start drops the steps above it (the official `if t_i > t_start: continue`).
  np.testing.assert_array_equal(diffpir_timesteps(steps, T, skip_type, t_start=500),
                                [t for t in ref if t <= 500])


@pytest.mark.parametrize("lambda_,sigma_y", [(7.0, 0.1), (1.0, 0.0), (4.0, 0.05)])
def test_rho_matches_official_table(lambda_, sigma_y):
  ac = official_alphas_cumprod()
  sigma = max(0.001, sigma_y / 2)                   # noise_level_img is on [0, 1]
  sigma_ks = np.sqrt(1.0 - ac) / np.sqrt(ac)
  rhos = lambda_ * sigma ** 2 / sigma_ks ** 2
  got = diffpir_rho(jnp.asarray(ac), lambda_, sigma_y)
  assert rel_err(got, rhos) < 1e-5


# ----------------------------------------------------------------------------- data step


def _svd_operators():
  rng = np.random.default_rng(3)
  mask = (rng.uniform(size=(4, 4, 2)) > 0.4).astype(np.float32)
  return [
      matrix_operator(rng.standard_normal((6, 12)), (2, 2, 3)),
      Inpaint((4, 4, 2), mask),
      CircularBlur((6, 6, 1), gaussian_kernel(3, 1.0)),
      Blur((6, 6, 1), gaussian_kernel(3, 1.0), "circular"),      # by the FFT (`svd_form`)
      AvgPoolSR((8, 8, 1), 2),
      Colorization((3, 3, 3)),
      walsh_hadamard_cs(jax.random.key(1), (4, 4, 1), ratio=0.5),
      Identity((3, 3, 2)),
      BicubicSR((8, 8, 1), 2),
      deblur_gauss((8, 8, 1)),
  ]


_prox = jax.jit(proximal, static_argnames=("cg_steps", "grad_steps"))
_matrix = jax.jit(operator_matrix)


def test_proximal_svd_matches_dense_normal_equations():
  rng = np.random.default_rng(4)
  for op in _svd_operators():
    a_mat = np.asarray(_matrix(op), np.float64)
    for rho in (1e-3, 0.5, 20.0):
      x0 = rng.uniform(-1, 1, op.in_shape).astype(np.float32)
      y = jnp.asarray(op.A(jnp.asarray(rng.uniform(-1, 1, op.in_shape), jnp.float32))
                      + 0.1 * rng.standard_normal(op.out_shape), jnp.float32)
      got = _prox(op, y, jnp.asarray(x0), rho)
      ref = dense_prox(a_mat, y, x0, rho)
      err = rel_err(np.asarray(got).reshape(-1), ref)
      # This failed in about one process in 20 (BicubicSR, rho 1e-3, 0.30): the jitted `_prox`
      # ran the program traced for AvgPoolSR((8, 8, 1), 2), whose flax.struct tree structure
      # compared equal (jaxir/pytree.py, tests/test_pytree.py). On a failure, say which side
      # breaks the normal equations and whether a second evaluation repeats it.
      assert err < 2e-5, (type(op).__name__, rho, err, _normal_eq_residuals(
          a_mat, y, x0, rho, got, ref), rel_err(_prox(op, y, jnp.asarray(x0), rho), got))


def test_proximal_cg_and_gradient_paths():
  rng = np.random.default_rng(5)
  op = Blur((8, 8, 1), gaussian_kernel(5, 1.5), "reflect")   # linear, no SVD form
  a_mat = _matrix(op)
  x0 = jnp.asarray(rng.uniform(-1, 1, (8, 8, 1)), jnp.float32)
  y = op.A(jnp.asarray(rng.uniform(-1, 1, (8, 8, 1)), jnp.float32))
  for rho in (0.05, 1.0):
    ref = dense_prox(a_mat, y, x0, rho)
    assert rel_err(np.asarray(_prox(op, y, x0, rho, cg_steps=64)).reshape(-1), ref) < 1e-4
    # A couple of CG steps already move most of the way from x0 (same start).
    few = np.asarray(_prox(op, y, x0, rho, cg_steps=3)).reshape(-1)
    start = np.linalg.norm(np.asarray(x0).reshape(-1) - ref)
    assert np.linalg.norm(few - ref) < 0.5 * start
  # Nonlinear: the official one-step rule x0 - J^T (A(x0) - y) / rho, J = diag(1 - tanh^2).
  nl = Tanh((3, 3, 1))
  yn = jnp.asarray(rng.uniform(-0.5, 0.5, (3, 3, 1)), jnp.float32)
  x0n = np.asarray(rng.uniform(-1, 1, (3, 3, 1)), np.float64)
  ref = x0n - (1 - np.tanh(x0n) ** 2) * (np.tanh(x0n) - np.asarray(yn)) / 2.0
  assert rel_err(_prox(nl, yn, jnp.asarray(x0n, jnp.float32), 2.0), ref) < 1e-5


# ----------------------------------------------------------------------------- the chain


def _reference_chain(prior, mat, y, x_start, z, cfg):
  """The official loop in float64 (prior eps from jaxir), a fixed draw z per step."""
  ac = np.asarray(prior.schedule.alphas_cumprod, np.float64)
  ts = official_timesteps(cfg.steps, cfg.skip_type)
  sigma = max(0.001, cfg.sigma_y / 2)
  eps = jax.jit(prior.eps)
  shape = x_start.shape
  x = np.asarray(x_start, np.float64)
  for i, t in enumerate(ts):
    a = ac[t]
    e = np.asarray(eps(jnp.asarray(x, jnp.float32)[None], jnp.array([t])), np.float64)[0]
    x0 = np.clip((x - np.sqrt(1 - a) * e) / np.sqrt(a), -1, 1)
    if i == len(ts) - 1:
      return x0                      # the last evaluation's x0 (module notes)
    rho = cfg.lambda_ * sigma ** 2 / ((1 - a) / a)
    x0 = dense_prox(mat, y, x0, rho).reshape(shape)
    an = ac[ts[i + 1]]
    e_hat = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)
    x = (np.sqrt(an) * x0 + np.sqrt(1 - cfg.zeta) * np.sqrt(1 - an) * e_hat
         + np.sqrt(cfg.zeta) * np.sqrt(1 - an) * z)
  raise AssertionError("unreachable")


@pytest.mark.parametrize("zeta", [0.0, 0.3])
def test_chain_matches_official_update_in_float64(gauss16, zeta):
  prior, op, y, _ = gauss16
  cfg = DiffPIRConfig(steps=10, lambda_=7.0, zeta=zeta, sigma_y=0.1)
  x_start = diffpir_start(jax.random.key(2), y, op, prior.schedule.alphas_cumprod[T - 1])
  z = jax.random.normal(jax.random.key(3), op.in_shape)
  got = jax.jit(lambda xs, zz: diffpir_sample(xs, zz, y, op, prior, cfg))(x_start, z)
  ref = _reference_chain(prior, np.asarray(op.matrix()), y, np.asarray(x_start), np.asarray(z), cfg)
  assert rel_err(got, ref) < 1e-4
  # A sign flip of the zeta noise changes the result: the term is really there.
  if zeta:
    flipped = _reference_chain(prior, np.asarray(op.matrix()), y, np.asarray(x_start),
                               -np.asarray(z), cfg)
    assert rel_err(flipped, ref) > 1e-2


def _moments(xs):
  xs = np.asarray(xs, np.float64).reshape(xs.shape[0], -1)
  return xs.mean(0), np.cov(xs.T)


def test_gaussian_posterior_mean_error_falls_with_steps(gauss16):
  """lambda 4 (rho = sigma_y^2 / sigma_t^2 on [-1, 1]) and zeta 1.

  Measured (2000 samples): relative posterior-mean error 0.170 (10 steps) -> 0.056
  (100 steps), against 0.60 for the prior mean; the total variance is 0.35 -> 0.47
  of the posterior's (DiffPIR with zeta = 1 re-noises around the corrected mean, it
  is not an exact posterior sampler)."""
  prior, op, y, sigma_y = gauss16
  pm, pc = gaussian_posterior(prior, operator_matrix(op), y, sigma_y)
  pm, pc = np.asarray(pm, np.float64).reshape(-1), np.asarray(pc, np.float64)
  keys = jax.random.split(jax.random.key(1), 2000)
  errs, traces = [], []
  for steps in (10, 100):
    cfg = DiffPIRConfig(steps=steps, lambda_=4.0, zeta=1.0, sigma_y=sigma_y, clip=False)
    xs = jax.jit(jax.vmap(lambda k: diffpir(k, y, op, prior, cfg)[0]))(keys)
    mean, cov = _moments(xs)
    errs.append(np.linalg.norm(mean - pm) / np.linalg.norm(pm))
    traces.append(np.trace(cov) / np.trace(pc))
  prior_err = np.linalg.norm(np.asarray(prior.params.mean).reshape(-1) - pm) / np.linalg.norm(pm)
  assert errs[1] < 0.09 and errs[1] < 0.5 * errs[0] and errs[0] < prior_err, (errs, prior_err)
  assert 0.3 < traces[1] < 0.7, traces


def test_gmm_posterior_with_inpainting():
  """2-D mixture, pixel 0 observed with noise 0.2, pixel 1 missing: a bimodal posterior
  (modes near x1 = +0.5 and -0.6, weights 0.54 / 0.46).

  Measured (4000 samples, 100 steps, lambda 4, zeta 1): |mean error| 0.004, sliced
  W2 to exact posterior samples 0.054 (prior samples: 0.46), share of x1 > 0 0.539
  (exact 0.529). DiffPIR is not exact here: at 300 steps the share drifts to 0.58
  (W2 0.094)."""
  means = np.array([[-0.6, -0.5], [0.6, 0.5], [0.5, -0.6]]).reshape(3, 1, 2, 1)
  prior = gmm_prior(means, np.array([0.03, 0.05, 0.02]), np.array([0.4, 0.35, 0.25]))
  op = Inpaint((1, 2, 1), np.array([1.0, 0.0]).reshape(1, 2, 1))
  sigma_y = 0.2
  y = jnp.asarray([0.55, 0.0], jnp.float32).reshape(1, 2, 1)
  a_mat = operator_matrix(op)[:1]                   # the observed entry (the zero row is inert)
  y_obs = y.reshape(-1)[:1]
  w, pmeans, pcovs = gmm_posterior(prior, a_mat, y_obs, sigma_y)
  pm = np.asarray(gmm_posterior_mean(prior, a_mat, y_obs, sigma_y)).reshape(-1)
  ref = np.asarray(sample_mixture(jax.random.key(7), w, pmeans, pcovs, 20000)).reshape(-1, 2)
  assert 0.3 < float(np.min(np.asarray(w)[1:])) and float(np.max(w)) < 0.7  # two live modes
  base = sliced_w2(np.asarray(sample_prior(jax.random.key(8), prior, 4000)).reshape(-1, 2), ref)
  cfg = DiffPIRConfig(steps=100, lambda_=4.0, zeta=1.0, sigma_y=sigma_y, clip=False)
  keys = jax.random.split(jax.random.key(1), 4000)
  xs = np.asarray(jax.jit(jax.vmap(lambda k: diffpir(k, y, op, prior, cfg)[0]))(keys))
  xs = xs.reshape(-1, 2)
  err, sw = np.linalg.norm(xs.mean(0) - pm), sliced_w2(xs, ref)
  share, share_ref = np.mean(xs[:, 1] > 0), np.mean(ref[:, 1] > 0)
  assert err < 0.04 and sw < 0.08 < 0.25 * base and abs(share - share_ref) < 0.04, (
      err, sw, base, share, share_ref)


# ----------------------------------------------------------------------------- API


def test_same_key_vmap_jit_and_nfe(gauss16):
  prior, op, y, _ = gauss16
  cfg = DiffPIRConfig(steps=6, zeta=0.5)
  solve = functools.partial(diffpir, operator=op, prior=prior, config=cfg)
  keys = jax.random.split(jax.random.key(0), 3)
  fast = jax.jit(solve)
  x0, info = fast(keys[0], y)
  np.testing.assert_array_equal(x0, fast(keys[0], y)[0])
  assert float(jnp.max(jnp.abs(fast(keys[1], y)[0] - x0))) > 1e-3
  assert int(info.nfe) == len(diffpir_timesteps(6)) == 6
  np.testing.assert_allclose(info.residual, jnp.linalg.norm(op.A(x0) - y), rtol=1e-5)
  xb, _ = jax.jit(jax.vmap(solve, in_axes=(0, None)))(keys, y)
  for i in range(3):
    np.testing.assert_allclose(xb[i], fast(keys[i], y)[0], atol=1e-5)
  np.testing.assert_allclose(solve(keys[0], y)[0], x0, atol=1e-5)   # no jit
  # A nonlinear operator runs through the gradient data step.
  nl = Tanh((4, 4, 1))
  xn, _ = jax.jit(lambda k: diffpir(k, jnp.zeros((4, 4, 1)), nl, prior, cfg))(keys[0])
  assert np.all(np.isfinite(np.asarray(xn)))


def test_presets_and_bad_inputs(gauss16):
  prior, op, y, _ = gauss16
  assert set(DIFFPIR_PRESETS) <= set(TASKS)
  for name, cfg in DIFFPIR_PRESETS.items():
    assert cfg.sigma_y == TASKS[name].sigma_y and cfg.steps == 100
  deblur, inpaint = diffpir_preset("gaussian_deblur"), diffpir_preset("box_inpaint")
  assert (deblur.lambda_, deblur.zeta, inpaint.lambda_, inpaint.zeta) == (7.0, 0.3, 1.0, 1.0)
  assert diffpir_preset("sr4", steps=20).steps == 20
  with pytest.raises(ConfigError, match="unknown DiffPIR preset"):
    diffpir_preset("sr5")
  with pytest.raises(ShapeError, match="operator maps"):
    diffpir(jax.random.key(0), jnp.zeros((4,)), op, prior, DiffPIRConfig(steps=4))
  with pytest.raises(ShapeError, match="key_or_noise"):
    diffpir_sample(jnp.zeros((4, 4, 1)), jnp.zeros((2, 2, 1)), y, op, prior, DiffPIRConfig(steps=4))
  for bad in (dict(zeta=1.5), dict(lambda_=0.0), dict(steps=1), dict(skip_type="log"),
              dict(init="bicubic"), dict(sigma_y=-0.1), dict(cg_steps=0)):
    with pytest.raises(ConfigError):
      DiffPIRConfig(**bad)
  with pytest.raises(ConfigError, match="t_start"):
    diffpir_timesteps(10, T, "quad", t_start=1000)
