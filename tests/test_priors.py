"""Analytic priors and posteriors against independent closed forms.

References used here, none of them the code under test:
  * the dense Tweedie formula E[x0|x_t] = mu + sqrt(a) Sigma (a Sigma + (1-a) I)^-1 r
    in numpy float64 (not the eigenbasis path);
  * eps = -sqrt(1 - a) grad log p_t via jax.grad of a mixture log-density written with
    jax.scipy.stats.multivariate_normal, and 1-D quadrature of E[x0 | x_t];
  * the exact law of the DDPM ancestral chain from guided-diffusion's posterior
    coefficients (float64), for the sampling test;
  * the information form of Bayes' rule, the Schur-complement conditional, and 2-D grid
    integration, for the posteriors.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from guided_diffusion import gaussian_diffusion as gd
from jax.scipy.special import logsumexp
from jax.scipy.stats import multivariate_normal

from references import rel_err
import jaxir.diffusion as D
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import LinearOperator
from jaxir.priors.analytic import (gaussian_prior, gmm_prior, prior_covariance,
                                   sample_prior)
from jaxir.priors.posterior import (gaussian_posterior, gmm_posterior, gmm_posterior_mean,
                                    operator_matrix, sample_mixture)

T_CHECK = np.array([0, 3, 50, 250, 500, 750, 999])


def random_cov(rng, n, lo=0.01, hi=1.0, rank=None):
  """Sigma = Q diag(lam) Q^T with random orthogonal Q (float64); low rank if asked."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  lam = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
  if rank is not None:
    lam[rank:] = 0.0
  return (q * lam) @ q.T, lam, q


def abar_of(prior, t):
  return np.asarray(prior.schedule.alphas_cumprod, np.float64)[t]


def dense_tweedie(mu, cov, x, a):
  """E[x0 | x_t] for N(mu, cov), dense float64: one x (n,) and scalar abar a."""
  n = mu.shape[0]
  r = x - np.sqrt(a) * mu
  return mu + np.sqrt(a) * cov @ np.linalg.solve(a * cov + (1 - a) * np.eye(n), r)


def check_gaussian_against_dense(prior, mu, cov, key, tol=1e-4):
  shape = mu.shape
  x = np.asarray(jax.random.normal(key, (len(T_CHECK),) + shape), np.float64)
  x0 = np.asarray(prior.x0(jnp.asarray(x, jnp.float32), jnp.asarray(T_CHECK)))
  eps = np.asarray(prior.eps(jnp.asarray(x, jnp.float32), jnp.asarray(T_CHECK)))
  for i, t in enumerate(T_CHECK):
    a = abar_of(prior, t)
    ref = dense_tweedie(mu.reshape(-1), cov, x[i].reshape(-1), a)
    ref_eps = (x[i].reshape(-1) - np.sqrt(a) * ref) / np.sqrt(1 - a)
    # x0 = (x - sqrt(1-a) eps) / sqrt(a) in float32 (Prior.x0) amplifies rounding by
    # 1/sqrt(a) (160 at t=999), hence the second term.
    err = np.max(np.abs(x0[i].reshape(-1) - ref))
    assert err < tol * np.max(np.abs(ref)) + 1e-6 * np.max(np.abs(x[i])) / np.sqrt(a), (t, err)
    assert rel_err(eps[i].reshape(-1), ref_eps) < tol, (t, rel_err(eps[i].reshape(-1), ref_eps))


# ----------------------------------------------------------------------------- Gaussian eps


@pytest.mark.parametrize("form", ["dense", "eig", "lowrank_dense", "lowrank_eig"])
def test_gaussian_tweedie_matches_dense_formula(form):
  rng = np.random.default_rng(0)
  shape = (2, 2, 3)
  n = 12
  rank = 5 if form.startswith("lowrank") else None
  cov, lam, q = random_cov(rng, n, rank=rank)
  mu = rng.uniform(-0.5, 0.5, shape)
  if form.endswith("dense"):
    prior = gaussian_prior(mu, cov)
  else:
    k = rank if rank is not None else n
    prior = gaussian_prior(mu, eigvals=lam[:k], eigvecs=q[:, :k])
  check_gaussian_against_dense(prior, mu, cov, jax.random.key(1))
  np.testing.assert_allclose(prior_covariance(prior), cov, atol=1e-6)


@pytest.mark.parametrize("kind", ["diag", "iso"])
def test_diagonal_gaussian_tweedie_matches_dense_formula(kind):
  rng = np.random.default_rng(2)
  shape = (4, 4, 1)
  mu = rng.uniform(-0.5, 0.5, shape)
  var = rng.uniform(0.01, 1.0, shape) if kind == "diag" else 0.3
  prior = gaussian_prior(mu, var)
  cov = np.diag(np.broadcast_to(var, shape).reshape(-1))
  check_gaussian_against_dense(prior, mu, cov, jax.random.key(3))


# ----------------------------------------------------------------------------- GMM eps


def make_gmm(shape=(2, 2, 1), k=3, seed=4, diag=True):
  rng = np.random.default_rng(seed)
  means = rng.uniform(-0.7, 0.7, (k,) + shape)
  variances = rng.uniform(0.01, 0.2, (k,) + shape) if diag else rng.uniform(0.01, 0.2, (k,))
  weights = rng.uniform(0.2, 1.0, k)
  return means, variances, weights


@pytest.mark.parametrize("diag", [True, False])
def test_gmm_eps_is_scaled_score_of_marginal(diag):
  """eps = -sqrt(1 - a) grad log p_t, p_t a closed-form mixture (autodiff reference)."""
  means, variances, weights = make_gmm(diag=diag)
  prior = gmm_prior(means, variances, weights)
  k = means.shape[0]
  var_full = np.broadcast_to(variances.reshape((k,) + (1,) * 3) if not diag else variances,
                             means.shape).reshape(k, -1)
  logw = np.log(weights / weights.sum())

  def log_pt(x, a):
    comps = [logw[j] + multivariate_normal.logpdf(
        x, jnp.sqrt(a) * means[j].reshape(-1), jnp.diag(a * var_full[j] + 1 - a))
        for j in range(k)]
    return logsumexp(jnp.stack(comps))

  # x_t drawn from the marginal itself, so responsibilities are mixed and realistic.
  x0 = sample_prior(jax.random.key(5), prior, len(T_CHECK))
  a = jnp.asarray(abar_of(prior, T_CHECK), jnp.float32)
  x = D.q_sample(x0, a[:, None, None, None], jax.random.normal(jax.random.key(6), x0.shape))
  score = jax.jit(jax.vmap(jax.grad(log_pt)))(x.reshape(len(T_CHECK), -1), a)
  ref = -jnp.sqrt(1 - a)[:, None] * score
  eps = prior.eps(x, jnp.asarray(T_CHECK)).reshape(len(T_CHECK), -1)
  assert rel_err(eps, ref) < 1e-4


def test_gmm_tweedie_matches_1d_quadrature():
  """E[x0 | x_t] of a 1-D mixture by float64 quadrature over x0."""
  means = np.array([-0.6, 0.1, 0.7]).reshape(3, 1, 1, 1)
  variances = np.array([0.02, 0.1, 0.01])
  weights = np.array([0.5, 0.2, 0.3])
  prior = gmm_prior(means, variances, weights)
  grid = np.linspace(-3, 3, 60001)
  p0 = sum(w * np.exp(-(grid - m) ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
           for w, m, v in zip(weights, means.ravel(), variances))
  ts = np.array([0, 20, 100, 300, 600, 999])
  xs = np.array([0.05, -0.55, 0.4, 0.9, -0.3, 0.5])
  ref = []
  for t, x in zip(ts, xs):
    a = abar_of(prior, t)
    lik = np.exp(-(x - np.sqrt(a) * grid) ** 2 / (2 * (1 - a)))
    ref.append(np.sum(grid * p0 * lik) / np.sum(p0 * lik))
  x0 = prior.x0(jnp.asarray(xs, jnp.float32).reshape(-1, 1, 1, 1), jnp.asarray(ts))
  np.testing.assert_allclose(np.asarray(x0).ravel(), ref, atol=2e-4)


def test_gmm_single_component_equals_diagonal_gaussian():
  rng = np.random.default_rng(7)
  mu, var = rng.uniform(-0.5, 0.5, (4, 4, 1)), rng.uniform(0.01, 0.5, (4, 4, 1))
  g, m = gaussian_prior(mu, var), gmm_prior(mu[None], var[None], np.ones(1))
  x = jax.random.normal(jax.random.key(8), (len(T_CHECK), 4, 4, 1))
  assert rel_err(m.eps(x, T_CHECK), g.eps(x, T_CHECK)) < 1e-5


# ----------------------------------------------------------------------------- sampling


def ddpm_chain_law(lam, mu):
  """Exact (mean, var) of the 1000-step DDPM ancestral chain with exact eps, per
  eigendirection (variance lam, mean mu; the chain is linear and acts on each
  independently), using guided-diffusion's float64 posterior coefficients."""
  diff = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("linear", 1000),
                              model_mean_type=gd.ModelMeanType.EPSILON,
                              model_var_type=gd.ModelVarType.FIXED_SMALL,
                              loss_type=gd.LossType.MSE)
  m, v = np.zeros_like(lam), np.ones_like(lam)  # x_T ~ N(0, 1)
  for t in range(999, -1, -1):
    a = diff.alphas_cumprod[t]
    g = np.sqrt(a) * lam / (a * lam + 1 - a)  # x0_hat = mu + g (x - sqrt(a) mu)
    c1, c2 = diff.posterior_mean_coef1[t], diff.posterior_mean_coef2[t]
    slope, icpt = c1 * g + c2, c1 * (mu - g * np.sqrt(a) * mu)
    m, v = slope * m + icpt, slope ** 2 * v + (diff.posterior_variance[t] if t > 0 else 0.0)
  return m, v


def test_ddpm_sampling_recovers_gaussian_prior():
  """DDIM eta=1 over all 1000 steps with the exact eps reproduces the prior.

  N = 8000 samples of a 2x2x1 image (the 1000 steps draw 3.2e7 normals, the cost
  here). In the prior's eigenbasis the whitened sample mean has sd 1/sqrt(N) = 0.011
  per entry and the whitened covariance sd <= sqrt(2/N) = 0.016; tolerances are 5 sd against the exact law of the discrete chain,
  and 5 sd plus the chain's known discretization bias (<= 2% for eigenvalues >= 0.1,
  computed below) against the prior itself.
  """
  rng = np.random.default_rng(9)
  cov, lam, q = random_cov(rng, 4, lo=0.1, hi=1.0)
  mu = rng.uniform(-0.5, 0.5, (2, 2, 1))
  prior = gaussian_prior(mu, cov)
  n = 8000
  k_t, k_s = jax.random.split(jax.random.key(10))
  x_t = jax.random.normal(k_t, (n, 2, 2, 1))
  sample = jax.jit(lambda x, k: D.ddim_sample(prior.model, x, range(1000), eta=1.0,
                                              clip_denoised=False, key=k))
  x = np.asarray(sample(x_t, k_s), np.float64).reshape(n, -1)
  z = (x - mu.reshape(-1)) @ q  # eigen-coordinates
  zmean = z.mean(0)
  zcov = np.cov(z.T)
  mu_e = q.T @ mu.reshape(-1)
  chain_m, chain_v = ddpm_chain_law(lam, mu_e)
  chain_m = chain_m - mu_e  # in the centred eigen-coordinates z
  bias = np.abs(chain_v / lam - 1)
  assert bias.max() < 0.02
  wl, wc = 1 / np.sqrt(lam), 1 / np.sqrt(chain_v)
  assert np.max(np.abs(zmean * wc - chain_m * wc)) < 5 / np.sqrt(n)
  assert np.max(np.abs(wc[:, None] * zcov * wc[None] - np.eye(4))) < 5 * np.sqrt(2 / n)
  assert np.max(np.abs(zmean * wl)) < 5 / np.sqrt(n)
  assert np.max(np.abs(wl[:, None] * zcov * wl[None] - np.eye(4))) < 5 * np.sqrt(2 / n) + 0.02


def test_sample_prior_moments_and_keys():
  means, variances, weights = make_gmm(shape=(2, 1, 1), k=2, seed=11)
  prior = gmm_prior(means, variances, weights)
  n = 100000
  x = np.asarray(sample_prior(jax.random.key(12), prior, n), np.float64).reshape(n, -1)
  w = weights / weights.sum()
  mean = np.einsum("k,kd->d", w, means.reshape(2, -1))
  second = np.einsum("k,kd->d", w, variances.reshape(2, -1) + means.reshape(2, -1) ** 2)
  sd = np.sqrt(second - mean ** 2)
  assert np.max(np.abs(x.mean(0) - mean) / sd) < 5 / np.sqrt(n)
  # Var of x^2 is bounded by E x^4 <= 3 * max second moment^2 for these small mixtures.
  assert np.max(np.abs((x ** 2).mean(0) - second) / second) < 5 * np.sqrt(3 / n)
  a = sample_prior(jax.random.key(12), prior, 8)
  np.testing.assert_array_equal(a, sample_prior(jax.random.key(12), prior, 8))
  assert np.min(np.abs(a - sample_prior(jax.random.key(13), prior, 8))) > 0
  rng = np.random.default_rng(14)
  cov, _, _ = random_cov(rng, 4, lo=0.05)
  g = gaussian_prior(np.zeros((2, 2, 1)), cov)
  xs = np.asarray(sample_prior(jax.random.key(15), g, n), np.float64).reshape(n, -1)
  assert np.max(np.abs(np.cov(xs.T) - cov)) < 5 * np.sqrt(2 / n)


# ----------------------------------------------------------------------------- posteriors


class Pool2(LinearOperator):
  """2x2 average pooling (test operator; adjoint by linear_transpose)."""

  def A(self, x):
    h, w, c = self.in_shape
    return x.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


class Mask(LinearOperator):
  """Keep the pixels where `keep` is True, as a vector."""
  keep: np.ndarray = None

  def A(self, x):
    return x.reshape(-1)[np.flatnonzero(self.keep)]


def test_operator_matrix_matches_operator():
  op = Pool2(in_shape=(4, 4, 2))
  a_mat = operator_matrix(op)
  x = jax.random.normal(jax.random.key(16), (4, 4, 2))
  assert a_mat.shape == (8, 32)
  np.testing.assert_allclose(a_mat @ x.reshape(-1), op.A(x).reshape(-1), atol=1e-6)


def test_gaussian_posterior_matches_information_form():
  rng = np.random.default_rng(17)
  cov, _, _ = random_cov(rng, 16, lo=0.05)
  mu = rng.uniform(-0.5, 0.5, (4, 4, 1))
  prior = gaussian_prior(mu, cov)
  a = np.asarray(operator_matrix(Pool2(in_shape=(4, 4, 1))), np.float64)
  x = np.asarray(sample_prior(jax.random.key(18), prior, 1)[0], np.float64).reshape(-1)
  for s in [0.5, 0.1, 0.02]:
    y = a @ x + s * rng.standard_normal(4)
    mean, pcov = gaussian_posterior(prior, a, y.reshape(2, 2, 1), s)
    info = np.linalg.inv(cov) + a.T @ a / s ** 2
    ref_cov = np.linalg.inv(info)
    ref_mean = ref_cov @ (np.linalg.solve(cov, mu.reshape(-1)) + a.T @ y / s ** 2)
    assert rel_err(np.asarray(mean).reshape(-1), ref_mean) < 1e-4
    assert rel_err(pcov, ref_cov) < 1e-4
  # diagonal prior through the same path
  var = rng.uniform(0.05, 1.0, (4, 4, 1))
  mean, pcov = gaussian_posterior(gaussian_prior(mu, var), a, y, 0.1)
  cinv = np.diag(1 / var.reshape(-1))
  ref_cov = np.linalg.inv(cinv + a.T @ a / 0.01)
  assert rel_err(np.asarray(mean).reshape(-1),
                 ref_cov @ (cinv @ mu.reshape(-1) + a.T @ y / 0.01)) < 1e-4
  assert rel_err(pcov, ref_cov) < 1e-4


def test_gaussian_posterior_noiseless_is_schur_conditional():
  """sigma_y = 0 with a mask: the classic conditional of a Gaussian on observed pixels."""
  rng = np.random.default_rng(19)
  cov, _, _ = random_cov(rng, 16, lo=0.05)
  mu = rng.uniform(-0.5, 0.5, (4, 4, 1))
  keep = rng.uniform(size=16) < 0.5
  o, u = np.flatnonzero(keep), np.flatnonzero(~keep)
  a = operator_matrix(Mask(in_shape=(4, 4, 1), keep=keep))
  y = rng.uniform(-1, 1, o.size)
  mean, pcov = gaussian_posterior(gaussian_prior(mu, cov), a, y, 0.0)
  mean, pcov, m = np.asarray(mean).reshape(-1), np.asarray(pcov), mu.reshape(-1)
  soo_inv = np.linalg.inv(cov[np.ix_(o, o)])
  ref_u = m[u] + cov[np.ix_(u, o)] @ soo_inv @ (y - m[o])
  ref_cov_u = cov[np.ix_(u, u)] - cov[np.ix_(u, o)] @ soo_inv @ cov[np.ix_(o, u)]
  np.testing.assert_allclose(mean[o], y, atol=1e-5)
  assert rel_err(mean[u], ref_u) < 1e-4
  assert rel_err(pcov[np.ix_(u, u)], ref_cov_u) < 1e-4
  assert np.max(np.abs(pcov[o])) < 1e-5
  # The noiseless answer is the sigma_y -> 0 limit of the noisy one.
  mean_s, _ = gaussian_posterior(gaussian_prior(mu, cov), a, y, 1e-3)
  np.testing.assert_allclose(np.asarray(mean_s).reshape(-1), mean, atol=1e-3)


def test_gmm_posterior_matches_2d_grid_integration():
  rng = np.random.default_rng(20)
  means = rng.uniform(-1, 1, (3, 1, 2, 1))
  variances = rng.uniform(0.05, 0.3, (3, 1, 2, 1))
  weights = np.array([0.3, 0.5, 0.2])
  prior = gmm_prior(means, variances, weights)
  a = np.array([[0.7, 0.5]])
  s = 0.3
  y = np.array([0.2])
  w, pm, pc = (np.asarray(v, np.float64) for v in gmm_posterior(prior, a, y, s))
  g = np.linspace(-4, 4, 801)
  x1, x2 = np.meshgrid(g, g, indexing="ij")
  comp = np.stack([wk * np.exp(-(x1 - m[0, 0, 0]) ** 2 / (2 * v[0, 0, 0]) - (x2 - m[0, 1, 0]) ** 2
                               / (2 * v[0, 1, 0])) / (2 * np.pi * np.sqrt(v[0, 0, 0] * v[0, 1, 0]))
                   for wk, m, v in zip(weights, means, variances)])
  post = comp * np.exp(-(y[0] - a[0, 0] * x1 - a[0, 1] * x2) ** 2 / (2 * s ** 2))
  z = post.sum()
  np.testing.assert_allclose(w, post.sum(axis=(1, 2)) / z, atol=1e-4)
  ref_mean = np.array([(post.sum(0) * x1).sum(), (post.sum(0) * x2).sum()]) / z
  mean = np.asarray(gmm_posterior_mean(prior, a, y, s)).reshape(-1)
  np.testing.assert_allclose(mean, ref_mean, atol=1e-4)
  # second moments of the mixture
  second = np.einsum("k,kij->ij", w, pc + np.einsum("ki,kj->kij", pm.reshape(3, 2), pm.reshape(3, 2)))
  xs = np.stack([x1, x2])
  ref_second = np.einsum("iab,jab,ab->ij", xs, xs, post.sum(0)) / z
  np.testing.assert_allclose(second, ref_second, atol=1e-4)


def test_sample_mixture_matches_posterior_moments():
  rng = np.random.default_rng(21)
  cov, _, _ = random_cov(rng, 4, lo=0.05)
  prior = gaussian_prior(np.zeros((2, 2, 1)), cov)
  a = np.ones((1, 4)) / 4
  mean, pcov = gaussian_posterior(prior, a, np.array([0.3]), 0.0)  # singular covariance
  n = 100000
  x = np.asarray(sample_mixture(jax.random.key(22), jnp.ones(1), mean[None], pcov[None], n),
                 np.float64).reshape(n, -1)
  sd = np.sqrt(np.diag(pcov).max())
  assert np.max(np.abs(x.mean(0) - np.asarray(mean).reshape(-1))) < 5 * sd / np.sqrt(n)
  assert np.max(np.abs(np.cov(x.T) - pcov)) < 5 * np.sqrt(2 / n) * sd ** 2
  np.testing.assert_allclose(x @ a[0], 0.3, atol=1e-5)  # noiseless: every sample has A x = y


# ----------------------------------------------------------------------------- transforms


def test_jit_vmap_grad():
  rng = np.random.default_rng(23)
  cov, _, _ = random_cov(rng, 4)
  mu = rng.uniform(-0.5, 0.5, (2, 2, 1))
  var = rng.uniform(0.05, 0.5, (2, 2, 1))
  priors = [gaussian_prior(mu, cov), gaussian_prior(mu, var), gmm_prior(*make_gmm())]
  x = jax.random.normal(jax.random.key(24), (len(T_CHECK), 2, 2, 1))
  f = jax.jit(lambda p, x, t: p.eps(x, t))
  for p in priors:  # the prior is a pytree argument
    np.testing.assert_allclose(f(p, x, T_CHECK), p.eps(x, T_CHECK), rtol=1e-5, atol=1e-6)
  # vmap over a batch of prior means equals a loop
  p = priors[0]
  mus = jnp.asarray(rng.uniform(-0.5, 0.5, (3, 2, 2, 1)), jnp.float32)
  per = lambda m: p.replace(params=p.params.replace(mean=m)).eps(x, T_CHECK)
  np.testing.assert_allclose(jax.vmap(per)(mus), jnp.stack([per(m) for m in mus]), atol=1e-6)
  # grad w.r.t. the diagonal prior's mean: d sum(eps)/d mu = -sqrt(a (1-a)) / (a v + 1 - a)
  pd = priors[1]
  t = jnp.full((1,), 400)
  a = abar_of(pd, 400)
  grad = jax.grad(lambda m: pd.replace(params=pd.params.replace(mean=m)).eps(x[:1], t).sum())(
      pd.params.mean)
  np.testing.assert_allclose(grad, -np.sqrt(a * (1 - a)) / (a * var + 1 - a), rtol=1e-5)
  # posteriors: jit and vmap over measurements
  amat = np.ones((2, 4)) / 4
  amat[1, :2] = 0
  ys = jnp.asarray(rng.standard_normal((3, 2)), jnp.float32)
  post = jax.jit(lambda y: gaussian_posterior(priors[0], amat, y, 0.1)[0])
  np.testing.assert_allclose(jax.vmap(post)(ys), jnp.stack([gaussian_posterior(
      priors[0], amat, y, 0.1)[0] for y in ys]), atol=1e-5)


def test_bad_inputs_raise_named_errors():
  mu = np.zeros((2, 2, 1))
  with pytest.raises(ShapeError):
    gaussian_prior(mu, np.eye(3))
  with pytest.raises(ConfigError):
    gaussian_prior(mu, -np.eye(4))
  with pytest.raises(ConfigError):
    gaussian_prior(mu, -0.1)
  with pytest.raises(ConfigError):
    gaussian_prior(mu)
  with pytest.raises(ConfigError):
    gaussian_prior(mu, eigvals=np.ones(2), eigvecs=np.ones((4, 2)))
  with pytest.raises(ShapeError):
    gmm_prior(np.zeros((2, 2, 2, 1)), np.ones(3), np.ones(2))
  with pytest.raises(ConfigError):
    gmm_prior(np.zeros((2, 2, 2, 1)), np.ones(2), np.array([1.0, -1.0]))
  with pytest.raises(ShapeError):
    gaussian_prior(mu, 0.5).eps(jnp.zeros((1, 4, 4, 1)), jnp.zeros(1, jnp.int32))
  with pytest.raises(ShapeError):
    gaussian_posterior(gaussian_prior(mu, 0.5), np.ones((2, 5)), np.ones(2), 0.1)
  with pytest.raises(ConfigError):
    gmm_posterior(gaussian_prior(mu, 0.5), np.ones((2, 4)), np.ones(2), 0.1)
