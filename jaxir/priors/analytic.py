"""Analytic diffusion priors: Gaussians and Gaussian mixtures with EXACT eps.

For x0 ~ p0 and x_t = sqrt(abar) x0 + sqrt(1 - abar) e, the ideal noise
predictor is eps(x_t, t) = E[e | x_t] = -sqrt(1 - abar) grad log p_t(x_t)
(Tweedie). For a Gaussian p0 = N(mu, Sigma), with Sigma = V diag(lam) V^T,

  E[x0 | x_t] = mu + Sigma sqrt(abar) (abar Sigma + (1 - abar) I)^-1 r,
  eps         = sqrt(1 - abar) V diag(1 / (abar lam + 1 - abar)) V^T r
                + r_perp / sqrt(1 - abar),

with r = x_t - sqrt(abar) mu and r_perp the part of r outside span(V) (zero
for a full eigenbasis). For a mixture of diagonal Gaussians
sum_k pi_k N(mu_k, diag(v_k)), p_t is the mixture of
N(sqrt(abar) mu_k, diag(abar v_k + 1 - abar)) and

  eps = sqrt(1 - abar) sum_k w_k(x_t) (x_t - sqrt(abar) mu_k) / (abar v_k + 1 - abar),

with responsibilities w_k computed by a softmax of log densities.

These priors are `Prior`s like any network: `apply_fn(params, x, t)` takes
x (N, H, W, C) and int t (N,), and the params (means, eigenbasis, the
schedule's alphas_cumprod) are array pytrees, so jit, vmap and grad apply.
Solvers are tested against the closed-form posteriors of `posterior.py`.

References:
  Efron, "Tweedie's formula and selection bias", JASA 2011.
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", 2020.
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.checks import check_finite, is_concrete
from jaxir.diffusion.schedule import Schedule, get_schedule
from jaxir.errors import ConfigError, ShapeError
from jaxir.priors.base import Prior, make_prior

__all__ = ["GaussianParams", "DiagGaussianParams", "GMMParams", "gaussian_prior",
           "gmm_prior", "sample_prior", "prior_covariance"]

_HI = jax.lax.Precision.HIGHEST


class GaussianParams(pytree.PyTreeNode):
  """A Gaussian N(mean, V diag(eigvals) V^T) over (H, W, C) images.

  Attributes:
    mean: (H, W, C).
    eigvals: (k,) nonnegative variances along the eigenvectors.
    eigvecs: (n, k) orthonormal columns, n = H*W*C (k < n: variance 0 outside span).
    alphas_cumprod: (T,) the schedule's abar, indexed by timestep.
  """
  mean: jnp.ndarray
  eigvals: jnp.ndarray
  eigvecs: jnp.ndarray
  alphas_cumprod: jnp.ndarray


class DiagGaussianParams(pytree.PyTreeNode):
  """A Gaussian N(mean, diag(var)) over (H, W, C) images.

  Attributes:
    mean: (H, W, C).
    var: (H, W, C) nonnegative per-pixel variances.
    alphas_cumprod: (T,) the schedule's abar.
  """
  mean: jnp.ndarray
  var: jnp.ndarray
  alphas_cumprod: jnp.ndarray


class GMMParams(pytree.PyTreeNode):
  """A mixture sum_k pi_k N(means[k], diag(variances[k])) over (H, W, C) images.

  Attributes:
    means: (K, H, W, C).
    variances: (K, H, W, C) nonnegative.
    log_weights: (K,) log pi_k, normalized (logsumexp = 0).
    alphas_cumprod: (T,) the schedule's abar.
  """
  means: jnp.ndarray
  variances: jnp.ndarray
  log_weights: jnp.ndarray
  alphas_cumprod: jnp.ndarray


def _abar(alphas_cumprod, t, n, dtype):
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (n,))
  return alphas_cumprod[t].astype(dtype).reshape(n, 1)


def _check_batch(x, image_shape):
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
    raise ShapeError(f"x has shape {x.shape}; this analytic prior takes (N, "
                     f"{', '.join(map(str, image_shape))}) images.")


@jax.jit
def _gaussian_apply(params: GaussianParams, x, t):
  """Exact eps of a Gaussian prior, computed in its eigenbasis."""
  _check_batch(x, params.mean.shape)
  n = x.shape[0]
  a = _abar(params.alphas_cumprod, t, n, x.dtype)                 # (N, 1)
  v = params.eigvecs.astype(x.dtype)
  r = x.reshape(n, -1) - jnp.sqrt(a) * params.mean.reshape(1, -1)
  z = jnp.dot(r, v, precision=_HI)                                 # (N, k)
  out = jnp.dot(z * (jnp.sqrt(1.0 - a) / (a * params.eigvals + (1.0 - a))), v.T, precision=_HI)
  if v.shape[1] < v.shape[0]:  # zero variance outside span(V): x0 = mean there
    out = out + (r - jnp.dot(z, v.T, precision=_HI)) / jnp.sqrt(1.0 - a)
  return out.reshape(x.shape)


@jax.jit
def _diag_apply(params: DiagGaussianParams, x, t):
  """Exact eps of a diagonal Gaussian prior."""
  _check_batch(x, params.mean.shape)
  n = x.shape[0]
  a = _abar(params.alphas_cumprod, t, n, x.dtype).reshape(n, 1, 1, 1)
  r = x - jnp.sqrt(a) * params.mean
  return jnp.sqrt(1.0 - a) * r / (a * params.var + (1.0 - a))


@jax.jit
def _gmm_apply(params: GMMParams, x, t):
  """Exact eps of a diagonal-covariance Gaussian mixture (log-space responsibilities)."""
  _check_batch(x, params.means.shape[1:])
  n = x.shape[0]
  a = _abar(params.alphas_cumprod, t, n, x.dtype).reshape(n, 1, 1, 1, 1)
  s = a * params.variances[None] + (1.0 - a)                      # (N, K, H, W, C)
  r = x[:, None] - jnp.sqrt(a) * params.means[None]               # (N, K, H, W, C)
  axes = (2, 3, 4)
  logp = params.log_weights[None] - 0.5 * jnp.sum(r * r / s + jnp.log(s), axis=axes)
  w = jax.nn.softmax(logp, axis=1)                                # (N, K)
  return jnp.sqrt(1.0 - a[:, 0]) * jnp.einsum("nk,nkhwc->nhwc", w, r / s, precision=_HI)


def _image_mean(mean):
  mean = jnp.asarray(mean, jnp.float32)
  if mean.ndim != 3:
    raise ShapeError(f"mean has shape {mean.shape}; expected one (H, W, C) image.")
  check_finite(mean, "mean")
  return mean


def _check_nonneg(x, name):
  check_finite(x, name)
  if is_concrete(x) and np.min(np.asarray(x)) < 0:
    raise ConfigError(f"{name} has negative entries (min {float(np.min(x)):.3g}); "
                      "variances must be >= 0.")


def gaussian_prior(mean, cov=None, *, eigvals=None, eigvecs=None,
                   schedule: Schedule | None = None) -> Prior:
  """A Gaussian prior N(mean, cov) with exact eps(x_t, t).

  Args:
    mean: (H, W, C) prior mean (jaxir images live in [-1, 1]).
    cov: the covariance, one of: a scalar (isotropic), an (H, W, C) array
      (diagonal; both give the cheap elementwise prior), or a dense (n, n)
      symmetric PSD matrix, n = H*W*C, over the row-major flattened image
      (diagonalized once; fine for n up to a few thousand).
    eigvals, eigvecs: instead of `cov`, Sigma = eigvecs diag(eigvals) eigvecs^T
      with eigvals (k,) >= 0 and eigvecs (n, k) orthonormal columns; k < n
      means zero variance outside their span.
    schedule: the diffusion schedule (default linear, 1000 steps); its
      alphas_cumprod is copied into the params.

  Returns:
    A `Prior` whose params are `DiagGaussianParams` or `GaussianParams`.

  Raises:
    ShapeError: shapes do not match the mean.
    ConfigError: negative variances, a non-symmetric or non-PSD cov, both or
      neither of cov and (eigvals, eigvecs), non-orthonormal eigvecs.
  """
  mean = _image_mean(mean)
  schedule = schedule if schedule is not None else get_schedule("linear", 1000)
  abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  n = math.prod(mean.shape)
  if (cov is None) == (eigvals is None or eigvecs is None):
    raise ConfigError("give either cov, or both eigvals and eigvecs, to gaussian_prior.")
  if cov is not None:
    cov = jnp.asarray(cov, jnp.float32)
    if cov.ndim == 0 or cov.shape == mean.shape:
      _check_nonneg(cov, "cov")
      params = DiagGaussianParams(mean=mean, var=jnp.broadcast_to(cov, mean.shape),
                                  alphas_cumprod=abar)
      return make_prior(_diag_apply, params, schedule, tuple(mean.shape))
    if cov.shape != (n, n):
      raise ShapeError(f"cov has shape {cov.shape}; expected a scalar, {mean.shape} "
                       f"(diagonal) or ({n}, {n}) (dense) for a mean of shape {mean.shape}.")
    check_finite(cov, "cov")
    if is_concrete(cov):
      c = np.asarray(cov, np.float64)
      scale = max(np.abs(c).max(), 1e-30)
      if np.abs(c - c.T).max() > 1e-5 * scale:
        raise ConfigError("cov is not symmetric; pass (cov + cov.T) / 2.")
      lam, v = np.linalg.eigh(0.5 * (c + c.T))
      if lam.min() < -1e-5 * scale:
        raise ConfigError(f"cov is not positive semidefinite (smallest eigenvalue "
                          f"{lam.min():.3g}); pass a valid covariance.")
      eigvals, eigvecs = jnp.asarray(np.maximum(lam, 0.0), jnp.float32), jnp.asarray(v, jnp.float32)
    else:
      lam, v = jnp.linalg.eigh(0.5 * (cov + cov.T))
      eigvals, eigvecs = jnp.maximum(lam, 0.0), v
  else:
    eigvals = jnp.asarray(eigvals, jnp.float32)
    eigvecs = jnp.asarray(eigvecs, jnp.float32)
    if eigvecs.ndim != 2 or eigvecs.shape[0] != n or eigvals.shape != (eigvecs.shape[1],):
      raise ShapeError(f"eigvecs {eigvecs.shape} / eigvals {eigvals.shape} must be (n, k) / "
                       f"(k,) with n = {n} for a mean of shape {mean.shape}.")
    _check_nonneg(eigvals, "eigvals")
    if eigvecs.shape[1] > n:
      raise ShapeError(f"eigvecs has {eigvecs.shape[1]} columns; at most n = {n}.")
    if is_concrete(eigvecs):
      v = np.asarray(eigvecs, np.float64)
      if np.abs(v.T @ v - np.eye(v.shape[1])).max() > 1e-4:
        raise ConfigError("eigvecs columns are not orthonormal; orthonormalize them "
                          "(e.g. np.linalg.qr) or pass the dense cov.")
  params = GaussianParams(mean=mean, eigvals=eigvals, eigvecs=eigvecs, alphas_cumprod=abar)
  return make_prior(_gaussian_apply, params, schedule, tuple(mean.shape))


def gmm_prior(means, variances, weights, schedule: Schedule | None = None) -> Prior:
  """A mixture of diagonal Gaussians sum_k pi_k N(means[k], diag(variances[k])).

  Args:
    means: (K, H, W, C) component means.
    variances: (K,) per-component isotropic variances, or (K, H, W, C) diagonal
      variances (anything broadcastable after (K,) -> (K, 1, 1, 1)); >= 0.
    weights: (K,) nonnegative mixture weights (normalized here).
    schedule: the diffusion schedule (default linear, 1000 steps).

  Returns:
    A `Prior` with `GMMParams`; its eps is exact (responsibilities by softmax).

  Raises:
    ShapeError: inconsistent shapes.  ConfigError: negative variances or weights.
  """
  means = jnp.asarray(means, jnp.float32)
  if means.ndim != 4:
    raise ShapeError(f"means has shape {means.shape}; expected (K, H, W, C).")
  k = means.shape[0]
  check_finite(means, "means")
  variances = jnp.asarray(variances, jnp.float32)
  if variances.shape == (k,):
    variances = variances.reshape(k, 1, 1, 1)
  try:
    variances = jnp.broadcast_to(variances, means.shape)
  except ValueError:
    raise ShapeError(f"variances has shape {variances.shape}; expected ({k},) or "
                     f"{means.shape} to match means.") from None
  _check_nonneg(variances, "variances")
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (k,):
    raise ShapeError(f"weights has shape {weights.shape}; expected ({k},), one per component.")
  _check_nonneg(weights, "weights")
  if is_concrete(weights) and not np.sum(np.asarray(weights)) > 0:
    raise ConfigError("weights sum to zero; give at least one positive weight.")
  schedule = schedule if schedule is not None else get_schedule("linear", 1000)
  params = GMMParams(means=means, variances=variances,
                     log_weights=jnp.log(weights) - jnp.log(jnp.sum(weights)),
                     alphas_cumprod=jnp.asarray(schedule.alphas_cumprod, jnp.float32))
  return make_prior(_gmm_apply, params, schedule, tuple(means.shape[1:]))


def _params(prior_or_params):
  p = prior_or_params.params if isinstance(prior_or_params, Prior) else prior_or_params
  if not isinstance(p, (GaussianParams, DiagGaussianParams, GMMParams)):
    raise ConfigError(f"expected an analytic prior or its params, got {type(p).__name__}; "
                      "build one with gaussian_prior or gmm_prior.")
  return p


def prior_covariance(prior_or_params) -> jnp.ndarray:
  """Dense (n, n) covariance of a Gaussian prior (`GaussianParams`/`DiagGaussianParams`)."""
  p = _params(prior_or_params)
  if isinstance(p, DiagGaussianParams):
    return jnp.diag(p.var.reshape(-1))
  if isinstance(p, GaussianParams):
    return jnp.dot(p.eigvecs * p.eigvals, p.eigvecs.T, precision=_HI)
  raise ConfigError("prior_covariance takes a Gaussian prior; a GMM has one per component "
                    "(diag(params.variances[k])).")


def sample_prior(key, prior_or_params, n: int) -> jnp.ndarray:
  """Draw `n` exact samples x0 from an analytic prior.

  Args:
    key: `jax.random` key.
    prior_or_params: a Prior from `gaussian_prior`/`gmm_prior`, or its params.
    n: number of samples (static).

  Returns:
    (n, H, W, C) float32 samples.
  """
  return _sample(key, _params(prior_or_params), n)


@functools.partial(jax.jit, static_argnames="n")
def _sample(key, p, n):
  if isinstance(p, DiagGaussianParams):
    z = jax.random.normal(key, (n,) + p.mean.shape, p.mean.dtype)
    return p.mean + jnp.sqrt(p.var) * z
  if isinstance(p, GaussianParams):
    z = jax.random.normal(key, (n, p.eigvals.shape[0]), p.mean.dtype)
    x = jnp.dot(z * jnp.sqrt(p.eigvals), p.eigvecs.T, precision=_HI)
    return p.mean + x.reshape((n,) + p.mean.shape)
  kc, kz = jax.random.split(key)
  comp = jax.random.categorical(kc, p.log_weights, shape=(n,))
  z = jax.random.normal(kz, (n,) + p.means.shape[1:], p.means.dtype)
  return p.means[comp] + jnp.sqrt(p.variances[comp]) * z
