"""Noise schedules, computed in float64 exactly as guided-diffusion does, then cast.

`cumprod_dtype="float32"` instead reproduces codes that keep betas in float32
(ermongroup DDIM and its descendants DDRM, DDNM, DeqIR: `torch.from_numpy(betas)
.float()`, then `(1 - betas).cumprod(0)`): betas and 1 - beta rounded to float32,
and the cumulative product as torch's float32 `cumprod` on CPU returns it
(accumulated in float64 and rounded once per entry; checked bitwise against torch).
The two differ by about 1e-7 relative.

References:
  Ho et al., DDPM (2020): linear betas 1e-4..0.02 over 1000 steps.
  Nichol & Dhariwal, "Improved DDPM" (2021): cosine schedule.
  openai/guided-diffusion `gaussian_diffusion.py` (get_named_beta_schedule).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ConfigError

__all__ = ["Schedule", "get_schedule", "beta_schedule", "respaced_alphas_cumprod"]


def beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
  """Betas (float64, shape (T,)) of guided-diffusion's named schedules."""
  if name == "linear":
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)
  if name == "cosine":
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), 0.999)
                     for i in range(num_timesteps)], dtype=np.float64)
  raise ConfigError(f"unknown beta schedule {name!r}; use 'linear' or 'cosine'.")


def respaced_alphas_cumprod(alphas_cumprod: np.ndarray, timesteps) -> np.ndarray:
  """alphas_cumprod of a respaced process, as guided-diffusion's SpacedDiffusion.

  The kept steps get betas 1 - abar[t_i]/abar[t_{i-1}]; their cumprod is
  recomputed in float64 (equal to abar[t_i] up to float64 rounding).
  """
  last, betas = 1.0, []
  for t in sorted(int(t) for t in timesteps):
    betas.append(1.0 - alphas_cumprod[t] / last)
    last = alphas_cumprod[t]
  return np.cumprod(1.0 - np.asarray(betas, np.float64))


class Schedule(pytree.PyTreeNode):
  """A discrete diffusion schedule; arrays are float32, indexed by timestep.

  Attributes:
    betas: (T,) float32.
    alphas_cumprod: (T,) float32, abar_t = prod_{s<=t} (1 - beta_s).
    alphas_cumprod_prev: (T,) float32, abar_{t-1} with abar_{-1} = 1.
    sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod: (T,) float32,
      computed in float64 then cast, as guided-diffusion does.
    name: static schedule name.
  """
  betas: jnp.ndarray
  alphas_cumprod: jnp.ndarray
  alphas_cumprod_prev: jnp.ndarray
  sqrt_recip_alphas_cumprod: jnp.ndarray
  sqrt_recipm1_alphas_cumprod: jnp.ndarray
  name: str = pytree.field(pytree_node=False, default="linear")

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]

  @classmethod
  def from_betas(cls, betas: np.ndarray, name: str = "custom",
                 cumprod_dtype: str = "float64") -> "Schedule":
    """A schedule from betas (T,).

    Args:
      betas: (T,) noise variances.
      name: static label.
      cumprod_dtype: "float64" (guided-diffusion: alphas_cumprod in float64 from
        float64 betas, then cast) or "float32" (ermongroup DDIM / DDRM / DDNM /
        DeqIR: float32 betas, float32 1 - beta, cumprod as torch's float32 one).
    """
    if cumprod_dtype == "float64":
      betas = np.asarray(betas, np.float64)
      abar = np.cumprod(1.0 - betas)
    elif cumprod_dtype == "float32":
      betas32 = np.asarray(betas, np.float64).astype(np.float32)
      alphas32 = np.float32(1.0) - betas32
      # torch's CPU cumprod of a float32 tensor accumulates in float64 (acc_type).
      abar = np.cumprod(alphas32.astype(np.float64)).astype(np.float32).astype(np.float64)
      betas = betas32.astype(np.float64)
    else:
      raise ConfigError(f"cumprod_dtype must be 'float64' or 'float32'; got {cumprod_dtype!r}.")
    abar_prev = np.append(1.0, abar[:-1])
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return cls(betas=f32(betas), alphas_cumprod=f32(abar), alphas_cumprod_prev=f32(abar_prev),
               sqrt_recip_alphas_cumprod=f32(np.sqrt(1.0 / abar)),
               sqrt_recipm1_alphas_cumprod=f32(np.sqrt(1.0 / abar - 1)), name=name)


def get_schedule(name: str = "linear", num_timesteps: int = 1000,
                 dtype: str = "float64") -> Schedule:
  """A named schedule ('linear' or 'cosine') over `num_timesteps` steps.

  `dtype="float32"` gives the float32-betas variant of the ermongroup-derived codes
  (DDRM, DDNM, DeqIR); see `Schedule.from_betas`.
  """
  return Schedule.from_betas(beta_schedule(name, num_timesteps), name, cumprod_dtype=dtype)
