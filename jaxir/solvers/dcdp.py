"""DCDP: decoupled data consistency with diffusion purification, one jit-compiled solve.

Starting from x = 0, each outer iteration k = 0..K-1
  1. reconstructs: `tau` heavy-ball steps on mean((A x - y)^2), warm-started
     from x (momentum buffer reset every iteration), and
  2. purifies: noises the result to timestep t_k - 1 with one forward draw and
     denoises it by deterministic DDIM over `space_timesteps(t_k, min(N, t_k))`
     (x0 clipped to [-1, 1] at each step), or by one Tweedie step.

The official code sets learning rates for the MEAN over the m measurement
entries, so the step on 1/2||Ax - y||^2 is 2 lr / m (`effective_step`). A
config with `lr_size` set keeps that step on any operator: the solver uses
lr * m / lr_size.

All loops are `lax` loops over tables precomputed on the host (the DDIM steps
of every t_k, padded to one length and masked), so one `jax.jit` compiles the
whole solve and `jax.vmap` batches it.

References:
  Li, Kwon, Alkhouri, Ravishankar, Qu, "Decoupled Data Consistency with
  Diffusion Purification for Image Restoration", 2024 (arXiv:2403.06054).
  Official code: Morefre/Decoupled-Data-Consistency-with-Diffusion-Purification-
  for-Image-Restoration (`dcdp.py`, `purification_configurations/*.yaml`).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import ddim_loop, q_sample
from jaxir.diffusion.respace import space_timesteps
from jaxir.errors import ConfigError
from jaxir.solvers.common import (callable_module, check_measurement, noise_like, preset,
                                  residual_norm)

__all__ = ["DCDPConfig", "DCDPInfo", "DCDP_PRESETS", "dcdp_preset", "for_noise", "stable_mu",
           "effective_step", "rescale_lr", "dcdp_schedule", "dcdp_nfe", "PurificationTable",
           "purification_table", "purify_row", "data_consistency", "purify", "dcdp"]


@dataclasses.dataclass(frozen=True)
class DCDPConfig:
  """DCDP hyperparameters (defaults: the official FFHQ-256 SR x4 configuration).

  Attributes:
    K: outer iterations (official `total_num_iterations`, SR x4: 10).
    tau: gradient steps per data-consistency phase (official
      `csgm_num_iterations`, SR x4: 100).
    lr: step of torch SGD on mean((A x - y)^2) (official `lr`, SR x4: 1e3).
    momentum: heavy-ball momentum (official `momentum`: 0.9).
    mu: weight of the proximal term mean((x - x_k)^2) (official
      `weight_decay_lambda`, off: 0).
    T0: first purification timestep (official `ddim_init_timestep`, SR x4: 400).
    TK: last purification timestep before the zero-to-one fix (official
      `ddim_end_timestep`: 0).
    ddim_steps: most DDIM steps per purification (official
      `ddim_num_iterations`: 20).
    tweedie: one Tweedie x0 step instead of DDIM (official `full_ddim: False`).
    sigma_y: measurement noise std (on [-1, 1]) the setting is meant for
      (official noise `sigma`: 0). The solver does not read it; `for_noise`
      uses it to move a preset to another noise level.
    lr_size: number of measurement entries `lr` was set for (None: use `lr`
      as is). When set, the solver uses lr * m / lr_size on an operator with m
      output entries, which keeps the effective step 2 lr / m of the preset.
  """
  K: int = 10
  tau: int = 100
  lr: float = 1e3
  momentum: float = 0.9
  mu: float = 0.0
  T0: int = 400
  TK: int = 0
  ddim_steps: int = 20
  tweedie: bool = False
  sigma_y: float = 0.0
  lr_size: int | None = None

  def __post_init__(self):
    if self.K < 1 or self.tau < 0 or self.ddim_steps < 1:
      raise ConfigError(f"DCDP needs K >= 1, tau >= 0 and ddim_steps >= 1; got K={self.K}, "
                        f"tau={self.tau}, ddim_steps={self.ddim_steps}.")
    if not 0 <= self.TK <= self.T0 or self.K > max(self.T0, 1):
      raise ConfigError(f"DCDP needs 0 <= TK <= T0 and K <= T0; got K={self.K}, "
                        f"T0={self.T0}, TK={self.TK}.")
    if not self.lr > 0 or not 0 <= self.momentum < 1 or self.mu < 0:
      raise ConfigError(f"DCDP needs lr > 0, 0 <= momentum < 1 and mu >= 0; got lr={self.lr}, "
                        f"momentum={self.momentum}, mu={self.mu}.")
    if self.lr_size is not None and self.lr_size < 1:
      raise ConfigError(f"lr_size must be a positive entry count or None; got {self.lr_size}.")


# Measurement sizes m of the official FFHQ-256 operators (DPS's operators, NCHW
# 3x256x256): bicubic x4 gives 3x64x64; blurs and the masking inpainting keep
# 3x256x256; phase retrieval pads 64 a side, giving 3x384x384 amplitudes.
_M_SR4, _M_FULL, _M_PR = 3 * 64 * 64, 3 * 256 * 256, 3 * 384 * 384

DCDP_PRESETS: dict[str, DCDPConfig] = {
    # purification_config_super_resolution.yaml (commit 3d0e207).
    "sr4": DCDPConfig(K=10, tau=100, lr=1e3, T0=400, lr_size=_M_SR4),
    # purification_config_gaussian_deblur.yaml (61x61, std 3.0).
    "gaussian_deblur": DCDPConfig(K=10, tau=100, lr=1e5, T0=400, lr_size=_M_FULL),
    # purification_config_motion_deblur.yaml (61x61, intensity 0.5).
    "motion_deblur": DCDPConfig(K=10, tau=100, lr=1e5, T0=400, lr_size=_M_FULL),
    # purification_config_inpainting.yaml (100x100 hole at [100:200, 100:200]).
    "box_inpaint": DCDPConfig(K=20, tau=50, lr=1e3, T0=700, lr_size=_M_FULL),
    # purification_config_phase_retrieval.yaml (oversample 2.0).
    "phase_retrieval": DCDPConfig(K=200, tau=100, lr=500.0, T0=1000, TK=20, lr_size=_M_PR),
}


def _tuned(official: str, **changes) -> DCDPConfig:
  return dataclasses.replace(DCDP_PRESETS[official], **changes)


# Tuned for jaxir's shipped priors ("<prior>/<task>", used by the command line and the
# quality table) on 8 TRAINING images with each task's noise (sigma_y 0.05; 0.2 for denoise),
# Tweedie variant, official lr; kept only where they beat the official preset by >= 0.1 dB.
# The proximal weight mu keeps the data-consistency phase from fitting the noise; `for_noise`
# scales it with the noise variance (mu = 0, the official setting, without noise). mnist32:
# re-tuned for the one-channel 34,000-step prior (2026-12-02) with `jaxir experiment
# experiments/configs/tune_dcdp_mnist32.toml` (mu in {0, 0.1, 0.3, 1} x T0 in {50, ..., 400};
# results in experiments/results/tune_dcdp_mnist32/); sr4 and box_inpaint gained < 0.1 dB and
# keep the official presets. At the blurs' official lr (step 2 lr / lr_size on the mean)
# the heavy-ball iteration is stable only for mu below about 2.7 (mu = 3 diverged in the
# tuning); `for_noise` would pass it at sigma_y of about 0.08 from the mnist32 preset and
# 0.1 from natural64's, and caps mu there (`stable_mu`).
DCDP_PRESETS.update({
    # dB on the training images, tuned vs official, in the comments.
    "mnist32/gaussian_deblur": _tuned("gaussian_deblur", T0=50, mu=1.0,
                                      sigma_y=0.05),  # 38.65/33.80
    "mnist32/motion_deblur": _tuned("motion_deblur", T0=100, mu=0.1, sigma_y=0.05),  # 30.03/16.49
    "mnist32/denoise": _tuned("sr4", TK=30, T0=100, mu=1.0, sigma_y=0.2),  # 30.46/27.45 (TK 30)
    # natural64, same procedure on 8 TRAINING patches (64x64). Deblurring re-tuned on the
    # 1,791-step weights (2026-12-01), grids mu in {0.1, ..., 1} x T0 in {50, ..., 400}: the
    # better prior needs less purification noise; denoise: mu in {0, 0.1, 0.3, 1} x TK in
    # {0, 30} at the official T0 (346-step weights).
    "natural64/gaussian_deblur": _tuned("gaussian_deblur", mu=0.7, T0=50,
                                        sigma_y=0.05),  # 34.00/13.83
    "natural64/motion_deblur": _tuned("motion_deblur", mu=0.3, T0=100,
                                      sigma_y=0.05),  # 30.85/14.72
    "natural64/denoise": _tuned("sr4", TK=30, mu=1.0, sigma_y=0.2),  # 26.77/21.31
})


def for_noise(config: DCDPConfig, sigma_y: float) -> DCDPConfig:
  """The config for measurements with noise std `sigma_y` (on [-1, 1]).

  The proximal weight mu acts as a Tikhonov weight sigma_y^2 / s^2 (s: the
  error of the purified estimate), so a preset tuned with mu > 0 at noise
  `config.sigma_y` > 0 gets mu * (sigma_y / config.sigma_y)^2: mu = 0 without
  noise, which is the official setting. Other presets only get sigma_y set.

  The scaled mu is capped at `stable_mu(config)`: past it the heavy-ball
  data-consistency phase diverges on any operator with ||A|| <= 1 and no more
  outputs than inputs (blurs, masks, the identity), which a large noise level
  would otherwise reach silently (e.g. the mnist32 Gaussian-deblur preset at
  sigma_y 0.1).
  """
  sigma_y = float(sigma_y)
  if sigma_y < 0:
    raise ConfigError(f"sigma_y must be >= 0; got {sigma_y}.")
  mu = config.mu
  if config.mu > 0 and config.sigma_y > 0:
    mu = min(config.mu * (sigma_y / config.sigma_y) ** 2, max(config.mu, stable_mu(config)))
  return dataclasses.replace(config, sigma_y=sigma_y, mu=mu)


def stable_mu(config: DCDPConfig, margin: float = 0.9) -> float:
  """Largest proximal weight mu whose data-consistency phase stays stable.

  On mean(|A x - y|^2) + mu mean((x - a)^2) with m outputs and n >= m inputs,
  the config's step (lr m / lr_size) times the Hessian's largest eigenvalue is
  at most e (||A||^2 + mu) with e = 2 lr / lr_size; heavy-ball momentum beta
  converges while that is below 2 (1 + beta). With ||A|| <= 1 this gives
  mu < 2 (1 + beta) / e - 1; `margin` keeps a safety factor. inf when the
  config has no `lr_size` (its step depends on the operator).
  """
  if config.lr_size is None:
    return float("inf")
  e = 2.0 * config.lr / config.lr_size
  return max(0.0, margin * 2.0 * (1.0 + config.momentum) / e - 1.0)


def dcdp_preset(name: str, **overrides) -> DCDPConfig:
  """A named preset (`DCDP_PRESETS`), optionally with fields replaced."""
  return preset(DCDP_PRESETS, name, "DCDP", **overrides)


def effective_step(config: DCDPConfig, m: int) -> float:
  """Step on 1/2||Ax - y||^2 that the config takes on an operator with m outputs."""
  lr = config.lr if config.lr_size is None else config.lr * m / config.lr_size
  return 2.0 * lr / m


def rescale_lr(config: DCDPConfig, m: int) -> DCDPConfig:
  """The config for an operator with m output entries, keeping 2 lr / m.

  Needs `lr_size` (the presets carry it); the result has lr_size = m.
  """
  if config.lr_size is None:
    raise ConfigError("rescale_lr needs config.lr_size, the measurement size lr was set "
                      "for; set it (e.g. dataclasses.replace(config, lr_size=m0)).")
  return dataclasses.replace(config, lr=config.lr * m / config.lr_size, lr_size=int(m))


def dcdp_schedule(K: int, T0: int, TK: int = 0) -> np.ndarray:
  """Purification timesteps t_0 > ... > t_{K-1} (int64, (K,)), official 'linear'.

  t = round(linspace(0, 1, K) (T0 - TK) + 1e-6), reversed, + TK, zeros set to 1.
  """
  t = np.round(np.linspace(0.0, 1.0, K) * (T0 - TK) + 1e-6).astype(np.int64)
  t = np.flip(t + TK).copy()
  t[t == 0] = 1
  return t


def _purification_steps(t_k: int, ddim_steps: int, tweedie: bool) -> list[int]:
  """Model timesteps (descending) of one purification, with the official t_k = 1 quirk.

  The estimate is noised to t_k - 1, but at t_k = 1 the sampler is built for
  t_k = 2: DDIM over space_timesteps(2, 2) = {1, 0}, or Tweedie at t = 1.
  """
  td = max(int(t_k), 2)
  if tweedie:
    return [td - 1]
  return sorted(space_timesteps(td, [min(ddim_steps, td)]), reverse=True)


def dcdp_nfe(config: DCDPConfig) -> int:
  """Network evaluations of one DCDP solve (182 for K=10, T0=400, DDIM)."""
  ts = dcdp_schedule(config.K, config.T0, config.TK)
  return sum(len(_purification_steps(t, config.ddim_steps, config.tweedie)) for t in ts)


class PurificationTable(NamedTuple):
  """Static purification steps of a schedule (leading axis K; index it for one row).

  Attributes:
    t_noise: (K,) int32 forward-noise timesteps t_k - 1.
    steps: (K, S) int32 model timesteps in sampling order.
    prev: (K, S) int32 the next, less noisy timestep; -1 where abar_prev = 1.
    mask: (K, S) bool, False on padding (those steps are skipped).
  """
  t_noise: np.ndarray
  steps: np.ndarray
  prev: np.ndarray
  mask: np.ndarray


def purification_table(t_ks, ddim_steps: int = 20, tweedie: bool = False,
                       pad_to: int | None = None) -> PurificationTable:
  """Host-built tables of the purifications of a schedule, padded to one length S.

  Args:
    t_ks: (K,) purification timesteps.
    ddim_steps: most DDIM steps per purification.
    tweedie: one Tweedie step per purification.
    pad_to: pad the step axis to this length (default: the longest row).

  Returns:
    A `PurificationTable` of numpy arrays.
  """
  rows = [_purification_steps(t, ddim_steps, tweedie) for t in np.asarray(t_ks).tolist()]
  S = max(len(r) for r in rows) if pad_to is None else int(pad_to)
  if S < max(len(r) for r in rows):
    raise ConfigError(f"pad_to={pad_to} is shorter than the longest purification "
                      f"({max(len(r) for r in rows)} steps).")
  steps = np.zeros((len(rows), S), np.int32)
  prev = np.full((len(rows), S), -1, np.int32)
  mask = np.zeros((len(rows), S), bool)
  for k, r in enumerate(rows):
    steps[k, : len(r)] = r
    prev[k, : len(r) - 1] = r[1:]
    mask[k, : len(r)] = True
  t_noise = np.asarray(t_ks, np.int64).astype(np.int32) - 1
  return PurificationTable(t_noise, steps, prev, mask)


def data_consistency(x_init, y, operator, *, tau: int, lr, momentum=0.9, mu=0.0,
                     x_anchor=None):
  """Heavy-ball descent on mean(|A(x) - y|^2) + mu mean((x - x_anchor)^2).

  torch.optim.SGD with momentum (dampening 0) from a fresh buffer: buf <-
  momentum buf + g, x <- x - lr buf. The gradient comes from autodiff, so
  nonlinear operators work.

  Args:
    x_init: (H, W, C) start (warm start).
    y: one measurement, the operator's output shape.
    operator: a jaxir operator (`operator.A`).
    tau: number of steps (static).
    lr: step size on the mean squared error (official parameterization).
    momentum: heavy-ball momentum.
    mu: proximal weight; 0 drops the term.
    x_anchor: proximal centre (default x_init).

  Returns:
    (H, W, C) estimate after tau steps.
  """
  anchor = x_init if x_anchor is None else x_anchor
  use_prox = not (isinstance(mu, (int, float)) and mu == 0)

  def loss(x):
    r = operator.A(x) - y
    val = jnp.mean(jnp.real(r * jnp.conj(r))) if jnp.iscomplexobj(r) else jnp.mean(r * r)
    if use_prox:
      val = val + mu * jnp.mean((x - anchor) ** 2)
    return val

  grad = jax.grad(loss)

  def body(_, carry):
    x, buf = carry
    buf = momentum * buf + grad(x)
    return x - lr * buf, buf

  x, _ = jax.lax.fori_loop(0, int(tau), body, (x_init, jnp.zeros_like(x_init)))
  return x


def purify_row(prior, x, noise, row: PurificationTable):
  """Purification along one row of a `PurificationTable` (the lax-loop form).

  Noises x to row.t_noise with the given draw, then runs the deterministic DDIM
  steps of the row with the shared `ddim_loop` (masked steps skipped); the last
  step goes to abar_prev = 1, where the DDIM update returns the clipped x0. The
  row's arrays may be traced, so one compilation serves every t_k.

  Args:
    prior: a `jaxir.priors.Prior`.
    x: (H, W, C) estimate.
    noise: (H, W, C) standard normal draw.
    row: one row of `purification_table(...)` (e.g. `tree.map(lambda a: a[k], tab)`).

  Returns:
    (H, W, C) purified estimate.
  """
  ac = prior.schedule.alphas_cumprod
  x_t = q_sample(x, ac[row.t_noise], noise)
  a_prev = jnp.where(row.prev >= 0, ac[jnp.maximum(row.prev, 0)], 1.0)
  x0 = ddim_loop(prior.model, x_t[None], row.steps, ac[row.steps], a_prev, mask=row.mask,
                 clip_denoised=True)
  return x0[0]


def purify(prior, x, t_k: int, key_or_noise, *, ddim_steps: int = 20, tweedie: bool = False):
  """Diffusion purification of one estimate at timestep t_k (a Python int).

  Noises x to t_k - 1 with one forward draw, then runs deterministic DDIM
  (eta 0, x0 clipped each step) over space_timesteps(t_k, min(ddim_steps,
  t_k)) of the prior's schedule, or one Tweedie step at t_k - 1, and returns
  the final x0. At t_k = 1 it keeps the official quirk (noise to t = 0, then
  DDIM over t = 1, 0 or Tweedie at t = 1).

  Args:
    prior: a `jaxir.priors.Prior`.
    x: (H, W, C) estimate.
    t_k: purification timestep, 1 <= t_k <= T.
    key_or_noise: a `jax.random` key, or the (H, W, C) standard normal draw.
    ddim_steps: most DDIM steps.
    tweedie: one Tweedie step instead of DDIM.

  Returns:
    (H, W, C) purified estimate in [-1, 1].
  """
  try:
    t_k = int(t_k)
  except (TypeError, jax.errors.ConcretizationTypeError) as e:
    raise ConfigError("purify needs t_k as a Python int (it builds the DDIM steps on the "
                      "host); inside lax loops use purification_table.") from e
  T = prior.schedule.alphas_cumprod.shape[0]
  if not 1 <= t_k <= T:
    raise ConfigError(f"t_k={t_k} is outside [1, {T}] of the prior's schedule.")
  row = jax.tree.map(lambda a: a[0], purification_table([t_k], ddim_steps, tweedie))
  return purify_row(prior, x, noise_like(key_or_noise, x), row)


class DCDPInfo(NamedTuple):
  """Diagnostics of a DCDP solve.

  Attributes:
    nfe: network evaluations (int32 scalar).
    t: (K,) purification timesteps used.
    residual_dc: (K,) ||A(x) - y|| after each data-consistency phase.
    residual: (K,) ||A(x) - y|| after each purification.
    x_before_last_purification: (H, W, C) the last data-consistency output.
    diverged: bool scalar, True when a data-consistency phase ended with a data
      residual above twice its starting one (or not finite): its step lr or
      proximal weight mu is past the heavy-ball stability limit (`stable_mu`),
      and the image is not a restoration. Lower lr or mu.
  """
  nfe: jax.Array
  t: jax.Array
  residual_dc: jax.Array
  residual: jax.Array
  x_before_last_purification: jax.Array
  diverged: jax.Array


def dcdp(key, y, operator, prior, config: DCDPConfig = DCDPConfig()):
  """Restore one image with DCDP.

  Pure and jit-able as a whole (`config` static); `jax.vmap` over (key, y)
  (and over the operator's arrays) solves a batch.

  Args:
    key: `jax.random` key (one forward-diffusion draw per outer iteration).
    y: one measurement, shape `operator.out_shape`.
    operator: a jaxir operator on `operator.in_shape` images (linear or not).
    prior: a `jaxir.priors.Prior` (network or analytic).
    config: `DCDPConfig` (see `DCDP_PRESETS`).

  Returns:
    (x, info): the final purified (H, W, C) estimate and a `DCDPInfo`.

  References:
    Li et al., "Decoupled Data Consistency with Diffusion Purification for
    Image Restoration", 2024, Algorithm 1 (pixel space).
  """
  check_measurement(y, operator, prior=prior)
  T = prior.schedule.alphas_cumprod.shape[0]
  if config.T0 > T:
    raise ConfigError(f"T0={config.T0} exceeds the prior's {T} timesteps; lower T0.")
  ts = dcdp_schedule(config.K, config.T0, config.TK)
  tab = purification_table(ts, config.ddim_steps, config.tweedie)
  m = int(np.prod(operator.out_shape))
  lr = config.lr if config.lr_size is None else config.lr * m / config.lr_size
  x0 = jnp.zeros(tuple(operator.in_shape), jnp.float32)
  keys = jax.random.split(key, config.K)

  def outer(carry, inp):
    x, _, res_x = carry  # res_x = ||A(x) - y||, the last purification's residual
    k, row = inp
    x_dc = data_consistency(x, y, operator, tau=config.tau, lr=lr, momentum=config.momentum,
                            mu=config.mu, x_anchor=x)
    noise = jax.random.normal(k, x.shape, x.dtype)
    x_new = purify_row(prior, x_dc, noise, row)
    res_dc, res_new = residual_norm(operator, x_dc, y), residual_norm(operator, x_new, y)
    # A stable phase lowers |A x - y|^2 + mu |x - x_k|^2 from its start (mu term 0 there).
    uphill = ~(res_dc <= 2.0 * res_x + 1e-6)
    return (x_new, x_dc, res_new), (res_dc, res_new, uphill)

  (x, x_dc, _), (res_dc, res, uphill) = jax.lax.scan(
      outer, (x0, x0, residual_norm(operator, x0, y)), (keys, tab))
  info = DCDPInfo(nfe=jnp.asarray(int(tab.mask.sum()), jnp.int32),
                  t=jnp.asarray(ts, jnp.int32), residual_dc=res_dc, residual=res,
                  x_before_last_purification=x_dc, diverged=jnp.any(uphill))
  return x, info


callable_module(__name__, dcdp)
