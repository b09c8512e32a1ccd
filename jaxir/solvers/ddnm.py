"""DDNM-style sequential restoration: deterministic DDIM with range-space correction.

At every respaced step t (highest first) the network predicts eps, the x0
estimate x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is corrected to

    x0_hat <- A^+ y + (I - A^+ A) x0_hat        (the range-space projection),

and the chain moves on with the DDNM / DeqIR weighting

    x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) (sqrt(1 - etw^2) eps + nw z),

(eps the model's own prediction, z one fixed standard normal draw, abar_next = 1
at the last step). There is no clipping: this is the sequential chain whose
fixed-point form DeqIR solves in parallel (`jaxir.solvers.deqir`), and Picard
iteration of DeqIR's joint map reproduces it exactly after T iterations.

The loop is `jaxir.diffusion.ddim_sample` with the projection as its x0
correction (`ddim_step` with `keep_eps=True`, `etw`), reading the alphas from
the prior's own `Schedule`.

Timesteps follow DeqIR's `get_timestep_sequence_sr` ('uniform'):
range(0, N, N // T), dropping the last entry when T does not divide N.

References:
  Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
  Null-Space Model" (DDNM), ICLR 2023, eq. 13-14. Official code: wyhuai/DDNM
  (`functions/svd_ddnm.py`).
  Cao et al., "Deep Equilibrium Diffusion Restoration with Parallel Sampling"
  (DeqIR), CVPR 2024. Official code: caojiezhang/DeqIR (`runners/diffusion.py`:
  `get_timestep_sequence_sr`, `get_additional_anderson_args_sr`; README command).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import ddim_sample
from jaxir.errors import ConfigError
from jaxir.solvers.common import callable_module, check_measurement, residual_norm

__all__ = ["DDNMConfig", "DDNMInfo", "uniform_timesteps", "range_space_correction",
           "draw_start", "ddnm_chain", "ddnm"]


@dataclasses.dataclass(frozen=True)
class DDNMConfig:
  """Settings of the sequential DDNM-style chain (defaults: DeqIR's README run).

  Attributes:
    T: respaced steps (DeqIR README `--timesteps 25`).
    etw: eps weight, c_eps = sqrt(1 - abar_next) sqrt(1 - etw^2) (DeqIR README
      `--etw 0.1`; DDNM's simplified sampler uses etw = eta = 0.85).
    nw: weight of the injected noise, c_noise = sqrt(1 - abar_next) nw (DeqIR
      `main.py` `--nw` default 0: deterministic).
  """
  T: int = 25  # DeqIR README: --timesteps 25
  etw: float = 0.1  # DeqIR README: --etw 0.1
  nw: float = 0.0  # DeqIR main.py: --nw default 0

  def __post_init__(self):
    if not isinstance(self.T, (int, np.integer)) or self.T < 1:
      raise ConfigError(f"DDNM needs an integer number of steps T >= 1; got T={self.T!r}.")
    if not 0.0 <= self.etw <= 1.0:
      raise ConfigError(f"etw must lie in [0, 1] (the eps weight is sqrt(1 - etw^2)); got "
                        f"{self.etw}.")
    if self.nw < 0.0:
      raise ConfigError(f"nw (the noise weight) must be >= 0; got {self.nw}.")


class DDNMInfo(NamedTuple):
  """Diagnostics of a DDNM solve.

  Attributes:
    nfe: network evaluations (int32 scalar, = T).
    residual: ||A(x) - y|| of the result (float32 scalar).
  """
  nfe: jax.Array
  residual: jax.Array


def uniform_timesteps(T: int, num_timesteps: int = 1000) -> np.ndarray:
  """DeqIR/DDNM 'uniform' respacing, highest first: int64 (T,).

  range(0, N, N // T) (N = num_timesteps), with the last entry dropped when T
  does not divide N (DeqIR `get_timestep_sequence_sr`), then reversed. T = 5:
  [800, 600, 400, 200, 0].
  """
  if not isinstance(T, (int, np.integer)) or not 1 <= T <= num_timesteps:
    raise ConfigError(f"T must be an integer in [1, {num_timesteps}]; got {T!r}.")
  seq = list(range(0, num_timesteps, num_timesteps // T))
  if num_timesteps % T:
    seq = seq[:-1]
  return np.asarray(seq[::-1], np.int64)


def range_space_correction(operator, y, pinv_y=None):
  """The map x0 -> A^+ y + (I - A^+ A) x0 on one (H, W, C) image.

  Args:
    operator: a linear jaxir operator with `pinv` (SVD operators: closed form).
    y: one measurement.
    pinv_y: A^+ y if already computed.

  Returns:
    A function of one (H, W, C) image.
  """
  _check_linear(operator)
  py = operator.pinv(y) if pinv_y is None else pinv_y
  return lambda x0: x0 - operator.pinv(operator.A(x0)) + py


def _check_linear(operator):
  if not getattr(operator, "linear", False) or not hasattr(operator, "pinv"):
    raise ConfigError(f"{type(operator).__name__} is not a linear operator with a pseudo-"
                      "inverse; DDNM and DeqIR need A^+ (use an SVD operator such as "
                      "AvgPoolSR, Inpaint, Colorization or CircularBlur).")


def ddnm_chain(x_T, y, operator, prior, *, T: int = 25, etw: float = 0.1, nw: float = 0.0,
               noise=None):
  """The deterministic DDNM chain from a given x_T (DeqIR's sequential reference).

  Args:
    x_T: (H, W, C) start at timestep `uniform_timesteps(T)[0]`.
    y: one measurement, shape `operator.out_shape`.
    operator: a linear operator with `pinv`.
    prior: a `jaxir.priors.Prior` (alphas from `prior.schedule`).
    T, etw, nw: see `DDNMConfig`.
    noise: (H, W, C) standard normal draw reused at every step (needed when nw > 0).

  Returns:
    (H, W, C) restored image x_0.
  """
  check_measurement(y, operator)
  if nw != 0.0 and noise is None:
    raise ConfigError("ddnm_chain with nw > 0 needs noise=(H, W, C) standard normal draw.")
  correct = range_space_correction(operator, y)
  ts = uniform_timesteps(T, prior.schedule.num_timesteps)
  x = ddim_sample(prior.model, x_T[None], ts, eta=nw, clip_denoised=False,
                  schedule=prior.schedule, x0_fn=lambda x0, t: jax.vmap(correct)(x0),
                  keep_eps=True, etw=etw, noise=None if noise is None else noise[None])
  return x[0]


def draw_start(key, operator, nw: float):
  """(x_T, noise): the chain's start and, when nw != 0, its one shared noise draw
  (DeqIR's convention), both standard normal of `operator.in_shape`, float32."""
  k_x, k_n = jax.random.split(key)
  shape = tuple(operator.in_shape)
  x_T = jax.random.normal(k_x, shape, jnp.float32)
  return x_T, (jax.random.normal(k_n, shape, jnp.float32) if nw != 0.0 else None)


def ddnm(key, y, operator, prior, config: DDNMConfig = DDNMConfig()):
  """Restore one image with the sequential DDNM-style chain.

  Pure and jit-able (`config` static); `jax.vmap` over (key, y) solves a batch.

  Args:
    key: `jax.random` key (x_T, and the fixed noise draw when nw > 0).
    y: one measurement, shape `operator.out_shape`.
    operator: a linear operator with `pinv` on `operator.in_shape` images.
    prior: a `jaxir.priors.Prior`.
    config: `DDNMConfig`.

  Returns:
    (x, info): the (H, W, C) restoration and a `DDNMInfo`.

  References:
    Wang et al., DDNM, ICLR 2023, Algorithm 1 (eta -> etw, nw as in DeqIR).
  """
  check_measurement(y, operator)
  _check_linear(operator)
  x_T, noise = draw_start(key, operator, config.nw)
  x = ddnm_chain(x_T, y, operator, prior, T=config.T, etw=config.etw, nw=config.nw, noise=noise)
  info = DDNMInfo(nfe=jnp.asarray(config.T, jnp.int32), residual=residual_norm(operator, x, y))
  return x, info


callable_module(__name__, ddnm)
