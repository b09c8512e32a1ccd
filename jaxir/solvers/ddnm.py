"""DDNM and DDNM+: a DDIM chain whose x0 estimate keeps the measured range space.

At every step t -> t' (respaced, highest first) the network predicts eps, the
estimate x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is corrected and the
chain moves on with the DDNM weighting (no clipping), sigma_t = sqrt(1 - abar_t'):

  DDNM (sigma_y = 0, official `ddnm_diffusion`):
    x0_hat = A^+ y + (I - A^+ A) x0,
    x_t'   = sqrt(abar_t') x0_hat + sigma_t (eta z + sqrt(1 - etw^2) eps),  etw = eta.

  DDNM+ (sigma_y > 0, official `ddnm_plus_diffusion` with the operators' `Lambda`
  and `Lambda_noise`, paper eq. 17-19 and App. I), in the SVD basis A = U diag(s) V^T,
  with a = sqrt(abar_t') and nu_i = a sigma_y / s_i the noise std that y carries
  into coefficient i of sqrt(abar_t') A^+ y:
    range, sigma_t >= nu_i:  lambda_i = 1,  noise_i = sqrt(sigma_t^2 - nu_i^2) z_i;
    range, sigma_t <  nu_i:  lambda_i = sigma_t sqrt(1 - eta^2) / nu_i,  noise_i = sigma_t eta z_i;
    null space (s_i = 0):    noise_i = sigma_t (eta z_i + sqrt(1 - eta^2) (V^T eps)_i);
    x0_hat = x0 - V diag(lambda) V^T A^+ (A x0 - y),   x_t' = sqrt(abar_t') x0_hat + V noise,
  so every coefficient of x_t' carries noise variance sigma_t^2, the measurement
  noise included. At the last step (abar = 1) lambda = 0 in the range: the result
  is the network's own x0 there, not A^+ y.

Both are `jaxir.diffusion.ddim_step` with the correction as `x0_fn` (`keep_eps`,
`etw`); DDNM+ then moves each coefficient's noise and eps weights to the above.

Time travel (paper sec. 3.3, official `get_schedule_jump`, from RePaint), length L
and repeat r: after landing on level j, j in range(0, T - L, L), r - 1 times each,
the chain jumps back to level j + L by re-noising the step's UNcorrected x0
(official `x0_preds[-1]`) and samples down again. `ddnm_schedule` tabulates this,
one row per network call, so the solve is one `lax.scan`. Official L = r = 1: none.

Timesteps: the official k * (N // T), k = T - 1, ..., 0, then abar = 1.
`chain="deqir"` runs DeqIR's sequential chain instead (`ddnm_chain`).

`sigma_y` is on the [-1, 1] scale; the official `--sigma_y` is on [0, 1] and
doubled in `guided_diffusion/diffusion.py` ("to account for scaling to [-1,1]"),
so `--sigma_y 0.1` is sigma_y = 0.2 here. This is the SVD-based code that the
paper's `evaluation.sh` runs; the README demos' `--simplified` variant (no SVD,
noise scaled by sqrt(1 - abar'^2)) is not reproduced.

Differences from the official DDNM+ code, on purpose: (1) `Lambda_noise` weights
the pixel-ordered eps (and z) as if they were spectral coefficients (its V^T is
only the permutation), which for SR, blur and compressed sensing puts eps in the
wrong basis; here eps and z go through V^T (for z the law is the same).
(2) The official `Deblurring` reads unthresholded singular values in `Lambda`/
`Lambda_noise` but thresholded ones in its pinv; here the spectrum `pinv` uses
(`svd()`'s s, zero below `pinv_rcond * max(s)`) defines range and null space.
(3) At sigma_t == nu_i exactly (measure zero) the first branch applies here.

Neither is an exact posterior sampler. With exact scores (analytic priors,
tests/test_posterior_samplers.py) DDNM's mean approaches the posterior mean as T
grows, but eta > 0 keeps a covariance bias (its fresh noise is sigma_t eta per step,
not DDIM's posterior std); DDNM+ applies the measurement once per step, so past
about 100 steps its error grows again.

References:
  Wang, Yu, Zhang, "Zero-Shot Image Restoration Using Denoising Diffusion
  Null-Space Model" (DDNM), ICLR 2023, eq. 13-19, sec. 3.3, App. I. Official code:
  wyhuai/DDNM (`functions/svd_ddnm.py`: `ddnm_diffusion`, `ddnm_plus_diffusion`,
  `get_schedule_jump`; `functions/svd_operators.py`: `Lambda`, `Lambda_noise`;
  `guided_diffusion/diffusion.py`: `svd_based_ddnm_plus`; `main.py`; `configs/*.yml`;
  `evaluation.sh`; README).
  Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic
  Models", CVPR 2022 (the jump schedule).
  Cao et al., "Deep Equilibrium Diffusion Restoration with Parallel Sampling"
  (DeqIR), CVPR 2024. Official code: caojiezhang/DeqIR (`runners/diffusion.py`:
  `get_timestep_sequence_sr`, `get_additional_anderson_args_sr`; README command).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.diffusion.ddim import ddim_sample, ddim_step, q_sample, x0_from_eps
from jaxir.errors import ConfigError, ShapeError
from jaxir.solvers.common import (callable_module, check_measurement, eps_single, preset,
                                  residual_norm)

__all__ = ["DDNMConfig", "DDNMInfo", "DDNMSchedule", "DDNM_PRESETS", "ddnm_preset",
           "uniform_timesteps", "ddnm_schedule", "range_space_correction", "spectrum",
           "ddnm_plus_weights", "ddnm_step", "step_alphas", "draw_start", "ddnm_chain",
           "ddnm_sample", "ddnm"]

_CHAINS = ("ddnm", "deqir")


@dataclasses.dataclass(frozen=True)
class DDNMConfig:
  """DDNM / DDNM+ settings (defaults: the official DDNM runs).

  Attributes:
    T: respaced steps (official `configs/*.yml` `time_travel.T_sampling`: 100).
    eta: weight of the fresh noise, c_noise = sigma_t eta (official `main.py`
      `--eta` default 0.85; DeqIR's `nw`).
    etw: eps weight, c_eps = sigma_t sqrt(1 - etw^2); None: etw = eta, DDNM's
      coupling (DeqIR README: `--etw 0.1`). DDNM+ needs the coupling.
    sigma_y: measurement noise std on the [-1, 1] scale; 0 runs DDNM, > 0 DDNM+
      (official `main.py` `--sigma_y` default 0, on [0, 1]: twice that here).
    travel_length, travel_repeat: time-travel L and r (official `configs/*.yml`
      `time_travel.travel_length: 1`, `travel_repeat: 1`: no travel).
    chain: "ddnm" (the official sampler above) or "deqir" (DeqIR's sequential
      chain, `ddnm_chain`: `uniform_timesteps`, one shared noise draw, no DDNM+
      and no travel).
  """
  T: int = 100  # DDNM configs/celeba_hq.yml, imagenet_256.yml: T_sampling 100
  eta: float = 0.85  # DDNM main.py: --eta default 0.85 (README commands: --eta 0.85)
  etw: float | None = None  # DDNM functions/svd_ddnm.py: c2 uses the same eta
  sigma_y: float = 0.0  # DDNM main.py: --sigma_y default 0 (noise-free -> ddnm_diffusion)
  travel_length: int = 1  # DDNM configs/*.yml: time_travel.travel_length 1
  travel_repeat: int = 1  # DDNM configs/*.yml: time_travel.travel_repeat 1
  chain: str = "ddnm"  # DDNM functions/svd_ddnm.py

  def __post_init__(self):
    for name in ("T", "travel_length", "travel_repeat"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"DDNM needs an integer {name} >= 1; got {name}={v!r}.")
    if not 0.0 <= self.eta <= 1.0:
      raise ConfigError(f"eta must lie in [0, 1] (DDNM's noise weight); got {self.eta}.")
    if self.etw is not None and not 0.0 <= self.etw <= 1.0:
      raise ConfigError(f"etw must lie in [0, 1] (the eps weight is sqrt(1 - etw^2)) or be "
                        f"None; got {self.etw}.")
    if not self.sigma_y >= 0.0:
      raise ConfigError(f"sigma_y must be >= 0 (0: DDNM, > 0: DDNM+); got {self.sigma_y}.")
    if self.chain not in _CHAINS:
      raise ConfigError(f"chain must be one of {_CHAINS}; got {self.chain!r}.")
    if self.sigma_y > 0 and self.etw is not None and self.etw != self.eta:
      raise ConfigError(f"DDNM+ (sigma_y > 0) splits the noise with DDNM's coupling etw = eta; "
                        f"got etw={self.etw}, eta={self.eta}. Set etw=None.")
    if self.chain == "deqir" and (self.sigma_y > 0 or _travels(self)):
      raise ConfigError("chain='deqir' is DeqIR's noiseless chain without time travel; use "
                        "chain='ddnm' for sigma_y > 0 or travel_repeat > 1.")


def _travels(config: DDNMConfig) -> bool:
  return config.travel_repeat > 1 and config.T > config.travel_length


DDNM_PRESETS: dict[str, DDNMConfig] = {
    # DeqIR's sequential reference (README --timesteps 25 --etw 0.1; main.py --nw 0).
    "deqir": DDNMConfig(T=25, eta=0.0, etw=0.1, chain="deqir"),
    # The DDNM baselines, evaluation.sh (the paper's runs): `python main.py --ni --config
    # celeba_hq.yml --eta 0.85 --deg {DEG} --sigma_y 0.` (SVD-based), configs/*.yml
    # T_sampling 100, travel 1/1; the task only changes --deg (and --deg_scale).
    "sr4_avgpool": DDNMConfig(),  # --deg sr_averagepooling --deg_scale 4
    "sr4": DDNMConfig(),  # --deg sr_bicubic --deg_scale 4
    "deblur_gauss": DDNMConfig(),  # --deg deblur_gauss
    "box_inpaint": DDNMConfig(),  # --deg inpainting (mask exp/inp_masks/mask.npy)
    "random_inpaint": DDNMConfig(),  # --deg inpainting
    "colorize": DDNMConfig(),  # --deg colorization
    "cs_wh": DDNMConfig(),  # --deg cs_walshhadamard --deg_scale 0.25
    # Denoising needs noise (no official run): the README's noisy demo, --sigma_y 0.1 on
    # [0, 1] = 0.2 here (evaluation.sh's noisy SR/CS runs: --sigma_y 0.2, = 0.4 here).
    "denoise": DDNMConfig(sigma_y=0.2),
}


def ddnm_preset(name: str, **overrides) -> DDNMConfig:
  """A named preset (`DDNM_PRESETS`), optionally with fields replaced (e.g. sigma_y)."""
  return preset(DDNM_PRESETS, name, "DDNM", **overrides)


class DDNMInfo(NamedTuple):
  """Diagnostics of a DDNM solve.

  Attributes:
    nfe: network evaluations (int32 scalar; T plus the time-travel re-descents).
    residual: ||A(x) - y|| of the result (float32 scalar).
  """
  nfe: jax.Array
  residual: jax.Array


class DDNMSchedule(NamedTuple):
  """Host table of a DDNM run, one row per network call, in sampling order.

  Attributes:
    t: (S,) int32 model timesteps.
    t_next: (S,) int32 timestep the step lands on; -1 for abar = 1 (the end).
    t_travel: (S,) int32 timestep the chain jumps back to after the step; -1: none.
  """
  t: np.ndarray
  t_next: np.ndarray
  t_travel: np.ndarray


def uniform_timesteps(T: int, num_timesteps: int = 1000) -> np.ndarray:
  """DeqIR's 'uniform' respacing, highest first: int64 (T,).

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


def ddnm_schedule(T: int, travel_length: int = 1, travel_repeat: int = 1,
                  num_timesteps: int = 1000) -> DDNMSchedule:
  """The official DDNM step table with time travel (`get_schedule_jump` semantics).

  Levels k = T-1, ..., 0 map to timesteps k * (N // T); after each step landing
  on level j with j in range(0, T - L, L) (r - 1 times per such j) the chain
  jumps back to level j + L. Each row is one network call.

  Args:
    T: respaced steps; travel_length, travel_repeat: L and r (>= 1).
    num_timesteps: N, the prior's process length.

  Returns:
    A `DDNMSchedule` of int32 numpy arrays; T + (r - 1) L ceil((T - L) / L) rows.
  """
  if not isinstance(T, (int, np.integer)) or not 1 <= T <= num_timesteps:
    raise ConfigError(f"T must be an integer in [1, {num_timesteps}]; got {T!r}.")
  skip = num_timesteps // T
  left = {j: travel_repeat - 1 for j in range(0, T - travel_length, travel_length)}
  rows, k = [], T - 1
  while k >= 0:
    j, back = k - 1, -1
    if left.get(j, 0) > 0:
      left[j] -= 1
      back = j + travel_length
    rows.append((k * skip, j * skip if j >= 0 else -1, back * skip if back >= 0 else -1))
    k = back if back >= 0 else j
  t, t_next, t_travel = (np.asarray(c, np.int32) for c in zip(*rows))
  return DDNMSchedule(t, t_next, t_travel)


def _check_linear(operator):
  if not getattr(operator, "linear", False) or not hasattr(operator, "pinv"):
    raise ConfigError(f"{type(operator).__name__} is not a linear operator with a pseudo-"
                      "inverse; DDNM and DeqIR need A^+ (use an SVD operator such as "
                      "AvgPoolSR, Inpaint, Colorization or CircularBlur).")


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


def spectrum(operator) -> jax.Array:
  """|s| padded to the image size, (n,) float32, zero where `pinv` inverts nothing.

  Entry i belongs to coefficient i of `operator.VT(x)`; singular values at most
  `operator.pinv_rcond * max|s|` count as zero (the null space), as in `pinv`.
  """
  if not callable(getattr(operator, "svd", None)):
    raise ConfigError(f"{type(operator).__name__} has no SVD form; DDNM+ (sigma_y > 0) "
                      "needs a jaxir.operators.SVDOperator (Identity, Inpaint, AvgPoolSR, "
                      "Colorization, CircularBlur, SeparableBlur, WalshHadamardCS, "
                      "MatrixOperator), or set sigma_y=0.")
  s = jnp.abs(operator.svd()[2]).astype(jnp.float32)
  s = jnp.where(s > getattr(operator, "pinv_rcond", 0.0) * jnp.max(s), s, 0.0)
  n = math.prod(operator.in_shape)
  return jnp.zeros((n,), jnp.float32).at[: s.shape[0]].set(s)


def ddnm_plus_weights(s, abar_next, sigma_y, eta, etw=None):
  """DDNM+ per-coefficient weights (lambda, d_noise, d_eps), each shaped like s.

  Args:
    s: (n,) singular values per coefficient, 0 in the null space (`spectrum`).
    abar_next: alphas_cumprod of the step's target (1 at the last step).
    sigma_y: measurement noise std on [-1, 1] (> 0).
    eta: DDNM's eta.
    etw: the null space's eps weight is sigma_t sqrt(1 - etw^2); None: etw = eta,
      DDNM+'s own rule. DeqIR's chain passes its etw (its noiseless steps weight eps so).

  Returns:
    lambda (scales the range-space correction), d_noise (std of the fresh
    noise) and d_eps (weight of V^T eps): see the module docstring.
  """
  etw = eta if etw is None else etw
  sig = jnp.sqrt(1.0 - abar_next)
  rng = s > 0
  nu = jnp.sqrt(abar_next) * sigma_y / jnp.where(rng, s, 1.0)
  noisy = rng & (sig < nu)
  ce = math.sqrt(1.0 - eta ** 2)
  lam = jnp.where(noisy, sig * ce / jnp.where(noisy, nu, 1.0), 1.0)
  d_noise = jnp.where(rng & ~noisy, jnp.sqrt(jnp.maximum(sig ** 2 - nu ** 2, 0.0)), sig * eta)
  d_eps = jnp.where(rng, 0.0, sig * math.sqrt(1.0 - etw ** 2))
  return lam, d_noise, d_eps


def ddnm_step(x_t, eps, abar_t, abar_next, y, operator, noise, *, eta: float,
              etw: float | None = None, sigma_y: float = 0.0, s=None):
  """One DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0) step on one (H, W, C) image.

  Args:
    x_t: (H, W, C) state; eps: the network's eps at (x_t, t).
    abar_t, abar_next: alphas_cumprod now and at the target (1 at the end).
    y: one measurement; operator: linear with `pinv` (DDNM+: an SVD operator).
    noise: (H, W, C) standard normal draw; None with sigma_y > 0: the step is
      deterministic, eps standing in for it (DeqIR's chain with nw = 0).
    eta, etw: noise and eps weights (etw None: eta); sigma_y: static float.
    s: `spectrum(operator)` if already computed (DDNM+ only).

  Returns:
    (x_next, x0_hat): the next state and the corrected x0.
  """
  etw = eta if etw is None else etw
  if sigma_y > 0 and noise is None:  # deterministic DDNM+: the predicted eps carries the
    noise = eps                      # fresh-noise share, as DDIM's eta = 0 step carries it
  if sigma_y == 0:
    return ddim_step(x_t, eps, abar_t, abar_next, eta=eta, noise=noise, clip=False,
                     x0_fn=range_space_correction(operator, y), keep_eps=True, etw=etw)
  s = spectrum(operator) if s is None else s
  lam, d_noise, d_eps = ddnm_plus_weights(s, abar_next, sigma_y, eta, etw)
  V, VT = operator.V, operator.VT

  def correct(x0):
    return x0 - V(lam * VT(operator.pinv(operator.A(x0) - y)))

  x_next, x0_hat = ddim_step(x_t, eps, abar_t, abar_next, eta=eta, noise=noise, clip=False,
                             x0_fn=correct, keep_eps=True, etw=etw)
  # ddim_step added sigma_t (eta z + sqrt(1 - eta^2) eps); move each coefficient to its weight.
  sig = jnp.sqrt(1.0 - abar_next)
  extra = V((d_noise - sig * eta) * VT(noise) + (d_eps - sig * math.sqrt(1 - etw ** 2)) * VT(eps))
  return x_next + extra.astype(x_next.dtype), x0_hat


def step_alphas(prior, timesteps):
  """(abar_t, abar_next), float32 (T,) each, of the steps from `timesteps` (highest first)
  down to the next one, the last step ending at abar = 1."""
  a = jnp.asarray(prior.schedule.alphas_cumprod, jnp.float32)[jnp.asarray(timesteps, jnp.int32)]
  return a, jnp.concatenate([a[1:], jnp.ones((1,), jnp.float32)])


def draw_start(key, operator, nw: float):
  """(x_T, noise): the chain's start and, when nw != 0, its one shared noise draw
  (DeqIR's convention), both standard normal of `operator.in_shape`, float32."""
  k_x, k_n = jax.random.split(key)
  shape = tuple(operator.in_shape)
  x_T = jax.random.normal(k_x, shape, jnp.float32)
  return x_T, (jax.random.normal(k_n, shape, jnp.float32) if nw != 0.0 else None)


def ddnm_chain(x_T, y, operator, prior, *, T: int = 25, etw: float = 0.1, nw: float = 0.0,
               noise=None, sigma_y: float = 0.0):
  """DeqIR's sequential DDNM chain from a given x_T (deterministic for nw = 0).

  `uniform_timesteps(T)`, no clipping, x_next = sqrt(abar') x0_hat + sqrt(1 - abar')
  (sqrt(1 - etw^2) eps + nw z) with ONE draw z for all steps; Picard iteration of
  DeqIR's joint map reproduces it after T iterations. With sigma_y > 0 each step is
  `ddnm_step`'s DDNM+ step instead (eta = nw, the same etw; with nw = 0 deterministic, the
  predicted eps carrying DDNM+'s fresh-noise share).

  Args:
    x_T: (H, W, C) start at timestep `uniform_timesteps(T)[0]`.
    y: one measurement, shape `operator.out_shape`.
    operator: a linear operator with `pinv` (an SVD operator when sigma_y > 0).
    prior: a `jaxir.priors.Prior` (alphas from `prior.schedule`).
    T, etw, nw: steps, eps weight, noise weight.
    noise: (H, W, C) standard normal draw reused at every step (needed when nw > 0).
    sigma_y: measurement noise std on [-1, 1]; > 0: DDNM+'s noise-aware steps.

  Returns:
    (H, W, C) restored image x_0.
  """
  check_measurement(y, operator, prior=prior)
  if nw != 0.0 and noise is None:
    raise ConfigError("ddnm_chain with nw > 0 needs noise=(H, W, C), one standard normal "
                      "draw (draw_start gives it).")
  ts = uniform_timesteps(T, prior.schedule.num_timesteps)
  if sigma_y > 0.0:
    a, an = step_alphas(prior, ts)
    s = spectrum(operator)

    def body(x, inp):
      t, a_t, a_next = inp
      x_next, _ = ddnm_step(x, eps_single(prior, x, t), a_t, a_next, y, operator, noise,
                            eta=nw, etw=etw, sigma_y=sigma_y, s=s)
      return x_next, None

    x, _ = jax.lax.scan(body, x_T, (jnp.asarray(ts, jnp.int32), a, an))
    return x
  correct = range_space_correction(operator, y)
  x = ddim_sample(prior.model, x_T[None], ts, eta=nw, clip_denoised=False,
                  schedule=prior.schedule, x0_fn=lambda x0, t: jax.vmap(correct)(x0),
                  keep_eps=True, etw=etw, noise=None if noise is None else noise[None])
  return x[0]


def _run(x_T, draws, y, operator, prior, config: DDNMConfig, from_keys: bool):
  """The official DDNM / DDNM+ loop over `ddnm_schedule`, one `lax.scan`."""
  sched = ddnm_schedule(config.T, config.travel_length, config.travel_repeat,
                        prior.schedule.num_timesteps)
  travels = bool(np.any(sched.t_travel >= 0))
  ac = prior.schedule.alphas_cumprod
  s = spectrum(operator) if config.sigma_y > 0 else None

  def body(x, inp):
    t, t_next, t_travel, src = inp
    if from_keys:
      k_step, k_travel = jax.random.split(src)
      z = jax.random.normal(k_step, x.shape, x.dtype)
      z_travel = jax.random.normal(k_travel, x.shape, x.dtype) if travels else None
    else:
      z, z_travel = src
    eps = eps_single(prior, x, t)
    a_next = jnp.where(t_next >= 0, ac[jnp.maximum(t_next, 0)], 1.0)
    x_new, _ = ddnm_step(x, eps, ac[t], a_next, y, operator, z, eta=config.eta,
                         etw=config.etw, sigma_y=config.sigma_y, s=s)
    if travels:  # the official jump re-noises the step's UNcorrected x0 prediction
      back = q_sample(x0_from_eps(x, eps, ac[t]), ac[jnp.maximum(t_travel, 0)], z_travel)
      x_new = jnp.where(t_travel >= 0, back, x_new)
    return x_new, None

  x, _ = jax.lax.scan(body, x_T, (sched.t, sched.t_next, sched.t_travel, draws))
  return x, DDNMInfo(nfe=jnp.asarray(len(sched.t), jnp.int32),
                     residual=residual_norm(operator, x, y))


def _check(y, operator, prior, config: DDNMConfig):
  if not isinstance(config, DDNMConfig):
    raise ConfigError(f"config must be a DDNMConfig; got {type(config).__name__}.")
  check_measurement(y, operator, prior=prior)
  _check_linear(operator)
  if config.T > prior.schedule.num_timesteps:
    raise ConfigError(f"T={config.T} exceeds the prior's {prior.schedule.num_timesteps} "
                      "timesteps; lower T.")


def ddnm_sample(x_T, noise, y, operator, prior, config: DDNMConfig = DDNMConfig(),
                travel_noise=None):
  """The official DDNM / DDNM+ chain from given draws (reproducible run).

  Args:
    x_T: (H, W, C) start at the first timestep of `ddnm_schedule`.
    noise: (S, H, W, C) one standard normal draw per row of the schedule.
    y, operator, prior: as for `ddnm`.
    config: a `DDNMConfig` with chain="ddnm".
    travel_noise: (S, H, W, C) draws for the time-travel re-noising (rows
      without travel ignore theirs); needed when the schedule travels.

  Returns:
    (x, info) as `ddnm`.
  """
  _check(y, operator, prior, config)
  if config.chain != "ddnm":
    raise ConfigError("ddnm_sample runs chain='ddnm'; use ddnm_chain for DeqIR's chain.")
  S = len(ddnm_schedule(config.T, config.travel_length, config.travel_repeat,
                        prior.schedule.num_timesteps).t)
  want = (S,) + tuple(x_T.shape)
  if tuple(noise.shape) != want:
    raise ShapeError(f"noise has shape {tuple(noise.shape)}; expected {want} (one draw per "
                     "network call).")
  if travel_noise is None:
    if _travels(config):
      raise ConfigError("this schedule travels in time: pass travel_noise of shape "
                        f"{want}.")
    travel_noise = jnp.zeros_like(noise)
  elif tuple(travel_noise.shape) != want:
    raise ShapeError(f"travel_noise has shape {tuple(travel_noise.shape)}; expected {want}.")
  return _run(x_T, (noise, travel_noise), y, operator, prior, config, from_keys=False)


def ddnm(key, y, operator, prior, config: DDNMConfig = DDNMConfig()):
  """Restore one image with DDNM (sigma_y = 0) or DDNM+ (sigma_y > 0).

  Pure and jit-able (`config` static); `jax.vmap` over (key, y) solves a batch.

  Args:
    key: `jax.random` key (x_T and every step's draws).
    y: one measurement, shape `operator.out_shape`.
    operator: a linear operator with `pinv` on `operator.in_shape` images;
      DDNM+ needs an SVD operator.
    prior: a `jaxir.priors.Prior`.
    config: `DDNMConfig` (see `DDNM_PRESETS`).

  Returns:
    (x, info): the (H, W, C) restoration and a `DDNMInfo`.

  References:
    Wang et al., DDNM, ICLR 2023, Algorithm 1 and eq. 17-19.
  """
  _check(y, operator, prior, config)
  if config.chain == "deqir":
    x_T, noise = draw_start(key, operator, config.eta)
    x = ddnm_chain(x_T, y, operator, prior, T=config.T,
                   etw=config.eta if config.etw is None else config.etw, nw=config.eta,
                   noise=noise)
    return x, DDNMInfo(nfe=jnp.asarray(config.T, jnp.int32),
                       residual=residual_norm(operator, x, y))
  k_start, k_steps = jax.random.split(key)
  x_T = jax.random.normal(k_start, tuple(operator.in_shape), jnp.float32)
  S = len(ddnm_schedule(config.T, config.travel_length, config.travel_repeat,
                        prior.schedule.num_timesteps).t)
  return _run(x_T, jax.random.split(k_steps, S), y, operator, prior, config, from_keys=True)


callable_module(__name__, ddnm)
