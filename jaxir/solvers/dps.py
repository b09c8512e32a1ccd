"""DPS: diffusion posterior sampling, the ancestral-sampling baseline.

Each respaced step t (from T-1 down to 0) runs the network once on x_t, forms
the clipped x0 estimate, the ancestral sample x' = mu(x_t, x0_hat) + sigma_t z
(learned variance for 2C-output models, as guided-diffusion's LEARNED_RANGE),
and the measurement step x_{t-1} = x' - scale grad_{x_t} ||y - A(x0_hat)||,
the gradient of the UNsquared residual norm through the network (one
`jax.vjp`).

References:
  Chung, Kim, Mccann, Klasky, Ye, "Diffusion Posterior Sampling for General
  Noisy Inverse Problems", ICLR 2023. Official code: DPS2022/diffusion-
  posterior-sampling (`guided_diffusion/gaussian_diffusion.py` p_sample_loop,
  `condition_methods.py` 'ps', `configs/*_config.yaml`).
  openai/guided-diffusion `gaussian_diffusion.py` (p_mean_variance, q_posterior).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import x0_from_eps
from jaxir.diffusion.respace import space_timesteps
from jaxir.errors import ConfigError, ShapeError
from jaxir.solvers.common import callable_module, check_measurement, model_single, preset

__all__ = ["DPSConfig", "DPSInfo", "DPSTables", "DPS_PRESETS", "dps_preset", "dps_tables",
           "dps_step", "dps_sample", "dps"]

_VARIANCES = ("auto", "learned_range", "fixed_large", "fixed_small")


@dataclasses.dataclass(frozen=True)
class DPSConfig:
  """DPS hyperparameters.

  Attributes:
    scale: step size on the residual-norm gradient (DPS configs: 0.3 for
      SR x4 and the deblurs, 0.5 for inpainting, 1.0 for phase retrieval).
    num_steps: respaced ancestral steps, `space_timesteps(T, [num_steps])`
      (DPS `diffusion_config.yaml`: 1000).
    sigma_y: measurement noise std the setting is meant for (DPS configs:
      0.05); documentation only, the 'ps' update does not use it.
    variance: "auto" (learned range for models with 2C output channels, as the
      DPS config `learned_range`; else guided-diffusion's default for models
      without learned sigma, "fixed_large"), or one of "learned_range",
      "fixed_large", "fixed_small".
  """
  scale: float = 1.0
  num_steps: int = 1000
  sigma_y: float = 0.05
  variance: str = "auto"

  def __post_init__(self):
    if self.num_steps < 2:
      raise ConfigError(f"DPS needs num_steps >= 2; got {self.num_steps}.")
    if self.variance not in _VARIANCES:
      raise ConfigError(f"unknown variance {self.variance!r}; choose from {_VARIANCES}.")


DPS_PRESETS: dict[str, DPSConfig] = {
    "sr4": DPSConfig(scale=0.3),               # configs/super_resolution_config.yaml
    "gaussian_deblur": DPSConfig(scale=0.3),   # configs/gaussian_deblur_config.yaml
    "motion_deblur": DPSConfig(scale=0.3),     # configs/motion_deblur_config.yaml
    "box_inpaint": DPSConfig(scale=0.5),       # configs/inpainting_config.yaml
    "inpaint": DPSConfig(scale=0.5),           # configs/inpainting_config.yaml
    "phase_retrieval": DPSConfig(scale=1.0),   # configs/phase_retrieval_config.yaml
}


def dps_preset(name: str, **overrides) -> DPSConfig:
  """A named preset (`DPS_PRESETS`), optionally with fields replaced."""
  return preset(DPS_PRESETS, name, "DPS", **overrides)


class DPSTables(NamedTuple):
  """Per-step tables of a respaced process, ascending time (index 0 is t = 0).

  All (S,) float32 except `t_model` (int32 original timesteps). `log_var_min`
  is guided-diffusion's `posterior_log_variance_clipped`, `log_var_max` the
  log of the respaced betas; `log_var_large` the FIXED_LARGE log variance.
  """
  t_model: jax.Array
  abar: jax.Array
  coef_x0: jax.Array
  coef_xt: jax.Array
  log_var_min: jax.Array
  log_var_max: jax.Array
  log_var_large: jax.Array


def dps_tables(schedule, timesteps) -> DPSTables:
  """Ancestral-sampling tables of `schedule` respaced to `timesteps`.

  Computed in float32 inside the trace (the schedule may be a tracer) with
  log-domain sums over each respaced segment, so small betas keep their
  relative accuracy (matches guided-diffusion's float64 tables cast to float32).

  Args:
    schedule: a `jaxir.diffusion.Schedule`.
    timesteps: the kept original timesteps (a set or sequence of ints).
  """
  ts = np.asarray(sorted(int(t) for t in timesteps), np.int64)
  T = schedule.betas.shape[0]
  if ts.size < 2 or ts[0] < 0 or ts[-1] >= T:
    raise ConfigError(f"need at least 2 timesteps in [0, {T}); got {ts.tolist()[:8]}.")
  starts = np.concatenate([[0], ts[:-1] + 1])
  L = int(np.max(ts - starts + 1))
  seg = starts[:, None] + np.arange(L)[None, :]
  seg_mask = seg <= ts[:, None]
  log_a = jnp.sum(jnp.where(seg_mask, jnp.log1p(-schedule.betas[np.minimum(seg, T - 1)]), 0.0),
                  axis=1)                                   # log(1 - beta') per step
  beta = -jnp.expm1(log_a)
  abar = schedule.alphas_cumprod[ts]
  one_m = jnp.where(abar < 0.5, 1.0 - abar, -jnp.expm1(jnp.cumsum(log_a)))
  abar_prev = jnp.concatenate([jnp.ones((1,)), abar[:-1]])
  one_m_prev = jnp.concatenate([jnp.zeros((1,)), one_m[:-1]])
  post_var = beta * one_m_prev / one_m
  return DPSTables(
      t_model=jnp.asarray(ts, jnp.int32), abar=abar,
      coef_x0=beta * jnp.sqrt(abar_prev) / one_m,
      coef_xt=one_m_prev * jnp.exp(0.5 * log_a) / one_m,
      log_var_min=jnp.log(jnp.concatenate([post_var[1:2], post_var[1:]])),
      log_var_max=jnp.log(beta),
      log_var_large=jnp.log(jnp.concatenate([post_var[1:2], beta[1:]])))


def _variance_mode(config: DPSConfig, out_channels: int, channels: int) -> str:
  if config.variance != "auto":
    if config.variance == "learned_range" and out_channels != 2 * channels:
      raise ConfigError(f"variance 'learned_range' needs a model with {2 * channels} output "
                        f"channels; this one has {out_channels}. Use 'fixed_large'.")
    return config.variance
  return "learned_range" if out_channels == 2 * channels else "fixed_large"


def dps_step(x, i, y, operator, prior, tables: DPSTables, noise, *, scale, variance: str):
  """One DPS step at respaced index i (i = 0 is the last step, t = 0).

  Args:
    x: (H, W, C) current x_t.
    i: respaced index (int or int32 scalar).
    y: one measurement.
    operator: a jaxir operator.
    prior: a `jaxir.priors.Prior`.
    tables: `dps_tables(...)`.
    noise: (H, W, C) standard normal draw (not added at i = 0).
    scale: step size on the residual-norm gradient.
    variance: "learned_range", "fixed_large" or "fixed_small" (static).

  Returns:
    (x_next, x0_hat, norm): the next state, the clipped x0 estimate and
    ||y - A(x0_hat)||.
  """
  C = x.shape[-1]

  def f(x):
    out = model_single(prior, x, tables.t_model[i])
    x0 = jnp.clip(x0_from_eps(x, out[..., :C], tables.abar[i]), -1.0, 1.0)
    r = y - operator.A(x0)
    return jnp.sqrt(jnp.sum(jnp.real(r * jnp.conj(r)))), (x0, out)

  norm, vjp, (x0, out) = jax.vjp(f, x, has_aux=True)
  (grad,) = vjp(jnp.ones_like(norm))
  mean = tables.coef_x0[i] * x0 + tables.coef_xt[i] * x
  if variance == "learned_range":
    frac = (out[..., C:] + 1.0) / 2.0
    log_var = frac * tables.log_var_max[i] + (1.0 - frac) * tables.log_var_min[i]
  elif variance == "fixed_large":
    log_var = tables.log_var_large[i]
  else:
    log_var = tables.log_var_min[i]
  sample = mean + jnp.where(i != 0, jnp.exp(0.5 * log_var), 0.0) * noise
  return sample - scale * grad, x0, norm


class DPSInfo(NamedTuple):
  """Diagnostics of a DPS run.

  Attributes:
    nfe: network forward evaluations (each also back-propagated once).
    residual: (S,) ||y - A(x0_hat)|| at each step, in sampling order.
    x0_hat: (S, H, W, C) clipped x0 estimates per step, or None (only
      `dps_sample(..., trajectory=True)` records them).
    x: (S, H, W, C) state after each step, or None (as `x0_hat`).
  """
  nfe: jax.Array
  residual: jax.Array
  x0_hat: jax.Array | None = None
  x: jax.Array | None = None


def _run(x_T, noise_src, y, operator, prior, config: DPSConfig, from_keys: bool,
         trajectory: bool = False):
  check_measurement(y, operator, prior=prior)
  T = prior.schedule.betas.shape[0]
  if config.num_steps > T:
    raise ConfigError(f"num_steps={config.num_steps} exceeds the prior's {T} timesteps.")
  tables = dps_tables(prior.schedule, space_timesteps(T, [config.num_steps]))
  S = tables.t_model.shape[0]
  out_c = jax.eval_shape(lambda x: model_single(prior, x, 0), x_T).shape[-1]
  variance = _variance_mode(config, out_c, x_T.shape[-1])

  def body(x, inp):
    i, src = inp
    z = jax.random.normal(src, x.shape, x.dtype) if from_keys else src
    x, x0, norm = dps_step(x, i, y, operator, prior, tables, z, scale=config.scale,
                           variance=variance)
    return x, ((norm, x0, x) if trajectory else (norm,))

  x, outs = jax.lax.scan(body, x_T, (jnp.arange(S - 1, -1, -1), noise_src))
  return x, DPSInfo(jnp.asarray(S, jnp.int32), *outs)


def dps_sample(x_T, noise, y, operator, prior, config: DPSConfig = DPSConfig(), *,
               trajectory: bool = False):
  """DPS from a given start and given ancestral draws (reproducible run).

  Args:
    x_T: (H, W, C) start at the first respaced step.
    noise: (S, H, W, C) ancestral draws in sampling order (row 0 for the
      first, noisiest step; the last row is drawn but not added).
    y, operator, prior, config: as for `dps`.
    trajectory: also record every step's x0_hat and state in `info` (static).

  Returns:
    (x, info) as `dps`.
  """
  S = len(space_timesteps(prior.schedule.betas.shape[0], [config.num_steps]))
  if noise.shape != (S,) + x_T.shape:
    raise ShapeError(f"noise has shape {noise.shape}; expected {(S,) + x_T.shape} "
                     "(one draw per step).")
  return _run(x_T, noise, y, operator, prior, config, from_keys=False, trajectory=trajectory)


def dps(key, y, operator, prior, config: DPSConfig = DPSConfig()):
  """Restore one image with DPS (ancestral sampling with measurement gradients).

  Pure and jit-able (`config` static); vmap over (key, y) for batches.

  Args:
    key: `jax.random` key (start and one ancestral draw per step).
    y: one measurement, shape `operator.out_shape`.
    operator: a jaxir operator (linear or not).
    prior: a `jaxir.priors.Prior`.
    config: `DPSConfig` (see `DPS_PRESETS`).

  Returns:
    (x, info): the (H, W, C) sample and a `DPSInfo`.
  """
  k_start, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_start, tuple(operator.in_shape), jnp.float32)
  S = len(space_timesteps(prior.schedule.betas.shape[0], [config.num_steps]))
  return _run(x_T, jax.random.split(k_steps, S), y, operator, prior, config, from_keys=True)


callable_module(__name__, dps)
