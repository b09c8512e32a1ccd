"""Diffusion core against guided-diffusion (the upstream PyTorch code)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.respace import space_timesteps as gd_space_timesteps

from references import rel_err
import jaxir.diffusion as D
from jaxir.errors import ConfigError


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("T", [1000, 250])
def test_beta_schedules_match_upstream(name, T):
  np.testing.assert_array_equal(D.beta_schedule(name, T), gd.get_named_beta_schedule(name, T))
  s = D.get_schedule(name, T)
  ref = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule(name, T),
                             model_mean_type=gd.ModelMeanType.EPSILON,
                             model_var_type=gd.ModelVarType.FIXED_LARGE,
                             loss_type=gd.LossType.MSE)
  for ours, theirs in [(s.alphas_cumprod, ref.alphas_cumprod),
                       (s.alphas_cumprod_prev, ref.alphas_cumprod_prev),
                       (s.sqrt_recip_alphas_cumprod, ref.sqrt_recip_alphas_cumprod),
                       (s.sqrt_recipm1_alphas_cumprod, ref.sqrt_recipm1_alphas_cumprod)]:
    np.testing.assert_array_equal(np.asarray(ours), theirs.astype(np.float32))


@pytest.mark.parametrize("T,spec", [(1000, "ddim10"), (1000, "ddim50"), (1000, "ddim250"),
                                    (1000, "10"), (1000, "10,15,20"), (1000, [7, 3]),
                                    (400, "20"), (356, 20), (2, 2), (1, 1), (250, "ddim25"),
                                    (100, "34,33,33")])
def test_space_timesteps_matches_upstream(T, spec):
  spec_up = [spec] if isinstance(spec, int) else spec
  assert D.space_timesteps(T, spec_up) == gd_space_timesteps(T, spec_up)


def test_space_timesteps_errors():
  with pytest.raises(ConfigError, match="integer stride"):
    D.space_timesteps(10, "ddim6")
  with pytest.raises(ConfigError, match="cannot divide"):
    D.space_timesteps(10, "20")


def _eps_np(x, t, learned_sigma):
  """A fixed nonlinear 'model' evaluated identically in torch and jax."""
  c = 0.5 + t.reshape(-1, 1, 1, 1) / 1000.0
  eps = 1.3 * np.tanh(c * x) + 0.1 * np.sin(t.reshape(-1, 1, 1, 1) / 100.0)
  return np.concatenate([eps, 0.3 * x], axis=-1) if learned_sigma else eps


def _eps_jax(x, t, learned_sigma):
  c = 0.5 + t.reshape(-1, 1, 1, 1) / 1000.0
  eps = 1.3 * jnp.tanh(c * x) + 0.1 * jnp.sin(t.reshape(-1, 1, 1, 1) / 100.0)
  return jnp.concatenate([eps, 0.3 * x], axis=-1) if learned_sigma else eps


class _TorchModel(torch.nn.Module):
  """The same function as a torch 'model' in NCHW, as guided-diffusion calls it."""

  def __init__(self, learned_sigma):
    super().__init__()
    self.learned_sigma = learned_sigma
    self.dummy = torch.nn.Parameter(torch.zeros(()))  # the sampler asks for a device

  def forward(self, x, t, **kw):
    c = 0.5 + t.view(-1, 1, 1, 1).float() / 1000.0
    eps = 1.3 * torch.tanh(c * x) + 0.1 * torch.sin(t.view(-1, 1, 1, 1).float() / 100.0)
    return torch.cat([eps, 0.3 * x], 1) if self.learned_sigma else eps


def _spaced(spec, learned_sigma, schedule="linear"):
  return SpacedDiffusion(
      use_timesteps=gd_space_timesteps(1000, spec),
      betas=gd.get_named_beta_schedule(schedule, 1000),
      model_mean_type=gd.ModelMeanType.EPSILON,
      model_var_type=gd.ModelVarType.LEARNED_RANGE if learned_sigma else gd.ModelVarType.FIXED_LARGE,
      loss_type=gd.LossType.MSE)


@pytest.mark.parametrize("learned_sigma", [False, True])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("spec,schedule", [("ddim10", "linear"), ("25", "cosine")])
def test_ddim_sample_matches_upstream(learned_sigma, clip, spec, schedule):
  x_T = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
  diff = _spaced(spec, learned_sigma, schedule)
  with torch.no_grad():
    ref = diff.ddim_sample_loop(_TorchModel(learned_sigma), x_T.shape, noise=torch.from_numpy(x_T),
                                clip_denoised=clip, eta=0.0).numpy()
  ours = D.ddim_sample(lambda x, t: _eps_jax(x, t, learned_sigma), jnp.asarray(x_T.transpose(0, 2, 3, 1)),
                       D.space_timesteps(1000, spec), clip_denoised=clip, schedule=schedule)
  assert rel_err(np.asarray(ours).transpose(0, 3, 1, 2), ref) < 1e-5


def test_ddim_step_with_eta_matches_upstream():
  """One stochastic DDIM step, with the upstream noise draw fed in."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
  diff = _spaced("ddim10", False)
  i = 5  # respaced index
  t = torch.full((2,), i, dtype=torch.long)
  torch.manual_seed(3)
  out = diff.ddim_sample(_TorchModel(False), torch.from_numpy(x), t, clip_denoised=True, eta=0.7)
  torch.manual_seed(3)
  noise = torch.randn_like(torch.from_numpy(x)).numpy()
  t_model, ac, ac_prev = D.ddim_tables(D.space_timesteps(1000, "ddim10"))
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  eps = _eps_jax(xj, jnp.full((2,), t_model[i]), False)
  x_prev, x0 = D.ddim_step(xj, eps, ac[i], ac_prev[i], eta=0.7,
                           noise=jnp.asarray(noise.transpose(0, 2, 3, 1)), clip=True)
  assert rel_err(np.asarray(x_prev).transpose(0, 3, 1, 2), out["sample"].numpy()) < 1e-5
  assert rel_err(np.asarray(x0).transpose(0, 3, 1, 2), out["pred_xstart"].numpy()) < 1e-5


def test_q_sample_and_eps_roundtrip_match_upstream():
  rng = np.random.default_rng(2)
  x0 = rng.uniform(-1, 1, (3, 3, 4, 4)).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  base = gd.GaussianDiffusion(betas=gd.get_named_beta_schedule("linear", 1000),
                              model_mean_type=gd.ModelMeanType.EPSILON,
                              model_var_type=gd.ModelVarType.FIXED_LARGE, loss_type=gd.LossType.MSE)
  t = np.array([0, 500, 999])
  ref = base.q_sample(torch.from_numpy(x0), torch.from_numpy(t), noise=torch.from_numpy(noise)).numpy()
  s = D.get_schedule()
  abar = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
  xt = D.q_sample(jnp.asarray(x0), abar, jnp.asarray(noise))
  assert rel_err(xt, ref) < 1e-6
  assert rel_err(D.x0_from_eps(xt, jnp.asarray(noise), abar), x0) < 1e-4
  assert rel_err(D.eps_from_x0(xt, jnp.asarray(x0), abar), noise) < 1e-3


def test_ddim_sample_is_deterministic_given_key_and_jits():
  x_T = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  f = jax.jit(lambda x, k: D.ddim_sample(lambda x, t: _eps_jax(x, t, False), x,
                                         D.space_timesteps(1000, "ddim10"), eta=1.0, key=k))
  a, b = f(x_T, jax.random.key(1)), f(x_T, jax.random.key(1))
  c = f(x_T, jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-3
  with pytest.raises(ConfigError, match="key"):
    D.ddim_sample(lambda x, t: x, x_T, [0, 10], eta=1.0)


def test_ddim_loop_mask_skips_padding_steps():
  """ddim_loop over padded tables with a mask equals ddim_sample over the real steps."""
  sched = D.get_schedule("linear", 1000)
  model = lambda x, t: jnp.tanh(x) * (t[:, None, None, None] / 1000.0 + 0.1)
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
  ts = [0, 300, 600]
  ref = D.ddim_sample(model, x_T, ts, schedule=sched)
  t_model, ac, ac_prev = D.ddim_tables(ts, schedule=sched)
  pad = lambda a, v: jnp.concatenate([jnp.asarray(a)[::-1], jnp.full((2,), v, jnp.asarray(a).dtype)])
  mask = jnp.array([True] * 3 + [False] * 2)
  out = jax.jit(lambda m: D.ddim_loop(model, x_T, pad(t_model, 5), pad(ac, 0.5), pad(ac_prev, 0.9),
                                      mask=m))(mask)
  np.testing.assert_allclose(out, ref, atol=1e-6)
  wrong = D.ddim_loop(model, x_T, pad(t_model, 5), pad(ac, 0.5), pad(ac_prev, 0.9))
  assert float(jnp.max(jnp.abs(wrong - ref))) > 1e-3  # the mask matters


def test_ddim_invert_is_exact_for_x_independent_eps_and_converges_with_steps():
  # With eps independent of x every DDIM step is affine with the same eps, so sampling
  # undoes the inversion exactly; with a Gaussian prior's exact eps (which depends on x)
  # the round trip error shrinks as the steps shrink.
  from jaxir.priors.analytic import gaussian_prior
  x0 = jnp.tanh(jax.random.normal(jax.random.key(0), (2, 6, 6, 1)))
  c = jax.random.normal(jax.random.key(1), (2, 6, 6, 1))
  const = lambda x, t: c
  ts = D.space_timesteps(1000, "ddim10")
  xT = D.ddim_invert(const, x0, ts)
  np.testing.assert_allclose(D.ddim_sample(const, xT, ts, clip_denoised=False), x0, atol=2e-5)
  assert float(jnp.abs(xT - x0).max()) > 0.5  # it did move
  ii, jj = np.meshgrid(np.arange(6), np.arange(6), indexing="ij")
  p = np.stack([ii.ravel(), jj.ravel()], 1)
  cov = 0.2 * np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 4.0) + 1e-3 * np.eye(36)
  prior = gaussian_prior(np.zeros((6, 6, 1), np.float32), cov)
  errs = []
  for n in (5, 50):
    ts = D.space_timesteps(1000, f"ddim{n}")
    xT = D.ddim_invert(prior.model, x0, ts, schedule=prior.schedule)
    back = D.ddim_sample(prior.model, xT, ts, clip_denoised=False, schedule=prior.schedule)
    errs.append(float(jnp.linalg.norm(back - x0) / jnp.linalg.norm(x0)))
  assert errs[1] < 0.5 * errs[0], errs
