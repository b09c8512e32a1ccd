"""Sample grids during training: DDIM (or EDM) samples of the EMA weights, saved as a PNG."""
from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import ddim_sample
from jaxir.diffusion.edm import edm_sample
from jaxir.diffusion.respace import space_timesteps
from jaxir.diffusion.schedule import get_schedule
from jaxir.errors import ConfigError

__all__ = ["sample_grid", "save_grid"]


def sample_grid(apply_fn: Callable, params, key, shape, *, steps: int = 50,
                num_timesteps: int = 1000, schedule: str = "linear", eta: float = 0.0,
                sampler: str = "ddim", churn: float = 80.0):
  """Unconditional samples (x0 clipped), float32 (N, H, W, C) in [-1, 1].

  Args:
    apply_fn, params: the model.
    key: key of the starting noise (and of the per-step noise when eta > 0 or churn > 0).
    shape: (N, H, W, C).
    steps: DDIM steps ("ddimN" respacing), or EDM steps (2 * steps - 1 network calls).
    eta: DDIM eta: 0 deterministic (the default), 1 DDPM-like ancestral sampling.
    sampler: "ddim" or "edm" (`jaxir.diffusion.edm_sample`, Karras et al.'s
      stochastic Heun sampler with its other ImageNet-64 defaults).
    churn: EDM's S_churn (sampler "edm" only).
  """
  k_T, k_steps = jax.random.split(key)
  if sampler == "edm":
    return jnp.clip(edm_sample(lambda x, t: apply_fn(params, x, t),
                               jax.random.normal(k_T, shape, jnp.float32),
                               get_schedule(schedule, num_timesteps), key=k_steps,
                               steps=steps, churn=churn), -1.0, 1.0)
  if sampler != "ddim":
    raise ConfigError(f"sampler must be 'ddim' or 'edm'; got {sampler!r}.")
  ts = space_timesteps(num_timesteps, f"ddim{steps}")
  # eta 0 draws x_T from `key` itself, as before eta existed (same grids for the same key).
  x_T = jax.random.normal(key if eta == 0.0 else k_T, shape, jnp.float32)
  return ddim_sample(lambda x, t: apply_fn(params, x, t), x_T, ts, eta=eta,
                     key=None if eta == 0.0 else k_steps,
                     num_timesteps=num_timesteps, schedule=schedule)


def save_grid(images, path: str, nrow: int | None = None):
  """Write (N, H, W, C) images in [-1, 1] as one PNG grid (1-pixel white gaps)."""
  from PIL import Image
  x = np.asarray(images, np.float32)
  n, h, w, c = x.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  ncol = int(np.ceil(n / nrow))
  grid = np.ones((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, nrow)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
  u8 = np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(u8[..., 0] if c == 1 else u8).save(path)
