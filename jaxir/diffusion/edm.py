"""EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for a discrete eps model.

The chain runs in the variance-exploding form x = x_t / sqrt(abar_t), noise level
sigma_t = sqrt((1 - abar_t) / abar_t), with the denoiser D(x, sigma) = x - sigma eps(x
/ sqrt(1 + sigma^2), t): exactly how the EDM code wraps a guided-diffusion (ADM)
network (`iDDPMPrecond`). Noise levels are the EDM discretization rounded to the
model's own discrete levels, as its `round_sigma`. Each step first raises the noise
level by a factor 1 + gamma with fresh noise ("churn"), then takes a Heun step down
(an Euler step for the last one): 2 * steps - 1 network calls in all.

The noise injected along the way corrects part of what an imperfect network gets
wrong on a deterministic path; on the shipped mnist32 it draws more recognisable
digits than DDIM or ancestral sampling at the same number of network calls
(`checkpoints/README.md`).

References:
  Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based
  Generative Models", NeurIPS 2022, Algorithm 2 and Table 5.
  NVlabs/edm `generate.py` (`edm_sampler`), `training/networks.py` (`iDDPMPrecond`).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import split_eps
from jaxir.diffusion.schedule import Schedule
from jaxir.errors import ConfigError, ShapeError

__all__ = ["edm_levels", "edm_sample"]


def _round(u, sigma):
  """Index of the discrete level in u (ascending, (T,)) nearest to each sigma."""
  return jnp.argmin(jnp.abs(u[None, :] - jnp.reshape(sigma, (-1, 1))), axis=1).astype(jnp.int32)


def edm_levels(schedule: Schedule, steps: int, *, churn: float = 0.0, s_tmin: float = 0.0,
               s_tmax: float = float("inf"), sigma_min: float = 0.002,
               sigma_max: float = 80.0, rho: float = 7.0):
  """The noise levels of an EDM chain on a discrete schedule.

  Args:
    schedule: the model's `Schedule` (its alphas_cumprod define the levels).
    steps: number of steps N (>= 1).
    churn, s_tmin, s_tmax: S_churn and its noise-level window: gamma =
      min(churn / N, sqrt(2) - 1) where s_tmin <= sigma_i <= s_tmax, else 0.
    sigma_min, sigma_max, rho: the EDM discretization (clamped to the schedule's range).

  Returns:
    dict of arrays, each (N,): "t" and "sigma" (the step's level and its model
    timestep, highest first), "t_hat" and "sigma_hat" (after the churn),
    "sigma_next" (the next level; 0 after the last step) and "t_next".
  """
  if steps < 1:
    raise ConfigError(f"steps must be >= 1; got {steps}.")
  if churn < 0 or rho <= 0 or not 0 < sigma_min < sigma_max:
    raise ConfigError("need churn >= 0, rho > 0 and 0 < sigma_min < sigma_max; got "
                      f"churn={churn}, rho={rho}, sigma_min={sigma_min}, sigma_max={sigma_max}.")
  abar = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  u = jnp.sqrt((1.0 - abar) / abar)  # ascending in t
  lo = jnp.maximum(sigma_min, u[0])
  hi = jnp.minimum(sigma_max, u[-1])
  i = jnp.arange(steps, dtype=jnp.float32)
  frac = i / max(steps - 1, 1)
  raw = (hi ** (1 / rho) + frac * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
  t = _round(u, raw)
  sigma = u[t]
  gamma = jnp.where((sigma >= s_tmin) & (sigma <= s_tmax),
                    min(churn / steps, float(np.sqrt(2.0) - 1.0)), 0.0)
  t_hat = _round(u, sigma * (1.0 + gamma))
  sigma_next = jnp.concatenate([sigma[1:], jnp.zeros((1,), jnp.float32)])
  t_next = jnp.concatenate([t[1:], jnp.zeros((1,), jnp.int32)])
  return {"t": t, "sigma": sigma, "t_hat": t_hat, "sigma_hat": u[t_hat],
          "sigma_next": sigma_next, "t_next": t_next}


def edm_sample(model_fn: Callable, latents, schedule: Schedule, *, key=None, steps: int = 128,
               churn: float = 80.0, s_tmin: float = 0.05, s_tmax: float = 50.0,
               s_noise: float = 1.003, sigma_min: float = 0.002, sigma_max: float = 80.0,
               rho: float = 7.0, clip_denoised: bool = True):
  """Sample with EDM's stochastic Heun sampler from a discrete eps model.

  Defaults are Karras et al.'s for guided-diffusion's ImageNet-64 network (Table 5:
  S_churn 80, S_tmin 0.05, S_tmax 50, S_noise 1.003; sigma 0.002-80, rho 7), with 128
  steps (255 network calls) instead of their 256. `churn=0` is the deterministic
  Heun solver of the probability-flow ODE (Algorithm 1).

  Args:
    model_fn: `model_fn(x, t)` with x (N, H, W, C) and t int32 (N,) timesteps;
      returns the raw model output (eps, or eps and learned sigma).
    latents: (N, H, W, C) standard normal draw; the chain starts at
      latents * sigma_0.
    schedule: the model's `Schedule` (e.g. `prior.schedule`).
    key: `jax.random` key of the churn noise (needed when churn > 0).
    steps, churn, s_tmin, s_tmax, s_noise, sigma_min, sigma_max, rho: as above.
    clip_denoised: clip the denoiser's x0 estimate to [-1, 1] (as jaxir's DDIM
      sampler does; the EDM code does not clip).

  Returns:
    (N, H, W, C) float32 samples (not clipped beyond the denoiser's clip).
  """
  if jnp.ndim(latents) != 4:
    raise ShapeError(f"latents has shape {jnp.shape(latents)}; expected (N, H, W, C).")
  if churn > 0 and key is None:
    raise ConfigError("edm_sample with churn > 0 draws noise: pass key=jax.random.key(...).")
  lv = edm_levels(schedule, steps, churn=churn, s_tmin=s_tmin, s_tmax=s_tmax,
                  sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
  x = jnp.asarray(latents, jnp.float32)
  n, c = x.shape[0], x.shape[-1]

  def denoise(x, sigma, t):
    eps = split_eps(model_fn(x / jnp.sqrt(1.0 + sigma * sigma), jnp.full((n,), t, jnp.int32)), c)
    d = x - sigma * eps.astype(jnp.float32)
    return jnp.clip(d, -1.0, 1.0) if clip_denoised else d

  def step(x, inp, heun: bool):
    s, sh, th, sn, tn, k = inp
    if churn > 0:
      x = x + jnp.sqrt(jnp.maximum(sh * sh - s * s, 0.0)) * s_noise * jax.random.normal(
          k, x.shape, jnp.float32)
    d = (x - denoise(x, sh, th)) / sh
    x_next = x + (sn - sh) * d
    if heun:
      d2 = (x_next - denoise(x_next, sn, tn)) / sn
      x_next = x + (sn - sh) * (0.5 * d + 0.5 * d2)
    return x_next

  keys = jax.random.split(key if key is not None else jax.random.key(0), steps)
  tabs = (lv["sigma"], lv["sigma_hat"], lv["t_hat"], lv["sigma_next"], lv["t_next"], keys)
  x = x * lv["sigma"][0]
  if steps > 1:
    x, _ = jax.lax.scan(lambda x, inp: (step(x, inp, True), None), x,
                        jax.tree_util.tree_map(lambda a: a[:-1], tabs))
  return step(x, jax.tree_util.tree_map(lambda a: a[-1], tabs), False)
