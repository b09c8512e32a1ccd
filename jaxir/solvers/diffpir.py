"""DiffPIR: plug-and-play restoration with a diffusion denoiser, one DDIM chain.

At every timestep t (highest first) the network gives the clipped x0 estimate,
the data sub-problem moves it to

  x0_hat = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2,
  rho_t  = lambda (sigma / 2)^2 / sigma_t^2,   sigma_t^2 = (1 - abar_t) / abar_t,

(`proximal`), and the chain re-noises to the next timestep t' with the eps
implied by the corrected x0 (recomputed, not the network's):

  x_t' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') (sqrt(1 - zeta) eps_hat + sqrt(zeta) z).

This is `jaxir.diffusion.ddim_sample` with the data step as its x0 correction
(`etw = eta = sqrt(zeta)`, `keep_eps=False`), reading the alphas from the prior.

Noise scale: jaxir images and `sigma_y` live on [-1, 1]. The official code adds
noise of std 2 * noise_level_img on [-1, 1] (noise_level_img on [0, 1], 12.75/255
in its scripts) and computes rho from the [0, 1] value sigma = max(0.001,
noise_level_img) while sigma_t is on the model's [-1, 1] scale. So here
sigma = max(sigma_y, 0.002) / 2 in the rho formula above and `lambda_` keeps the
official value (the paper's rho_t = lambda sigma_n^2 / sigma_t^2 with sigma_n on
[0, 1]). The data sub-problem itself is the same on either scale (both terms scale
by 1/4 when A maps constant images to constants; the official inpainting code
solves it on [-1, 1] directly), so it runs on [-1, 1].

Timesteps (official `skip_type`): 'quad' seq = int(sqrt(linspace(0, T^2, steps))),
last entry minus one; 'uniform' seq = [i (T // steps)] + [T - 1]; the model steps
are t = T - 1 - seq (999, 899, 857, ..., 5, 0 for 'quad' and 100 steps), those
above `t_start` skipped. The start is x = sqrt(abar) x_init + sqrt(1 - abar) z at
t_start with x_init = A^+ y (the official scripts start from an upsampled or
masked y; at t_start = 999, sqrt(abar) = 0.0064, so the start is almost pure noise).

One deviation: the official loop evaluates the network at the last step (t = 0)
but returns the state x_0 there (x0 + 0.01 noise), discarding that evaluation;
here that evaluation's x0 estimate (clipped, no data step, as officially) is
returned, which is where `ddim_sample` ends (abar = 1).

References:
  Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, "Denoising Diffusion Models for
  Plug-and-Play Image Restoration" (DiffPIR), CVPR Workshops (NTIRE) 2023, eq.
  12-15, Algorithm 1. Official code: yuanzhi-zhu/DiffPIR (`main_ddpir_sisr.py`,
  `main_ddpir_deblur.py`, `main_ddpir_inpainting.py`, `main_ddpir.py`,
  `configs/*.yaml`, `utils/utils_sisr.py` `data_solution`, `utils/utils_model.py`).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import ddim_sample, q_sample
from jaxir.errors import ConfigError
from jaxir.operators.base import SVDOperator, fixed_cg
from jaxir.operators.blur import svd_form
from jaxir.solvers.common import (callable_module, check_measurement, is_key, noise_like, preset,
                                  residual_norm)

__all__ = ["DiffPIRConfig", "DiffPIRInfo", "DIFFPIR_PRESETS", "diffpir_preset",
           "diffpir_timesteps", "diffpir_rho", "proximal",
           "diffpir_start", "diffpir_sample", "diffpir"]

#: The official floor max(0.001, noise_level_img) on [0, 1], on the [-1, 1] scale.
SIGMA_FLOOR = 0.002
_SKIPS = ("quad", "uniform")
_INITS = ("pinv", "zeros")


@dataclasses.dataclass(frozen=True)
class DiffPIRConfig:
  """DiffPIR hyperparameters (defaults: the official deblurring run).

  Attributes:
    steps: sampling iterations (official `iter_num`: 100).
    lambda_: the data weight lambda of rho_t (official `main_ddpir_deblur.py`:
      lambda_ 1.0 times 7 in its final `lambdas` loop; `main_ddpir.py` likewise).
    zeta: share of fresh noise when re-noising (`main_ddpir_deblur.py`: zeta 0.1
      times 3 in its final loop, 0.3).
    sigma_y: measurement noise std on [-1, 1] used in rho_t, floored at 0.002
      (official noise_level_model = 12.75/255 on [0, 1], i.e. 0.1 here).
    skip_type: "quad" or "uniform" timestep spacing (official `skip_type`: 'quad').
    t_start: first timestep; None for T - 1 (official `t_start = num_train_timesteps - 1`).
    init: "pinv" starts from A^+ y noised to t_start (official scripts: the
      upsampled / blurred / masked y), "zeros" from pure noise (the paper's
      Algorithm 1); nonlinear operators always use zeros.
    clip: clip x0 estimates to [-1, 1] (official `model_fn`: clip_denoised=True).
    cg_steps: conjugate-gradient iterations of the data step for linear operators
      without an SVD (the official code only uses closed forms; jaxir choice).
    grad_steps: gradient steps of the data step for nonlinear operators, each
      x <- x0 - J(x)^T (A(x) - y) / rho (official `sub_1_analytic=False` path: one).
  """
  steps: int = 100  # official iter_num = 100 (all three main_ddpir_*.py)
  lambda_: float = 7.0  # main_ddpir_deblur.py: lambdas = [lambda_*i for i in range(7, 8)]
  zeta: float = 0.3  # main_ddpir_deblur.py: zeta_i in [zeta*i for i in range(3, 4)], zeta 0.1
  sigma_y: float = 0.1  # main_ddpir_deblur.py: noise_level_img 12.75/255 on [0, 1]
  skip_type: str = "quad"  # main_ddpir_*.py: skip_type 'quad'
  t_start: int | None = None  # main_ddpir_*.py: t_start = num_train_timesteps - 1
  init: str = "pinv"  # main_ddpir_deblur.py: x from y noised to t_start
  clip: bool = True  # utils/utils_model.py model_fn: clip_denoised=True
  cg_steps: int = 20  # jaxir: CG for linear operators without SVD (no official path)
  grad_steps: int = 1  # main_ddpir_sisr.py sub_1_analytic=False: one gradient step

  def __post_init__(self):
    if not isinstance(self.steps, (int, np.integer)) or self.steps < 2:
      raise ConfigError(f"DiffPIR needs an integer steps >= 2; got {self.steps!r}.")
    if not self.lambda_ > 0:
      raise ConfigError(f"lambda_ must be > 0 (the data weight of rho_t); got {self.lambda_}.")
    if not 0.0 <= self.zeta <= 1.0:
      raise ConfigError(f"zeta must lie in [0, 1] (share of fresh noise); got {self.zeta}.")
    if not self.sigma_y >= 0:
      raise ConfigError(f"sigma_y must be >= 0; got {self.sigma_y}.")
    if self.skip_type not in _SKIPS:
      raise ConfigError(f"unknown skip_type {self.skip_type!r}; choose from {_SKIPS}.")
    if self.init not in _INITS:
      raise ConfigError(f"unknown init {self.init!r}; choose from {_INITS}.")
    if self.cg_steps < 1 or self.grad_steps < 1:
      raise ConfigError(f"cg_steps and grad_steps must be >= 1; got {self.cg_steps}, "
                        f"{self.grad_steps}.")


def _preset(**kw) -> DiffPIRConfig:
  return DiffPIRConfig(**kw)


# Task names and sigma_y as `jaxir.tasks.TASKS`; lambda_ and zeta from the official scripts.
# The official SR script (main_ddpir_sisr.py, configs/sisr.yaml + main_ddpir.py) sweeps
# lambda over 2..12 at zeta 0.25 and commits to none: sr4 takes lambda 7, the deblur value
# (and deepinv's DiffPIR default), inside that sweep. Tasks the paper does not run
# (denoise, deblur_gauss) borrow the deblur setting. Inpainting: main_ddpir_inpainting.py
# (lambda 1, zeta 1; its iter_num 20, but the README's best results use 100 NFEs).
DIFFPIR_PRESETS: dict[str, DiffPIRConfig] = {
    "sr4": _preset(lambda_=7.0, zeta=0.25, sigma_y=0.05),            # main_ddpir_sisr.py
    "sr4_avgpool": _preset(lambda_=7.0, zeta=0.25, sigma_y=0.05),    # main_ddpir_sisr.py
    "gaussian_deblur": _preset(lambda_=7.0, zeta=0.3, sigma_y=0.05),  # main_ddpir_deblur.py
    "motion_deblur": _preset(lambda_=7.0, zeta=0.3, sigma_y=0.05),    # main_ddpir_deblur.py
    "deblur_gauss": _preset(lambda_=7.0, zeta=0.3, sigma_y=0.0),      # borrowed: deblur
    "box_inpaint": _preset(lambda_=1.0, zeta=1.0, sigma_y=0.05),      # main_ddpir_inpainting.py
    "random_inpaint": _preset(lambda_=1.0, zeta=1.0, sigma_y=0.05),   # main_ddpir_inpainting.py
    "denoise": _preset(lambda_=7.0, zeta=0.3, sigma_y=0.2),           # borrowed: deblur
}


def diffpir_preset(name: str, **overrides) -> DiffPIRConfig:
  """A named preset (`DIFFPIR_PRESETS`), optionally with fields replaced."""
  return preset(DIFFPIR_PRESETS, name, "DiffPIR", **overrides)


def diffpir_timesteps(steps: int, num_timesteps: int = 1000, skip_type: str = "quad",
                      t_start: int | None = None) -> np.ndarray:
  """Model timesteps of the official loop, highest first (int64, distinct).

  'quad': seq = int(sqrt(linspace(0, T^2, steps))) with the last entry minus one;
  'uniform': seq = [i (T // steps) for i < steps] + [T - 1] (when T // steps > 1);
  t = T - 1 - seq, entries above t_start dropped. Repeated entries (quad with
  steps comparable to T) are merged: a repeat re-noises to its own level.
  """
  T = int(num_timesteps)
  if skip_type == "quad":
    seq = [int(s) for s in np.sqrt(np.linspace(0, T ** 2, steps))]
    seq[-1] = seq[-1] - 1
  elif skip_type == "uniform":
    skip = T // steps
    seq = [i * skip for i in range(steps)]
    if skip > 1:
      seq.append(T - 1)
  else:
    raise ConfigError(f"unknown skip_type {skip_type!r}; choose from {_SKIPS}.")
  ts = T - 1 - np.asarray(seq, np.int64)
  t_start = T - 1 if t_start is None else int(t_start)
  if not 0 <= t_start <= T - 1:
    raise ConfigError(f"t_start={t_start} is outside [0, {T - 1}] of the prior's schedule.")
  ts = ts[(ts <= t_start) & (ts >= 0)]
  _, first = np.unique(ts, return_index=True)
  return ts[np.sort(first)]


def diffpir_rho(abar_t, lambda_: float, sigma_y: float):
  """rho_t = lambda (max(sigma_y, 0.002) / 2)^2 abar_t / (1 - abar_t) (see module notes)."""
  sigma = max(float(sigma_y), SIGMA_FLOOR) / 2.0
  return lambda_ * sigma ** 2 * abar_t / (1.0 - abar_t)


def _svd_prox(operator: SVDOperator, y, x0, rho):
  s = operator.singulars()
  k = s.shape[0]
  v = operator.VT(x0)
  u = operator.UT(y)
  head = v[:k]
  den = s * s + rho
  new = jnp.where(den > 0, (s * u + rho * head) / jnp.where(den > 0, den, 1.0), head)
  return operator.V(v.at[:k].set(new.astype(v.dtype))).astype(x0.dtype)


def proximal(operator, y, x0, rho, *, cg_steps: int = 20, grad_steps: int = 1):
  """The data step argmin_x ||y - A(x)||^2 + rho ||x - x0||^2 on one image.

  Closed form for any operator with an SVD form (`svd_form`: every `SVDOperator`,
  i.e. Identity, Inpaint, Colorization, AvgPoolSR, BicubicSR, CircularBlur (its SVD
  is the FFT), SeparableBlur, WalshHadamardCS, MatrixOperator; and circularly
  padded `Blur`, by the FFT): with A = U diag(s) V^T, v = V^T x0, u = U^T y,

    x = V [ (s u + rho v) / (s^2 + rho)  on the first len(s) entries,  v elsewhere ],

  the official `data_solution` (FFT, blur + stride) and inpainting formula being
  special cases. Other linear operators (reflect-padded `Blur`, ...): `cg_steps`
  conjugate-gradient iterations on (A^T A + rho I) x = A^T y + rho x0 from x0.
  Nonlinear operators: `grad_steps` steps x <- x0 - J(x)^T (A(x) - y) / rho from
  x0 (the official gradient path `x0 - grad(||r||) ||r|| / rho` is the first).

  Args:
    operator: a jaxir operator.
    y: one measurement, `operator.out_shape`.
    x0: (H, W, C) centre of the proximal term.
    rho: positive scalar (may be traced).
    cg_steps, grad_steps: iteration counts of the iterative paths (static).

  Returns:
    (H, W, C) minimizer (approximate on the iterative paths).
  """
  svd = svd_form(operator)
  if svd is not None:
    return _svd_prox(svd, y, x0, rho)
  if getattr(operator, "linear", False):
    rhs = operator.AT(y) + rho * x0
    return fixed_cg(lambda v: operator.AT(operator.A(v)) + rho * v, rhs, x0, cg_steps)

  def loss(x):
    r = operator.A(x) - y
    return 0.5 * jnp.sum(jnp.real(r * jnp.conj(r)))

  grad = jax.grad(loss)
  return jax.lax.fori_loop(0, int(grad_steps), lambda _, x: x0 - grad(x) / rho, x0)


def diffpir_start(key, y, operator, abar_start, init: str = "pinv"):
  """The start x = sqrt(abar) x_init + sqrt(1 - abar) z, x_init = A^+ y or zeros."""
  shape = tuple(operator.in_shape)
  x_init = jnp.zeros(shape, jnp.float32)
  if init == "pinv" and getattr(operator, "linear", False) and hasattr(operator, "pinv"):
    x_init = jnp.real(operator.pinv(y)).astype(jnp.float32)
  return q_sample(x_init, abar_start, jax.random.normal(key, shape, jnp.float32))


def diffpir_sample(x_start, key_or_noise, y, operator, prior,
                   config: DiffPIRConfig = DiffPIRConfig()):
  """The DiffPIR chain from a given start (reproducible: the start is an input).

  Args:
    x_start: (H, W, C) state at the first timestep (`diffpir_timesteps(...)[0]`).
    key_or_noise: `jax.random` key of the re-noising draws (a fresh draw per step,
      DiffPIR's rule), or one (H, W, C) standard normal draw reused at every step
      (`ddim_sample`'s `noise`; makes the chain a fixed function, for tests).
      Unused when zeta = 0.
    y, operator, prior, config: as for `diffpir`.

  Returns:
    (H, W, C) the x0 estimate at the last timestep.
  """
  check_measurement(y, operator, prior=prior)
  T = prior.schedule.num_timesteps
  ts = diffpir_timesteps(config.steps, T, config.skip_type, config.t_start)
  ac = prior.schedule.alphas_cumprod
  t_last = int(ts[-1])
  kw = dict(cg_steps=config.cg_steps, grad_steps=config.grad_steps)

  def data_step(x0, t):
    rho = diffpir_rho(ac[t], config.lambda_, config.sigma_y).astype(x0.dtype)
    prox = jax.vmap(lambda v: proximal(operator, y, v, rho, **kw))
    return jax.lax.cond(t == t_last, lambda v: v, prox, x0)

  root = float(np.sqrt(config.zeta))
  key, noise = None, None
  if root != 0.0:
    if is_key(key_or_noise):
      key = key_or_noise
    else:
      noise = noise_like(key_or_noise, x_start, "key_or_noise")[None]
  x = ddim_sample(prior.model, x_start[None], ts, eta=root, etw=root, keep_eps=False,
                  clip_denoised=config.clip, key=key, noise=noise, schedule=prior.schedule,
                  x0_fn=data_step)
  return x[0]


class DiffPIRInfo(NamedTuple):
  """Diagnostics of a DiffPIR solve.

  Attributes:
    nfe: network evaluations (int32 scalar; 100 for the default 'quad' 100).
    residual: ||A(x) - y|| of the result (float32 scalar).
  """
  nfe: jax.Array
  residual: jax.Array


def diffpir(key, y, operator, prior, config: DiffPIRConfig = DiffPIRConfig()):
  """Restore one image with DiffPIR.

  Pure and jit-able (`config` static); `jax.vmap` over (key, y) solves a batch.

  Args:
    key: `jax.random` key (the start and the re-noising draws).
    y: one measurement, shape `operator.out_shape`.
    operator: a jaxir operator (SVD: closed-form data step; other linear: CG;
      nonlinear: gradient steps).
    prior: a `jaxir.priors.Prior`.
    config: `DiffPIRConfig` (see `DIFFPIR_PRESETS`).

  Returns:
    (x, info): the (H, W, C) restoration and a `DiffPIRInfo`.

  References:
    Zhu et al., DiffPIR, 2023, Algorithm 1; official `main_ddpir_*.py`.
  """
  check_measurement(y, operator, prior=prior)
  T = prior.schedule.num_timesteps
  ts = diffpir_timesteps(config.steps, T, config.skip_type, config.t_start)
  t_start = T - 1 if config.t_start is None else config.t_start
  k_start, k_steps = jax.random.split(key)
  x_start = diffpir_start(k_start, y, operator, prior.schedule.alphas_cumprod[t_start],
                          config.init)
  x = diffpir_sample(x_start, k_steps, y, operator, prior, config)
  return x, DiffPIRInfo(nfe=jnp.asarray(len(ts), jnp.int32), residual=residual_norm(operator, x, y))


callable_module(__name__, diffpir)
