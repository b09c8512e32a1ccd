"""EDM's stochastic sampler against closed-form Gaussian answers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxir.diffusion import edm_levels, edm_sample, get_schedule
from jaxir.errors import ConfigError, ShapeError
from jaxir.priors.analytic import gaussian_prior


def _dense_prior(seed=0, side=4):
  rng = np.random.default_rng(seed)
  n = side * side
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  lam = np.linspace(0.01, 0.3, n)
  mean = rng.uniform(-0.5, 0.5, size=(side, side, 1)).astype(np.float32)
  return gaussian_prior(mean, (q * lam) @ q.T), mean, q, lam


def test_levels_follow_the_schedule_and_the_churn_window():
  sched = get_schedule("linear", 1000)
  u = np.sqrt((1 - np.asarray(sched.alphas_cumprod, np.float64))
              / np.asarray(sched.alphas_cumprod, np.float64))
  lv = {k: np.asarray(v) for k, v in edm_levels(sched, 40, churn=20.0, s_tmin=0.05,
                                                  s_tmax=50.0).items()}
  assert np.all(np.diff(lv["sigma"]) <= 0) and lv["sigma_next"][-1] == 0
  np.testing.assert_allclose(lv["sigma"], u[lv["t"]], rtol=1e-5)
  np.testing.assert_allclose(lv["sigma_hat"], u[lv["t_hat"]], rtol=1e-5)
  assert lv["t"][0] == np.argmin(np.abs(u - 80.0)) and lv["t"][-1] == 0
  inside = (lv["sigma"] >= 0.05) & (lv["sigma"] <= 50.0)
  # gamma = min(20 / 40, sqrt 2 - 1): the raised level is the discrete level nearest sigma * (1 + gamma).
  want = np.argmin(np.abs(u[None] - (lv["sigma"] * (1 + np.sqrt(2) - 1))[:, None]), axis=1)
  assert np.all(lv["t_hat"][inside] == want[inside])
  assert np.all(lv["t_hat"][~inside] == lv["t"][~inside]) and (~inside).any()
  lv0 = edm_levels(sched, 40)
  assert np.array_equal(np.asarray(lv0["t_hat"]), np.asarray(lv0["t"]))


def test_heun_ode_matches_the_gaussian_flow_in_closed_form():
  # churn 0: the probability-flow ODE; for N(mu, V diag(lam) V^T) each eigen-coordinate of
  # x - mu scales as sqrt(lam + sigma^2), so x_0 - mu = V sqrt(lam / (lam + sigma_0^2)) V^T (x_T - mu).
  prior, mean, q, lam = _dense_prior()
  latents = jax.random.normal(jax.random.key(0), (3, 4, 4, 1))
  x0 = edm_sample(lambda x, t: prior.apply_fn(prior.params, x, t), latents, prior.schedule,
                  steps=200, churn=0.0, clip_denoised=False)
  s0 = float(edm_levels(prior.schedule, 200)["sigma"][0])
  start = np.asarray(latents, np.float64).reshape(3, -1) * s0 - mean.reshape(1, -1)
  want = (start @ q) * np.sqrt(lam / (lam + s0 ** 2)) @ q.T + mean.reshape(1, -1)
  got = np.asarray(x0, np.float64).reshape(3, -1)
  assert np.abs(got - want).max() < 2e-3 * np.abs(want).max()
  # a too-short chain is measurably off: the check can fail
  x_short = edm_sample(lambda x, t: prior.apply_fn(prior.params, x, t), latents, prior.schedule,
                       steps=3, churn=0.0, clip_denoised=False)
  assert np.abs(np.asarray(x_short).reshape(3, -1) - want).max() > 1e-2


def test_stochastic_samples_have_the_prior_moments():
  rng = np.random.default_rng(1)
  mean = rng.uniform(-0.4, 0.4, size=(8, 8, 1)).astype(np.float32)
  var = rng.uniform(0.02, 0.3, size=(8, 8, 1)).astype(np.float32)
  prior = gaussian_prior(mean, var)
  n = 512
  fn = jax.jit(lambda key: edm_sample(lambda x, t: prior.apply_fn(prior.params, x, t),
                                      jax.random.normal(jax.random.fold_in(key, 1), (n, 8, 8, 1)),
                                      prior.schedule, key=key, steps=200, churn=80.0,
                                      s_noise=1.0, clip_denoised=False))
  x = np.asarray(fn(jax.random.key(3)), np.float64)
  ratio = x.var(axis=0) / var
  # 64 pixels x 512 samples: about 0.8% sampling error; the churned chain's own bias shrinks with
  # the steps (measured: +6% at 48 steps, +1% at 200)
  assert abs(np.mean(ratio) - 1) < 0.03
  z = (x.mean(axis=0) - mean) / np.sqrt(var / n)
  assert np.abs(z).max() < 4.5
  # same key, same samples; another key, other samples
  np.testing.assert_array_equal(np.asarray(fn(jax.random.key(3))), x.astype(np.float32))
  assert np.abs(np.asarray(fn(jax.random.key(4))) - x).max() > 0.1


def test_vmap_over_images_equals_the_batch():
  prior, *_ = _dense_prior(2)
  lat = jax.random.normal(jax.random.key(5), (2, 4, 4, 1))
  keys = jax.random.split(jax.random.key(6), 2)
  one = lambda l, k: edm_sample(lambda x, t: prior.apply_fn(prior.params, x, t), l[None],
                                prior.schedule, key=k, steps=12, churn=10.0)[0]
  batched = jax.vmap(one)(lat, keys)
  looped = jnp.stack([one(lat[i], keys[i]) for i in range(2)])
  np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), atol=1e-5)


def test_bad_arguments_are_named():
  sched = get_schedule("linear", 1000)
  f = lambda x, t: x
  with pytest.raises(ConfigError, match="key"):
    edm_sample(f, jnp.zeros((1, 4, 4, 1)), sched, churn=1.0)
  with pytest.raises(ShapeError, match="latents"):
    edm_sample(f, jnp.zeros((4, 4, 1)), sched, churn=0.0)
  with pytest.raises(ConfigError, match="steps"):
    edm_levels(sched, 0)


def test_sample_grid_draws_with_edm():
  from jaxir.train.grids import sample_grid
  prior, *_ = _dense_prior(3)
  grid = lambda key, **kw: sample_grid(prior.apply_fn, prior.params, key, (2, 4, 4, 1), steps=8,
                                       **kw)
  a = np.asarray(grid(jax.random.key(0), sampler="edm", churn=20.0))
  assert a.shape == (2, 4, 4, 1) and np.abs(a).max() <= 1.0
  np.testing.assert_array_equal(a, np.asarray(grid(jax.random.key(0), sampler="edm", churn=20.0)))
  assert np.abs(a - np.asarray(grid(jax.random.key(0), sampler="edm", churn=0.0))).max() > 1e-3
  with pytest.raises(ConfigError, match="sampler"):
    grid(jax.random.key(0), sampler="heun")
