"""Exact posteriors of analytic priors under a linear Gaussian measurement.

y = A x + n, n ~ N(0, sigma_y^2 I), with A given as a dense (m, n) matrix
(`operator_matrix` builds it from a jaxir `LinearOperator` for small images).
For a Gaussian prior N(mu, Sigma) (covariance form of Bayes' rule / the Kalman
update):

  S    = A Sigma A^T + sigma_y^2 I
  K    = Sigma A^T S^+
  mean = mu + K (y - A mu),   cov = Sigma - K A Sigma,

and a mixture posterior has components conditioned the same way and weights
w_k ∝ pi_k N(y; A mu_k, S_k). S^+ is the pseudo-inverse, so sigma_y = 0
(noiseless) gives the limit sigma_y -> 0: K = L (A L)^+ for Sigma = L L^T,
and A mean = y whenever y lies in the range of A Sigma A^T. For the mixture
weights with sigma_y = 0, N(y; ., S_k) uses the pseudo-determinant, which is
the right limit when all S_k share one range (e.g. A of full row rank and
positive prior variances, where every S_k is invertible).

Computations run in the dtype of the inputs (float32 unless x64 is enabled).

References:
  Bishop, "Pattern Recognition and Machine Learning", 2006, sec. 2.3.3
    (Bayes' theorem for Gaussian variables).
  Kalman, "A New Approach to Linear Filtering and Prediction Problems", 1960.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxir.errors import ConfigError, ShapeError
from jaxir.priors.analytic import DiagGaussianParams, GaussianParams, GMMParams, _params

__all__ = ["operator_matrix", "gaussian_posterior", "gmm_posterior", "gmm_posterior_mean",
           "sample_mixture"]

_HI = jax.lax.Precision.HIGHEST


def operator_matrix(op) -> jnp.ndarray:
  """Dense matrix of a linear operator, by vmapping `op.A` over the identity basis.

  Args:
    op: a jaxir `LinearOperator` with static `in_shape` (H, W, C); keep
      n = H*W*C small (the matrix has n columns and costs n calls of A).

  Returns:
    (m, n) matrix M with M @ x.reshape(-1) == op.A(x).reshape(-1), both
    flattened row-major (m = number of entries of A(x)). Complex-valued
    operators give a complex matrix; the posteriors here need real ones.
  """
  if not getattr(op, "linear", False):
    raise ConfigError(f"{type(op).__name__} is not linear; operator_matrix needs a LinearOperator.")
  shape = tuple(op.in_shape)
  n = math.prod(shape)
  basis = jnp.eye(n, dtype=jnp.float32).reshape((n,) + shape)
  cols = jax.vmap(op.A)(basis)
  return cols.reshape(n, -1).T


def _dense_prior(p):
  if isinstance(p, DiagGaussianParams):
    return p.mean.reshape(-1), jnp.diag(p.var.reshape(-1))
  if isinstance(p, GaussianParams):
    return p.mean.reshape(-1), jnp.dot(p.eigvecs * p.eigvals, p.eigvecs.T, precision=_HI)
  raise ConfigError("gaussian_posterior takes a Gaussian prior; use gmm_posterior for a GMM.")


def _check_measurement(a_mat, y, n):
  a_mat = jnp.asarray(a_mat)
  if a_mat.ndim != 2 or a_mat.shape[1] != n:
    raise ShapeError(f"A_mat has shape {a_mat.shape}; expected (m, {n}) for images of "
                     f"{n} entries (build it with operator_matrix(op)).")
  if jnp.iscomplexobj(a_mat):
    raise ConfigError("A_mat is complex; the analytic posteriors need a real operator.")
  y = jnp.asarray(y).reshape(-1)
  if y.shape[0] != a_mat.shape[0]:
    raise ShapeError(f"y has {y.shape[0]} entries but A_mat has {a_mat.shape[0]} rows; "
                     "pass the measurement of this operator (any shape, flattened row-major).")
  return a_mat, y


@jax.jit
def _condition(mu, sigma, a_mat, y, sigma_y):
  """Condition N(mu, sigma) on y = A x + N(0, sigma_y^2 I): (mean, cov, log evidence)."""
  m = a_mat.shape[0]
  dtype = jnp.result_type(mu, sigma, a_mat, y)
  mu, sigma, a_mat, y = (v.astype(dtype) for v in (mu, sigma, a_mat, y))
  sa = jnp.dot(sigma, a_mat.T, precision=_HI)                     # (n, m) = Sigma A^T
  s = jnp.dot(a_mat, sa, precision=_HI)
  s = 0.5 * (s + s.T) + jnp.asarray(sigma_y, dtype) ** 2 * jnp.eye(m, dtype=dtype)
  d, u = jnp.linalg.eigh(s)
  tol = jnp.max(jnp.abs(d)) * m * jnp.finfo(dtype).eps
  keep = d > tol
  dinv = jnp.where(keep, 1.0 / jnp.where(keep, d, 1.0), 0.0)
  r = y - jnp.dot(a_mat, mu, precision=_HI)
  ur = jnp.dot(u.T, r, precision=_HI)
  gain = jnp.dot(sa, u * dinv, precision=_HI)                     # K U, (n, m)
  mean = mu + jnp.dot(gain, ur, precision=_HI)
  cov = sigma - jnp.dot(gain, jnp.dot(u.T, sa.T, precision=_HI), precision=_HI)
  cov = 0.5 * (cov + cov.T)
  logev = -0.5 * (jnp.sum(ur * ur * dinv) + jnp.sum(jnp.where(keep, jnp.log(jnp.where(keep, d, 1.0)), 0.0))
                  + jnp.sum(keep) * jnp.log(2.0 * jnp.pi))
  return mean, cov, logev


def gaussian_posterior(prior_params, A_mat, y, sigma_y):
  """Exact posterior p(x | y) of a Gaussian prior under y = A x + N(0, sigma_y^2 I).

  Args:
    prior_params: a Gaussian `Prior` from `gaussian_prior`, or its params.
    A_mat: (m, n) real measurement matrix, n = H*W*C (see `operator_matrix`).
    y: measurement with m entries (any shape; flattened row-major).
    sigma_y: noise standard deviation (>= 0; 0 gives the noiseless limit).

  Returns:
    (mean, cov): mean (H, W, C), cov (n, n) over the flattened image.
  """
  p = _params(prior_params)
  mu, sigma = _dense_prior(p)
  a_mat, y = _check_measurement(A_mat, y, mu.shape[0])
  mean, cov, _ = _condition(mu, sigma, a_mat, y, sigma_y)
  return mean.reshape(p.mean.shape), cov


def gmm_posterior(prior_params, A_mat, y, sigma_y):
  """Exact posterior of a diagonal-covariance GMM prior: again a Gaussian mixture.

  Args:
    prior_params: a `Prior` from `gmm_prior`, or its `GMMParams`.
    A_mat: (m, n) real measurement matrix, n = H*W*C.
    y: measurement with m entries.
    sigma_y: noise standard deviation (>= 0; see the module notes for 0).

  Returns:
    (weights, means, covs): weights (K,) summing to one, means (K, H, W, C),
    covs (K, n, n) (dense: conditioning couples the pixels).
  """
  p = _params(prior_params)
  if not isinstance(p, GMMParams):
    raise ConfigError("gmm_posterior takes a GMM prior; use gaussian_posterior for a Gaussian.")
  k = p.means.shape[0]
  a_mat, y = _check_measurement(A_mat, y, math.prod(p.means.shape[1:]))
  mus = p.means.reshape(k, -1)
  sigmas = jax.vmap(jnp.diag)(p.variances.reshape(k, -1))
  means, covs, logev = jax.vmap(_condition, in_axes=(0, 0, None, None, None))(
      mus, sigmas, a_mat, y, sigma_y)
  weights = jax.nn.softmax(p.log_weights + logev)
  return weights, means.reshape(p.means.shape), covs


def gmm_posterior_mean(prior_params, A_mat, y, sigma_y):
  """Posterior mean E[x | y] of a GMM prior, (H, W, C): sum_k w_k means_k."""
  weights, means, _ = gmm_posterior(prior_params, A_mat, y, sigma_y)
  return jnp.tensordot(weights, means, axes=1, precision=_HI)


def sample_mixture(key, weights, means, covs, n: int):
  """Draw `n` samples from sum_k weights[k] N(means[k], covs[k]) (e.g. a posterior).

  Args:
    key: `jax.random` key.
    weights: (K,) nonnegative (normalized here).
    means: (K, H, W, C); covs: (K, d, d) PSD with d = H*W*C (may be singular).
      For a single Gaussian pass weights=jnp.ones(1), mean[None], cov[None].
    n: number of samples (static).

  Returns:
    (n, H, W, C) samples.
  """
  weights, means, covs = jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covs)
  k = means.shape[0]
  if covs.shape != (k,) + (math.prod(means.shape[1:]),) * 2 or weights.shape != (k,):
    raise ShapeError(f"weights {weights.shape}, means {means.shape}, covs {covs.shape} "
                     "must be (K,), (K, H, W, C), (K, d, d) with d = H*W*C.")
  return _sample_mixture(key, weights, means, covs, n)


@functools.partial(jax.jit, static_argnames="n")
def _sample_mixture(key, weights, means, covs, n):
  d, u = jnp.linalg.eigh(covs)
  roots = u * jnp.sqrt(jnp.maximum(d, 0.0))[:, None, :]          # cov = root root^T
  kc, kz = jax.random.split(key)
  comp = jax.random.categorical(kc, jnp.log(weights), shape=(n,))
  z = jax.random.normal(kz, (n, d.shape[-1]), means.dtype)
  x = jnp.einsum("nij,nj->ni", roots[comp], z, precision=_HI)
  return means[comp] + x.reshape((n,) + means.shape[1:])
