"""DDRM: denoising diffusion restoration in the spectral domain of an SVD operator.

For a linear measurement y = A x + sigma_y n with A = U diag(s) Vᵀ, DDRM runs a
respaced diffusion chain on x_mod = x_t / sqrt(abar_t) (noise level
sigma_t = sqrt(1 - abar_t) / sqrt(abar_t)) coefficient by coefficient in the
basis V. At each step the network's x0 estimate x0_t (no clipping) and eps
give v0 = Vᵀ x0_t and v_eps = Vᵀ eps, and the next coefficients are, with
z ~ N(0, I), sigma = sigma_next, ub = Uᵀ y:

  * s_i = 0 (no information):      v0 + sqrt(1 - eta²) sigma v_eps + eta sigma z;
  * s_i sigma < sigma_y (after):   v0 + sqrt(1 - eta²) sigma (ub - s v0) / sigma_y
                                      + eta sigma z;
  * s_i sigma > sigma_y (before):  eta_b ub / s + (1 - eta_b) v0
                                      + sqrt(sigma² - eta_b² sigma_y² / s²) z;

then x_next = sqrt(abar_next) V(v_next). Equality (s sigma = sigma_y, e.g. at the
last step where sigma = 0) falls to the first rule, as in the official code; at
the last step (abar_next = 1) every rule returns v0, so the output is the last
x0_t. The chain starts from (official "p(x_T | x_0, y)"), with sigma_T the
level of the largest kept timestep and z_T ~ N(0, I):

  init_i = [s_i sigma_T > sigma_y] (ub_i / s_i + sqrt(sigma_T² - sigma_y² / s_i²) z_T,i)
           + [otherwise] sigma_T z_T,i,          x_T = V(init) / sigma_T.

(x_T = V(init) / sigma_T is the official scaling; the DDPM one would be
sqrt(abar_T) V(init), which differs by the factor 1 / sqrt(1 - abar_T), 1 + 5e-5 at
t = 950.) The per-step noises of the three rules are independent draws in the
official code; each coefficient uses one rule, so here one (n,) draw per step
serves all three (the same distribution; `ddrm_chain` takes the draws, so the
official ones can be fed in, see tests/test_ddrm.py).

Deviation kept on purpose: the official code sends a singular value s_i = 0
that lies INSIDE len(s) to the "after" rule when sigma_y > 0 (`cond_after_lite
= singulars * sigma_next < sigma_0` is true for s = 0). Its own operators have
no such zeros except the thresholded `Deblurring`; jaxir's `Inpaint` lists the
missing pixels as zeros inside len(s). jaxir follows the paper (eq. 7-8: s_i = 0
is the first case); `official_zero_singulars=True` reproduces the official rule.

Scales: images on [-1, 1]. The official `--sigma_0` is the noise std on [0, 1]
images; `runners/diffusion.py` doubles it (`args.sigma_0 = 2 * args.sigma_0`)
and adds that std to y of the [-1, 1] image. jaxir's `sigma_y` is always the std
on the [-1, 1] scale: the README's `--sigma_0 0.05` is `sigma_y = 0.1`.

References:
  Kawar, Elad, Ermon, Song, "Denoising Diffusion Restoration Models", NeurIPS
  2022 (arXiv:2201.11793), eq. 7-8 and Appendix. Official code:
  bahjat-kawar/ddrm (`functions/denoising.py` `efficient_generalized_steps`,
  `runners/diffusion.py` `sample_sequence`, `sample_image`, `main.py`, README).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import x0_from_eps
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import SVDOperator
from jaxir.solvers.common import (callable_module, check_measurement, eps_single, preset,
                                  residual_norm)
from jaxir.tasks import TASKS

__all__ = ["DDRMConfig", "DDRMInfo", "DDRM_PRESETS", "ddrm_preset", "ddrm_timesteps",
           "spectral_measurement", "ddrm_start", "ddrm_update", "ddrm_step", "ddrm_chain",
           "ddrm"]

_SVD_OPERATORS = ("Identity, Inpaint, Colorization, AvgPoolSR, BicubicSR, CircularBlur, "
                  "SeparableBlur, WalshHadamardCS, MatrixOperator")


@dataclasses.dataclass(frozen=True)
class DDRMConfig:
  """DDRM settings (defaults: the official README runs).

  Attributes:
    steps: respaced steps; timesteps range(0, N, N // steps) (official
      `runners/diffusion.py` `sample_image`; README commands `--timesteps 20`;
      `main.py`'s own default is 1000). When steps does not divide N the
      official sequence has ceil(N / (N // steps)) entries; so does this one.
    eta: the paper's eta (official `main.py --eta`, default 0.85; used as both
      `etaA` and `etaC`).
    eta_b: the paper's eta_b (official `main.py --etaB`, default 1), in [0, 1].
    sigma_y: measurement noise std on the [-1, 1] scale that the solver assumes
      (= 2 x official `--sigma_0`, which is on [0, 1]; `main.py` requires the
      flag; 0.0 is the README's noiseless deblurring run).
    clip_output: clip the result to [-1, 1] (official: `inverse_data_transform`
      clamps the saved image to [0, 1]; the chain itself never clips).
    official_zero_singulars: treat s_i = 0 inside len(s) as the official code
      does (see the module docstring); False follows the paper.
  """
  steps: int = 20  # README: --timesteps 20
  eta: float = 0.85  # main.py: --eta default 0.85
  eta_b: float = 1.0  # main.py: --etaB default 1
  sigma_y: float = 0.0  # README deblur_uni: --sigma_0 0.0 (main.py: required)
  clip_output: bool = True  # datasets/__init__.py inverse_data_transform: clamp(0, 1)
  official_zero_singulars: bool = False  # paper eq. 7-8 (s_i = 0 case)

  def __post_init__(self):
    if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) \
        or self.steps < 1:
      raise ConfigError(f"DDRM needs an integer number of steps >= 1; got steps={self.steps!r}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ConfigError(f"DDRM eta must lie in [0, 1] (noise share sigma eta); got {self.eta}.")
    if not 0.0 <= self.eta_b <= 1.0:
      raise ConfigError(f"DDRM eta_b must lie in [0, 1] (above 1 the 'before' noise std "
                        f"sqrt(sigma^2 - eta_b^2 sigma_y^2 / s^2) can be imaginary); got "
                        f"{self.eta_b}.")
    if not (math.isfinite(self.sigma_y) and self.sigma_y >= 0.0):
      raise ConfigError(f"DDRM sigma_y (measurement noise std on [-1, 1]) must be a finite "
                        f"number >= 0; got {self.sigma_y}.")


class DDRMInfo(NamedTuple):
  """Diagnostics of a DDRM solve.

  Attributes:
    nfe: network evaluations (int32 scalar, = len(ddrm_timesteps(steps))).
    residual: ||A(x) - y|| of the returned image (float32 scalar).
  """
  nfe: jax.Array
  residual: jax.Array


#: Official defaults (20 steps, eta 0.85, eta_b 1) with each task's measurement noise
#: `jaxir.tasks.TASKS[name].sigma_y` (on [-1, 1]). "gaussian_deblur" needs its operator in
#: SVD form (`CircularBlur.from_blur`); the task's reflect-padded `Blur` is not one.
DDRM_PRESETS: dict[str, DDRMConfig] = {
    name: DDRMConfig(sigma_y=TASKS[name].sigma_y)
    for name in ("sr4", "sr4_avgpool", "deblur_gauss", "gaussian_deblur", "box_inpaint",
                 "random_inpaint", "colorize", "denoise")}


def ddrm_preset(name: str, **overrides) -> DDRMConfig:
  """A named preset (`DDRM_PRESETS`), optionally with fields replaced."""
  return preset(DDRM_PRESETS, name, "DDRM", **overrides)


def ddrm_timesteps(steps: int, num_timesteps: int = 1000) -> np.ndarray:
  """The official sequence range(0, N, N // steps), ascending, int64.

  steps = 20, N = 1000: 0, 50, ..., 950. When steps does not divide N it has
  ceil(N / (N // steps)) entries (e.g. steps = 3: 0, 333, 666, 999).
  """
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) \
      or not 1 <= steps <= num_timesteps:
    raise ConfigError(f"steps must be an integer in [1, {num_timesteps}]; got {steps!r}.")
  return np.arange(0, num_timesteps, num_timesteps // int(steps), dtype=np.int64)


def _check_svd(operator):
  if not isinstance(operator, SVDOperator):
    raise ConfigError(f"DDRM works in the SVD basis of the operator and needs an "
                      f"SVDOperator ({_SVD_OPERATORS}); got {type(operator).__name__}. "
                      "For a padded Blur use CircularBlur.from_blur(op) or a SeparableBlur.")


def spectral_measurement(operator, y):
  """(s, ub): singular values and Uᵀ y, both zero-padded to n = H W C, float32.

  Args:
    operator: an `SVDOperator`.
    y: one measurement, shape `operator.out_shape`.
  """
  _check_svd(operator)
  n = math.prod(operator.in_shape)
  s = jnp.asarray(operator.singulars(), jnp.float32)
  ub = jnp.asarray(operator.UT(y), jnp.float32)
  m = s.shape[0]
  if ub.shape != (m,):
    raise ShapeError(f"{type(operator).__name__}.UT(y) has shape {ub.shape}; DDRM needs "
                     f"({m},), one coefficient per singular value.")
  pad = lambda v: jnp.zeros((n,), jnp.float32).at[:m].set(v)
  return pad(s), pad(ub)


def _sigma(abar):
  """Noise level of x_t / sqrt(abar): sqrt(1 - abar) / sqrt(abar)."""
  return jnp.sqrt(1.0 - abar) / jnp.sqrt(abar)


def ddrm_start(operator, s, ub, z_T, abar_T, sigma_y: float):
  """x_T drawn from the official p(x_T | y) (module docstring), one (H, W, C) image.

  Args:
    operator: the `SVDOperator` (its `V`).
    s, ub: padded singular values and Uᵀ y (`spectral_measurement`).
    z_T: standard normal draw, (H, W, C) or (n,), used flattened (row-major)
      as the spectral noise (the official uses its NCHW draw flattened).
    abar_T: alphas_cumprod of the first (largest) timestep.
    sigma_y: measurement noise std on [-1, 1].
  """
  z = jnp.reshape(z_T, (-1,)).astype(jnp.float32)
  sig = _sigma(abar_T)
  large = s * sig > sigma_y
  s_safe = jnp.where(large, s, 1.0)
  inv = jnp.where(large, sigma_y / s_safe, 0.0)
  init = jnp.where(large, ub / s_safe, 0.0)
  init = init + jnp.sqrt(jnp.maximum(sig ** 2 - inv ** 2, 0.0)) * z
  return operator.V(init / sig)


def ddrm_update(v0, v_eps, s, ub, z, sigma_next, *, eta: float, eta_b: float, sigma_y: float,
                m=None, official_zero_singulars: bool = False):
  """The spectral update (the three cases of the module docstring), all (n,) vectors.

  Args:
    v0, v_eps: Vᵀ x0_t and Vᵀ eps.
    s, ub: padded singular values and Uᵀ y.
    z: (n,) standard normal draw.
    sigma_next: noise level of the next step (0 at the last one).
    eta, eta_b, sigma_y: see `DDRMConfig`.
    m: number of singular values (entries at or beyond m are never measured);
      needed only with `official_zero_singulars`.
    official_zero_singulars: the official rule for s_i = 0 inside len(s).

  Returns:
    (n,) coefficients of x_next / sqrt(abar_next).
  """
  if official_zero_singulars:
    inside = jnp.arange(s.shape[0]) < (s.shape[0] if m is None else m)
  else:
    inside = s > 0
  before = inside & (s * sigma_next > sigma_y)
  after = inside & (s * sigma_next < sigma_y)
  std = sigma_next * eta
  tilde = jnp.sqrt(sigma_next ** 2 - std ** 2)
  missing_v = v0 + tilde * v_eps + std * z
  sy = jnp.where(sigma_y > 0, sigma_y, 1.0)  # `after` is empty when sigma_y = 0
  after_v = v0 + tilde * ((ub - s * v0) / sy) + std * z
  s_b = jnp.where(before, s, 1.0)
  diff_b = jnp.sqrt(jnp.maximum(sigma_next ** 2 - sigma_y ** 2 / s_b ** 2 * eta_b ** 2, 0.0))
  before_v = ub / s_b * eta_b + (1.0 - eta_b) * v0 + diff_b * z
  return jnp.where(before, before_v, jnp.where(after, after_v, missing_v))


def ddrm_step(operator, x_t, eps, abar_t, abar_next, s, ub, z, *, eta: float, eta_b: float,
              sigma_y: float, official_zero_singulars: bool = False):
  """One DDRM step from x_t (at abar_t) to x_next (at abar_next; 1 at the last step).

  Returns:
    (x_next, x0_t): (H, W, C) each; x0_t is the unclipped x0 estimate.
  """
  x0 = x0_from_eps(x_t, eps, abar_t)
  v = ddrm_update(operator.VT(x0), operator.VT(eps), s, ub, z, _sigma(abar_next), eta=eta,
                  eta_b=eta_b, sigma_y=sigma_y, m=operator.singulars().shape[0],
                  official_zero_singulars=official_zero_singulars)
  return jnp.sqrt(abar_next) * operator.V(v), x0


def ddrm_chain(z_T, noises, y, operator, prior, *, steps: int = 20, eta: float = 0.85,
               eta_b: float = 1.0, sigma_y: float = 0.0, official_zero_singulars: bool = False):
  """The DDRM chain for given draws, in one `lax.scan` (no clipping).

  Args:
    z_T: (H, W, C) standard normal draw of the start (`ddrm_start`).
    noises: (S, n) standard normal draws, one per step in sampling order
      (largest timestep first), S = len(ddrm_timesteps(steps)).
    y: one measurement, shape `operator.out_shape`.
    operator: an `SVDOperator`.
    prior: a `jaxir.priors.Prior` (alphas from `prior.schedule`).
    steps, eta, eta_b, sigma_y, official_zero_singulars: see `DDRMConfig`.

  Returns:
    (x0, x_T): the chain's output (the last x0_t, passed through V Vᵀ) and its start.
  """
  _check_svd(operator)
  check_measurement(y, operator, prior=prior)
  ac = jnp.asarray(prior.schedule.alphas_cumprod, jnp.float32)
  ts = ddrm_timesteps(steps, prior.schedule.num_timesteps)
  n = math.prod(operator.in_shape)
  if tuple(jnp.shape(noises)) != (ts.size, n):
    raise ShapeError(f"noises has shape {tuple(jnp.shape(noises))}; expected ({ts.size}, {n}): "
                     "one (H W C,) draw per step.")
  t_seq = ts[::-1].astype(np.int32)
  t_next = np.append(ts[:-1][::-1], -1).astype(np.int32)
  a_t = ac[t_seq]
  a_next = jnp.where(t_next >= 0, ac[np.maximum(t_next, 0)], 1.0)
  s, ub = spectral_measurement(operator, y)
  x_T = ddrm_start(operator, s, ub, z_T, a_t[0], sigma_y)

  def body(x, inp):
    t, a, an, z = inp
    eps = eps_single(prior, x, t)
    x_next, _ = ddrm_step(operator, x, eps, a, an, s, ub, z, eta=eta, eta_b=eta_b,
                          sigma_y=sigma_y, official_zero_singulars=official_zero_singulars)
    return x_next, None

  x, _ = jax.lax.scan(body, x_T, (t_seq, a_t, a_next, jnp.asarray(noises, jnp.float32)))
  return x, x_T


def ddrm(key, y, operator, prior, config: DDRMConfig = DDRMConfig()):
  """Restore one image with DDRM.

  Pure and jit-able (`config` static); `jax.vmap` over (key, y) solves a batch.

  Args:
    key: `jax.random` key (the start draw and one spectral draw per step).
    y: one measurement, shape `operator.out_shape`, on the [-1, 1] image scale.
    operator: an `SVDOperator` on `operator.in_shape` images.
    prior: a `jaxir.priors.Prior`.
    config: `DDRMConfig` (see `DDRM_PRESETS`); `config.sigma_y` must be the
      noise std of y.

  Returns:
    (x, info): the (H, W, C) restoration and a `DDRMInfo`.

  References:
    Kawar et al., DDRM, NeurIPS 2022; bahjat-kawar/ddrm `functions/denoising.py`.
  """
  _check_svd(operator)
  check_measurement(y, operator, prior=prior)
  S = ddrm_timesteps(config.steps, prior.schedule.num_timesteps).size
  k_start, k_steps = jax.random.split(key)
  shape = tuple(operator.in_shape)
  z_T = jax.random.normal(k_start, shape, jnp.float32)
  noises = jax.random.normal(k_steps, (S, math.prod(shape)), jnp.float32)
  x, _ = ddrm_chain(z_T, noises, y, operator, prior, steps=config.steps, eta=config.eta,
                    eta_b=config.eta_b, sigma_y=config.sigma_y,
                    official_zero_singulars=config.official_zero_singulars)
  if config.clip_output:
    x = jnp.clip(x, -1.0, 1.0)
  info = DDRMInfo(nfe=jnp.asarray(S, jnp.int32), residual=residual_norm(operator, x, y))
  return x, info


callable_module(__name__, ddrm)
