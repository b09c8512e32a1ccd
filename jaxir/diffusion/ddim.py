"""The shared DDIM step and the DDIM sampler, matched to guided-diffusion.

Every sampler in jaxir calls `ddim_step`; data consistency enters as a map on
x0_hat, and DeqIR vmaps the step over all timesteps.

References:
  Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12.
  openai/guided-diffusion `gaussian_diffusion.py` (ddim_sample, p_mean_variance).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.schedule import beta_schedule, respaced_alphas_cumprod
from jaxir.errors import ConfigError, ShapeError

__all__ = ["q_sample", "x0_from_eps", "eps_from_x0", "split_eps", "ddim_step",
           "ddim_sample", "ddim_tables"]


def q_sample(x0, abar_t, noise):
  """Forward diffusion x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  return jnp.sqrt(abar_t) * x0 + jnp.sqrt(1.0 - abar_t) * noise


def x0_from_eps(x_t, eps, abar_t):
  """Tweedie/x0 estimate sqrt(1/abar) x_t - sqrt(1/abar - 1) eps."""
  return jnp.sqrt(1.0 / abar_t) * x_t - jnp.sqrt(1.0 / abar_t - 1.0) * eps


def eps_from_x0(x_t, x0, abar_t):
  """The eps implied by x_t and an x0 estimate (inverse of `x0_from_eps`)."""
  return (jnp.sqrt(1.0 / abar_t) * x_t - x0) / jnp.sqrt(1.0 / abar_t - 1.0)


def split_eps(model_out, channels: int):
  """eps part of a raw model output: the first `channels` channels.

  Models with learned sigma output 2*channels (eps, variance interpolation).
  """
  c = model_out.shape[-1]
  if c not in (channels, 2 * channels):
    raise ShapeError(f"model output has {c} channels; expected {channels} (eps) or "
                     f"{2 * channels} (eps and learned sigma) for {channels}-channel images.")
  return model_out[..., :channels]


def ddim_step(x_t, eps, abar_t, abar_prev, *, eta=0.0, noise=None, clip=True):
  """One DDIM update from abar_t to abar_prev.

  Args:
    x_t: (..., H, W, C) current state.
    eps: predicted noise, same shape.
    abar_t, abar_prev: scalars (or broadcastable arrays), alphas_cumprod at the
      current and next (less noisy) step; abar_prev = 1 at the last step.
    eta: DDIM stochasticity (0 deterministic, 1 DDPM-like).
    noise: standard normal draw of x_t's shape; needed when eta > 0.
    clip: clip x0_hat to [-1, 1] and recompute eps from it (guided-diffusion's
      `clip_denoised`).

  Returns:
    (x_prev, x0_hat).
  """
  x0 = x0_from_eps(x_t, eps, abar_t)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  eps = eps_from_x0(x_t, x0, abar_t)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * jnp.sqrt(1.0 - abar_t / abar_prev)
  x_prev = x0 * jnp.sqrt(abar_prev) + jnp.sqrt(1.0 - abar_prev - sigma ** 2) * eps
  if noise is not None:
    x_prev = x_prev + sigma * noise
  return x_prev, x0


def ddim_tables(timesteps, *, num_timesteps: int = 1000, schedule: str = "linear"):
  """Static tables of a respaced DDIM chain, as guided-diffusion's SpacedDiffusion.

  Returns:
    (t_model, abar, abar_prev): int32 (S,) original timesteps given to the model,
    float32 (S,) respaced alphas_cumprod and its predecessor (1 before the first),
    all in ascending time order.
  """
  ts = sorted(int(t) for t in timesteps)
  if not ts or ts[0] < 0 or ts[-1] >= num_timesteps or len(set(ts)) != len(ts):
    raise ConfigError(f"timesteps must be distinct integers in [0, {num_timesteps}); got {ts[:8]}...")
  base = np.cumprod(1.0 - beta_schedule(schedule, num_timesteps))
  ac = respaced_alphas_cumprod(base, ts)
  prev = np.append(1.0, ac[:-1])
  return (np.asarray(ts, np.int32), ac.astype(np.float32), prev.astype(np.float32))


def ddim_sample(model_fn: Callable, x_T, timesteps, *, eta: float = 0.0,
                clip_denoised: bool = True, key=None, num_timesteps: int = 1000,
                schedule: str = "linear"):
  """Run a respaced DDIM chain from x_T down to x_0 in one `lax.scan`.

  Args:
    model_fn: `model_fn(x, t)` with x (N, H, W, C) and t int32 (N,) original
      timesteps; returns the raw model output (C or 2C channels).
    x_T: (N, H, W, C) starting noise.
    timesteps: the kept original timesteps (e.g. `space_timesteps(1000, "ddim10")`).
    eta: DDIM eta; eta > 0 needs `key`.
    clip_denoised: clip x0 to [-1, 1] at every step.
    key: `jax.random` key for the eta > 0 noise (one draw per step).
    num_timesteps, schedule: the original process.

  Returns:
    (N, H, W, C) sample x_0.
  """
  if x_T.ndim != 4:
    raise ShapeError(f"x_T has shape {x_T.shape}; expected (N, H, W, C).")
  if eta != 0.0 and key is None:
    raise ConfigError("ddim_sample with eta > 0 draws noise: pass key=jax.random.key(...).")
  t_model, ac, ac_prev = ddim_tables(timesteps, num_timesteps=num_timesteps, schedule=schedule)
  n = x_T.shape[0]
  keys = jax.random.split(key if key is not None else jax.random.key(0), len(t_model))
  xs = (t_model[::-1], ac[::-1], ac_prev[::-1], keys[::-1])

  def body(x, inp):
    t, a, a_prev, k = inp
    eps = split_eps(model_fn(x, jnp.full((n,), t, jnp.int32)), x.shape[-1])
    noise = jax.random.normal(k, x.shape, x.dtype) if eta != 0.0 else None
    x, _ = ddim_step(x, eps, a, a_prev, eta=eta, noise=noise, clip=clip_denoised)
    return x, None

  x, _ = jax.lax.scan(body, x_T, xs)
  return x
