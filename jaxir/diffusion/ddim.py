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

from jaxir.diffusion.schedule import Schedule, beta_schedule, respaced_alphas_cumprod
from jaxir.errors import ConfigError, ShapeError

__all__ = ["q_sample", "x0_from_eps", "eps_from_x0", "split_eps", "ddim_step", "ddim_loop", "ddim_invert",
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


def ddim_step(x_t, eps, abar_t, abar_prev, *, eta=0.0, noise=None, clip=True, x0_fn=None,
              keep_eps=False, etw=None):
  """One DDIM update from abar_t to abar_prev.

  x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), optionally clipped to
  [-1, 1] and then corrected by `x0_fn` (data consistency, e.g. DDNM's range-space
  projection). The update is

    x_prev = sqrt(abar_prev) x0_hat + c_eps eps' + c_noise noise,

  with, by default (guided-diffusion's DDIM, eq. 12 of Song et al.), eps' the eps
  implied by x_t and the final x0_hat, sigma = eta sqrt((1 - abar_prev) /
  (1 - abar_t)) sqrt(1 - abar_t / abar_prev), c_eps = sqrt(1 - abar_prev -
  sigma^2), c_noise = sigma. With `etw` given (DDNM / DeqIR weighting),
  c_eps = sqrt(1 - abar_prev) sqrt(1 - etw^2) and c_noise = sqrt(1 - abar_prev) eta
  (eta is then DeqIR's `nw`; DDNM's simplified sampler has etw = eta).

  Args:
    x_t: (..., H, W, C) current state.
    eps: predicted noise, same shape.
    abar_t, abar_prev: scalars (or broadcastable arrays), alphas_cumprod at the
      current and next (less noisy) step; abar_prev = 1 at the last step.
    eta: DDIM stochasticity (0 deterministic, 1 DDPM-like); with `etw`, the
      noise weight.
    noise: standard normal draw of x_t's shape; needed when eta > 0.
    clip: clip x0_hat to [-1, 1] (guided-diffusion's `clip_denoised`).
    x0_fn: optional map x0_hat -> x0_hat' applied after the clip (same shape).
    keep_eps: False (default): eps' is recomputed from the final x0_hat, as
      guided-diffusion does after clipping. True: eps' = eps, the model's own
      prediction (DDNM: `xt_next = sqrt(at_next) x0_t_hat + c2 et`).
    etw: None (default) for the DDIM weights above, or DDNM/DeqIR's eps weight.

  Returns:
    (x_prev, x0_hat): the next state and the final (clipped, corrected) x0_hat.

  References:
    Song, Meng, Ermon, DDIM, ICLR 2021, eq. 12.
    Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
      Null-Space Model" (DDNM), ICLR 2023, eq. 13-14; wyhuai/DDNM
      `functions/svd_ddnm.py`; caojiezhang/DeqIR `runners/diffusion.py`
      (`get_additional_anderson_args_sr`: c1, c2 from `nw`, `etw`).
  """
  x0 = x0_from_eps(x_t, eps, abar_t)
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  if x0_fn is not None:
    x0 = x0_fn(x0)
  if not keep_eps:
    eps = eps_from_x0(x_t, x0, abar_t)
  if etw is None:
    if isinstance(eta, (int, float)) and eta == 0:  # deterministic; also valid upwards
      sigma = 0.0                                   # (abar_t = 1 or abar_t > abar_prev)
    else:
      sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * jnp.sqrt(1.0 - abar_t / abar_prev)
    c_eps = jnp.sqrt(1.0 - abar_prev - sigma ** 2)
  else:
    sigma = eta * jnp.sqrt(1.0 - abar_prev)
    c_eps = jnp.sqrt(1.0 - abar_prev) * jnp.sqrt(1.0 - etw ** 2)
  x_prev = x0 * jnp.sqrt(abar_prev) + c_eps * eps
  if noise is not None:
    x_prev = x_prev + sigma * noise
  return x_prev, x0


def ddim_tables(timesteps, *, num_timesteps: int = 1000, schedule="linear"):
  """Static tables of a respaced DDIM chain, as guided-diffusion's SpacedDiffusion.

  Args:
    timesteps: the kept original timesteps (any order, distinct).
    num_timesteps: length of the original process (named schedules only).
    schedule: a schedule name ("linear", "cosine"): alphas_cumprod recomputed
      in float64 as SpacedDiffusion does; or a `Schedule`: its own float32
      alphas_cumprod read at the kept steps (may be traced, e.g. a prior's).

  Returns:
    (t_model, abar, abar_prev): int32 (S,) original timesteps given to the model,
    float32 (S,) respaced alphas_cumprod and its predecessor (1 before the first),
    all in ascending time order.
  """
  if isinstance(schedule, Schedule):
    num_timesteps = schedule.num_timesteps
  ts = sorted(int(t) for t in timesteps)
  if not ts or ts[0] < 0 or ts[-1] >= num_timesteps or len(set(ts)) != len(ts):
    raise ConfigError(f"timesteps must be distinct integers in [0, {num_timesteps}); got {ts[:8]}...")
  t_model = np.asarray(ts, np.int32)
  if isinstance(schedule, Schedule):
    ac = jnp.asarray(schedule.alphas_cumprod, jnp.float32)[t_model]
    return t_model, ac, jnp.concatenate([jnp.ones((1,), jnp.float32), ac[:-1]])
  base = np.cumprod(1.0 - beta_schedule(schedule, num_timesteps))
  ac = respaced_alphas_cumprod(base, ts)
  prev = np.append(1.0, ac[:-1])
  return (t_model, ac.astype(np.float32), prev.astype(np.float32))


def ddim_sample(model_fn: Callable, x_T, timesteps, *, eta: float = 0.0,
                clip_denoised: bool = True, key=None, num_timesteps: int = 1000,
                schedule="linear", x0_fn: Callable | None = None, keep_eps: bool = False,
                etw=None, noise=None):
  """Run a respaced DDIM chain from x_T down to x_0 in one `lax.scan`.

  Every step is `ddim_step`; a data-consistency map enters as `x0_fn`, so DDNM
  (range-space correction, `keep_eps=True`, `etw`) and DCDP's purification (clip
  only) are this loop with different arguments.

  Args:
    model_fn: `model_fn(x, t)` with x (N, H, W, C) and t int32 (N,) original
      timesteps; returns the raw model output (C or 2C channels).
    x_T: (N, H, W, C) starting noise.
    timesteps: the kept original timesteps (e.g. `space_timesteps(1000, "ddim10")`).
    eta: DDIM eta (with `etw`: the noise weight); eta > 0 needs `key` or `noise`.
    clip_denoised: clip x0 to [-1, 1] at every step.
    key: `jax.random` key for the eta > 0 noise (one draw per step).
    num_timesteps, schedule: the original process: a schedule name (alphas
      recomputed in float64 over `num_timesteps`) or a `Schedule` (its own
      alphas, e.g. `prior.schedule`; `num_timesteps` is then ignored).
    x0_fn: optional `x0_fn(x0_hat, t) -> x0_hat'` with x0_hat (N, H, W, C) and t
      the int32 scalar timestep of the step, applied after the clip.
    keep_eps, etw: passed to `ddim_step` (DDNM weighting; defaults: guided-diffusion).
    noise: optional (N, H, W, C) standard normal draw used at EVERY step instead
      of fresh draws from `key` (DeqIR's convention, which keeps the chain a
      deterministic function of x_T).

  Returns:
    (N, H, W, C) sample x_0.
  """
  if x_T.ndim != 4:
    raise ShapeError(f"x_T has shape {x_T.shape}; expected (N, H, W, C).")
  if noise is not None and tuple(noise.shape) != tuple(x_T.shape):
    raise ShapeError(f"noise has shape {tuple(noise.shape)}; expected x_T's {tuple(x_T.shape)}.")
  if eta != 0.0 and key is None and noise is None:
    raise ConfigError("ddim_sample with eta > 0 draws noise: pass key=jax.random.key(...).")
  t_model, ac, ac_prev = ddim_tables(timesteps, num_timesteps=num_timesteps, schedule=schedule)
  keys = jax.random.split(key if key is not None else jax.random.key(0), len(t_model))
  return ddim_loop(model_fn, x_T, t_model[::-1], ac[::-1], ac_prev[::-1], eta=eta,
                   clip_denoised=clip_denoised, keys=keys[::-1] if eta != 0.0 else None,
                   x0_fn=x0_fn, keep_eps=keep_eps, etw=etw, noise=noise)


def ddim_loop(model_fn: Callable, x_T, t_model, abar, abar_prev, *, mask=None, eta=0.0,
              clip_denoised: bool = True, keys=None, x0_fn: Callable | None = None,
              keep_eps: bool = False, etw=None, noise=None):
  """The DDIM loop over given step tables (sampling order), in one `lax.scan`.

  `ddim_sample` builds the tables from a list of timesteps; callers whose steps
  are traced (DCDP's purification inside its outer loop, one compilation for
  every t_k) pass them directly, padded, with `mask`.

  Args:
    model_fn: `model_fn(x, t)`, x (N, H, W, C), t int32 (N,); raw model output.
    x_T: (N, H, W, C) start.
    t_model: (S,) int32 model timesteps, highest first (may be traced).
    abar, abar_prev: (S,) alphas_cumprod at each step and at the next, less
      noisy one (1 after the last step).
    mask: optional (S,) bool; False steps are skipped (padding).
    eta, clip_denoised, x0_fn, keep_eps, etw, noise: as in `ddim_sample`.
    keys: (S,) `jax.random` keys for fresh noise per step (eta != 0, no `noise`).

  Returns:
    (N, H, W, C) final state.
  """
  if eta != 0.0 and noise is None and keys is None:
    raise ConfigError("ddim_loop with eta > 0 needs keys=(S,) jax.random keys or noise=.")
  n = x_T.shape[0]
  S = jnp.shape(t_model)[0]
  if mask is None:
    mask = jnp.ones((S,), bool)
  if keys is None:
    keys = jnp.zeros((S,), jnp.uint32)  # unused placeholders

  def step(x, t, a, a_prev, k):
    eps = split_eps(model_fn(x, jnp.full((n,), t, jnp.int32)), x.shape[-1])
    z = None
    if eta != 0.0:
      z = noise.astype(x.dtype) if noise is not None else jax.random.normal(k, x.shape, x.dtype)
    fn = None if x0_fn is None else (lambda x0: x0_fn(x0, t))
    x, _ = ddim_step(x, eps, a, a_prev, eta=eta, noise=z, clip=clip_denoised, x0_fn=fn,
                     keep_eps=keep_eps, etw=etw)
    return x

  def body(x, inp):
    t, a, a_prev, k, m = inp
    return jax.lax.cond(m, lambda x: step(x, t, a, a_prev, k), lambda x: x, x), None

  x, _ = jax.lax.scan(body, x_T, (t_model, abar, abar_prev, keys, mask))
  return x


def ddim_invert(model_fn: Callable, x0, timesteps, *, num_timesteps: int = 1000,
                schedule="linear"):
  """Deterministic DDIM inversion: x0 carried up to the highest of `timesteps`.

  The reverse of `ddim_sample` with eta 0 and no clipping: each step goes from one
  level of the respaced chain to the next noisier one with `ddim_step`, eps taken
  from the model at the current (less noisy) state and the step's timestep, the
  usual approximation (Song et al. 2021, exact when eps does not depend on x, and
  as the steps shrink).

  Args:
    model_fn: `model_fn(x, t)`, x (N, H, W, C), t int32 (N,); raw model output.
    x0: (N, H, W, C) clean images.
    timesteps, num_timesteps, schedule: as in `ddim_sample` (same chain).

  Returns:
    (N, H, W, C) state at max(timesteps), from which `ddim_sample(..., clip_denoised=False)`
    returns about x0.
  """
  if x0.ndim != 4:
    raise ShapeError(f"x0 has shape {x0.shape}; expected (N, H, W, C).")
  t_model, ac, ac_prev = ddim_tables(timesteps, num_timesteps=num_timesteps, schedule=schedule)
  n = x0.shape[0]

  def body(x, inp):
    t, a, a_lower = inp
    eps = split_eps(model_fn(x, jnp.full((n,), t, jnp.int32)), x.shape[-1])
    return ddim_step(x, eps, a_lower, a, clip=False, keep_eps=True)[0], None

  x, _ = jax.lax.scan(body, x0, (jnp.asarray(t_model), jnp.asarray(ac), jnp.asarray(ac_prev)))
  return x
