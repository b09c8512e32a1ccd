"""DPS against the official sampler's recorded run and guided-diffusion's tables.

References used here, none of them the code under test:
  * `../shared/fixtures/dps/dps_sr4.npz`: the official DPS 'ps' sampler run
    step by step with the upstream `adm_tiny_a` U-Net and recorded noise draws;
  * guided-diffusion's `SpacedDiffusion` (float64 tables, `p_mean_variance`)
    with a toy model written in torch.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

from references import FIXTURES, nhwc, rel_err
from jaxir.diffusion import get_schedule
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.inpaint import Inpaint
from jaxir.operators.superres import BicubicSR
from jaxir.priors import make_prior
from jaxir.priors.analytic import gaussian_prior
from jaxir.solvers.dps import (DPS_PRESETS, DPSConfig, dps, dps_sample, dps_step,
                               dps_tables)

FIX = str(FIXTURES)
H = 8


def _upstream(n_steps, var_type):
  return SpacedDiffusion(space_timesteps(1000, [n_steps]),
                         betas=gd.get_named_beta_schedule("linear", 1000),
                         model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=var_type,
                         loss_type=gd.LossType.MSE)


def test_fixture_step_by_step():
  from jaxir.models import from_torch
  with open(f"{FIX}/adm/adm_tiny_a.json") as f:
    cfg = json.load(f)
  model, params = from_torch(f"{FIX}/adm/adm_tiny_a.pt", "adm", cfg)
  prior = make_prior(lambda p, x, t: model.apply(p, x, t), params)
  d = np.load(f"{FIX}/dps/dps_sr4.npz")
  op = BicubicSR((32, 32, 3), 4)
  config = DPSConfig(scale=float(d["scale"]), num_steps=len(d["timesteps"]),
                     sigma_y=float(d["sigma_y"]))
  np.testing.assert_array_equal(sorted(space_timesteps(1000, [config.num_steps]))[::-1],
                                d["timesteps"])
  run = jax.jit(functools.partial(dps_sample, operator=op, prior=prior, config=config,
                                  trajectory=True))
  x, info = run(nhwc(d["x_start"][0]), nhwc(d["noise"][:, 0]), y=nhwc(d["y"][0]))
  for j in range(config.num_steps):
    # x0_hat = x_t / sqrt(abar) - ...: at t = 999, 1/sqrt(abar) = 156 magnifies rounding.
    assert np.max(np.abs(np.asarray(info.x0_hat[j]) - nhwc(d["x0_hat"][j, 0]))) < 1e-4, j
    assert rel_err(info.x[j], nhwc(d["x_after"][j, 0])) < 1e-5, j
  assert rel_err(x, nhwc(d["final"][0])) < 1e-5
  assert int(info.nfe) == 10 and info.residual.shape == (10,)


@pytest.mark.parametrize("n_steps", [1000, 50, 10])
def test_tables_match_guided_diffusion(n_steps):
  ref = _upstream(n_steps, gd.ModelVarType.LEARNED_RANGE)
  tab = dps_tables(get_schedule(), space_timesteps(1000, [n_steps]))
  post_var = ref.posterior_variance
  pairs = [(tab.t_model, np.asarray(ref.timestep_map)),
           (tab.abar, ref.alphas_cumprod), (tab.coef_x0, ref.posterior_mean_coef1),
           (tab.coef_xt, ref.posterior_mean_coef2),
           (tab.log_var_min, ref.posterior_log_variance_clipped),
           (tab.log_var_max, np.log(ref.betas)),
           (tab.log_var_large, np.log(np.append(post_var[1], ref.betas[1:])))]
  for ours, theirs in pairs:
    assert rel_err(ours, theirs.astype(np.float32)) < 5e-6


def _toy_np(x, t, learned):
  eps = 0.8 * np.tanh(x) + 1e-3 * t.reshape(-1, 1, 1, 1)
  return np.concatenate([eps, np.tanh(0.5 * x)], -1) if learned else eps


def _toy_jax(p, x, t, learned):
  eps = 0.8 * jnp.tanh(x) + 1e-3 * t.reshape(-1, 1, 1, 1)
  return jnp.concatenate([eps, jnp.tanh(0.5 * x)], -1) if learned else eps


@pytest.mark.parametrize("variance", ["learned_range", "fixed_large", "fixed_small"])
def test_ancestral_step_matches_guided_diffusion(variance):
  """With scale 0, a DPS step is guided-diffusion's ancestral step (mean + sigma z)."""
  learned = variance == "learned_range"
  var_type = {"learned_range": gd.ModelVarType.LEARNED_RANGE,
              "fixed_large": gd.ModelVarType.FIXED_LARGE,
              "fixed_small": gd.ModelVarType.FIXED_SMALL}[variance]
  ref = _upstream(25, var_type)
  prior = make_prior(functools.partial(_toy_jax, learned=learned), {})
  op = Inpaint((H, H, 3), np.ones((H, H), np.float32))
  tab = dps_tables(prior.schedule, space_timesteps(1000, [25]))
  step = jax.jit(functools.partial(dps_step, operator=op, prior=prior, tables=tab, scale=0.0,
                                   variance=variance))
  rng = np.random.default_rng(0)

  def torch_model(x, t):
    out = _toy_np(x.permute(0, 2, 3, 1).numpy(), t.numpy().astype(np.float64), learned)
    return torch.from_numpy(out.astype(np.float32)).permute(0, 3, 1, 2)

  for i in (24, 12, 1, 0):
    x = rng.standard_normal((H, H, 3)).astype(np.float32)
    z = rng.standard_normal((H, H, 3)).astype(np.float32)
    out = ref.p_mean_variance(torch_model, torch.from_numpy(x.transpose(2, 0, 1)[None]),
                              torch.tensor([i]), clip_denoised=True)
    mean, log_var = out["mean"][0].numpy(), out["log_variance"][0].numpy()
    want = mean + (np.exp(0.5 * log_var) * z.transpose(2, 0, 1) if i > 0 else 0.0)
    got, x0, _ = step(x, i, jnp.asarray(x), noise=z)
    assert rel_err(x0, out["pred_xstart"][0].numpy().transpose(1, 2, 0)) < 1e-5, i
    assert rel_err(got, want.transpose(1, 2, 0)) < 1e-5, i


@pytest.fixture(scope="module")
def small():
  prior = gaussian_prior(np.full((H, H, 1), 0.2, np.float32), 0.1)
  mask = np.ones((H, H, 1), np.float32)
  mask[2:6, 2:6] = 0
  op = Inpaint((H, H, 1), mask)
  return prior, op, op.A(jnp.full((H, H, 1), 0.3))


def test_same_key_same_result_and_vmap_equals_loop(small):
  prior, op, y = small
  cfg = DPSConfig(scale=0.5, num_steps=20)
  solve = jax.jit(functools.partial(dps, operator=op, prior=prior, config=cfg))
  keys = jax.random.split(jax.random.key(0), 2)
  x0, info0 = solve(keys[0], y)
  np.testing.assert_array_equal(x0, solve(keys[0], y)[0])
  x1, _ = solve(keys[1], y)
  assert float(jnp.max(jnp.abs(x1 - x0))) > 1e-2
  assert int(info0.nfe) == 20 and info0.x0_hat is None
  xb, _ = jax.jit(jax.vmap(functools.partial(dps, operator=op, prior=prior, config=cfg),
                           in_axes=(0, None)))(keys, y)
  np.testing.assert_allclose(xb[0], x0, atol=1e-5)
  np.testing.assert_allclose(xb[1], x1, atol=1e-5)


def test_presets_and_bad_inputs(small):
  assert {k: v.scale for k, v in DPS_PRESETS.items()} == {
      "sr4": 0.3, "gaussian_deblur": 0.3, "motion_deblur": 0.3, "box_inpaint": 0.5,
      "inpaint": 0.5, "phase_retrieval": 1.0}
  assert DPSConfig().num_steps == 1000
  prior, op, y = small
  with pytest.raises(ShapeError, match="operator maps"):
    dps(jax.random.key(0), jnp.zeros((4, 4, 1)), op, prior, DPSConfig(num_steps=5))
  with pytest.raises(ConfigError, match="learned_range"):
    dps(jax.random.key(0), y, op, prior, DPSConfig(num_steps=5, variance="learned_range"))
  with pytest.raises(ShapeError, match="one draw per step"):
    dps_sample(jnp.zeros((H, H, 1)), jnp.zeros((4, H, H, 1)), y, op, prior,
               DPSConfig(num_steps=5))
  with pytest.raises(ConfigError, match="num_steps"):
    DPSConfig(num_steps=1)
  with pytest.raises(ConfigError, match="unknown variance"):
    DPSConfig(variance="learned")
