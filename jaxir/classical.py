"""Classical restoration baselines, beside the diffusion solvers: what the priors buy.

* `bicubic_upsample`: super-resolution by bicubic resizing of the measurement.
* `wiener_deconvolve`: Wiener deconvolution about the measurement's mean, with a
  white or a 1/f^2 (gradient) signal spectrum, in the Fourier domain for `Blur`
  (exact for periodic padding; the measurement extended by reflection first
  otherwise), in the operator's SVD for `CircularBlur` and `SeparableBlur`.
* `tv_denoise`: ROF total-variation denoising, min 1/2 ||x - y||^2 + w TV(x),
  by the accelerated primal-dual algorithm (Chambolle & Pock 2011, Alg. 2).
* `tv_restore`: TV-regularized least squares for any linear operator,
  min 1/2 ||A x - y||^2 + w TV(x) with x in [-1, 1], by primal-dual steps with
  the operator's `A` / `AT` (Chambolle & Pock 2011, Alg. 1).
* `bm3d_denoise`: BM3D through the optional `bm3d` package (a reference row;
  jaxir never depends on it, `bm3d_available()` says whether it imports).

All are pure JAX (BM3D a host callback), jit-able and vmap-able over (y,
operator). `CLASSICAL` lists them in the solver registry's shape
(`fn(key, y, operator, prior, config) -> (x, info)`, `config(task, sigma_y=)`,
`supports(operator)`), so the experiment runner (`jaxir.experiment`) runs them
like any solver; `key` and `prior` are ignored.

TV is isotropic per channel, TV(x) = sum_{i,j,c} |grad x[i, j, c]|_2, with
forward differences and a zero difference past the last row/column (Neumann),
as scikit-image's `denoise_tv_chambolle` (Chambolle's projection algorithm for
the same objective, 1/2 ||x - y||^2 + weight TV(x) per channel: its `weight`
is our w).

Parameters per task (`config(task, sigma_y=, prior=)`): `WIENER_NSR` and
`TV_WEIGHT` map a task ("<prior>/<task>" for values tuned on a shipped prior's
data) to (a, b): Wiener noise-to-signal ratio a * sigma_y^2 + b (and its
spectrum model), TV weight a * sigma_y + b, sigma_y the measurement noise std
on [-1, 1]. The values were picked on TRAINING images (see the tables'
comments).

References:
  Keys, "Cubic convolution interpolation for digital image processing", 1981.
  Wiener, "Extrapolation, Interpolation, and Smoothing of Stationary Time
    Series", 1949; Gonzalez & Woods, "Digital Image Processing", 3rd ed.,
    sec. 5.8 (Wiener filtering) and 5.9 (constrained least squares filtering).
  Rudin, Osher, Fatemi, "Nonlinear total variation based noise removal
    algorithms", Physica D 1992.
  Chambolle, Pock, "A first-order primal-dual algorithm for convex problems with
    applications to imaging", JMIV 2011.
  Dabov, Foi, Katkovnik, Egiazarian, "Image denoising by sparse 3-D
    transform-domain collaborative filtering", IEEE TIP 2007 (BM3D; the `bm3d`
    package by Mäkinen, Azzari, Foi).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError

__all__ = ["MeasurementConfig", "BicubicConfig", "WienerConfig", "TVConfig", "BM3DConfig",
           "ClassicalInfo", "ClassicalSpec", "CLASSICAL", "WIENER_NSR", "TV_WEIGHT", "get_method",
           "method_names", "bicubic_upsample", "blur_transfer", "gradient_symbol", "wiener_filter",
           "wiener_deconvolve", "image_grad", "image_div", "tv_norm", "tv_objective",
           "tv_denoise", "tv_restore", "operator_norm_sq", "bm3d_available", "bm3d_denoise"]


# ------------------------------------------------------------------------------ configs

@dataclasses.dataclass(frozen=True)
class MeasurementConfig:
  """The measurement itself, clipped to [-1, 1], as the restored image (no parameters).

  Applies where y is an image of the unknown's shape (blur, blind blur, denoising,
  inpainting): the row every method must beat ("PSNR in").
  """


@dataclasses.dataclass(frozen=True)
class BicubicConfig:
  """Bicubic upsampling.

  Attributes:
    method: `jax.image.resize` method ("bicubic": Keys' cubic, a = -0.5, as
      MATLAB `imresize` and DPS's `Resizer`; "linear" or "lanczos3" also work).
  """
  method: str = "bicubic"

  def __post_init__(self):
    if self.method not in ("bicubic", "linear", "lanczos3", "lanczos5", "cubic", "nearest"):
      raise ConfigError(f"BicubicConfig.method={self.method!r}; use 'bicubic', 'linear', "
                        "'lanczos3', 'lanczos5' or 'nearest'.")


@dataclasses.dataclass(frozen=True)
class WienerConfig:
  """Wiener deconvolution.

  Attributes:
    nsr: noise-to-signal power ratio (> 0) of the signal model `spectrum`.
      Per task: `WIENER_NSR`.
    spectrum: the signal's power spectrum model: "flat" (white, NSR constant
      over frequencies) or "gradient" (power 1 / |D(f)|^2 with D the discrete
      gradient, the 1/f^2 law of natural images: NSR(f) = nsr |D(f)|^2, i.e.
      Tikhonov with a gradient penalty, the constrained least squares filter).
      "gradient" needs a `Blur` (FFT); SVD operators take "flat".
    pad: reflection extension of the measurement (pixels a side) before the
      FFT for a padded `Blur`; None: the kernel size k (ignored for circular
      and separable blurs).
  """
  nsr: float = 1e-2
  spectrum: str = "flat"
  pad: int | None = None

  def __post_init__(self):
    if not self.nsr > 0:
      raise ConfigError(f"WienerConfig.nsr={self.nsr!r} must be > 0.")
    if self.spectrum not in ("flat", "gradient"):
      raise ConfigError(f"WienerConfig.spectrum={self.spectrum!r}; use 'flat' or 'gradient'.")
    if self.pad is not None and self.pad < 0:
      raise ConfigError(f"WienerConfig.pad={self.pad!r} must be >= 0 or None.")


@dataclasses.dataclass(frozen=True)
class TVConfig:
  """Total-variation restoration (TV-regularized least squares).

  Attributes:
    weight: w in 1/2 ||A x - y||^2 + w TV(x) (>= 0). Per task: `TV_WEIGHT`.
    iterations: primal-dual iterations (300: ROF denoising of a 16x16 test
      image ends within 2e-5 of the objective of scikit-image's converged
      solution; large inpainting holes fill more slowly and are not converged).
    box: keep x in [-1, 1] (the image range) in `tv_restore`.
  """
  weight: float = 0.05
  iterations: int = 300
  box: bool = True

  def __post_init__(self):
    if not self.weight >= 0 or self.iterations < 1:
      raise ConfigError(f"TVConfig needs weight >= 0 and iterations >= 1; got "
                        f"weight={self.weight!r}, iterations={self.iterations!r}.")


@dataclasses.dataclass(frozen=True)
class BM3DConfig:
  """BM3D denoising (optional `bm3d` package).

  Attributes:
    sigma_y: noise std on [-1, 1] given to BM3D (as sigma_y / 2 on [0, 1]).
  """
  sigma_y: float = 0.2

  def __post_init__(self):
    if not self.sigma_y > 0:
      raise ConfigError(f"BM3DConfig.sigma_y={self.sigma_y!r} must be > 0.")


class ClassicalInfo(NamedTuple):
  """What a classical method reports (the solvers' `info` shape).

  Attributes:
    nfe: network evaluations: always 0 (int32 scalar).
    residual: ||A(x) - y|| of the result (NaN where the operator is unknown).
  """
  nfe: jax.Array
  residual: jax.Array


# ----------------------------------------------------------------- bicubic upsampling

def bicubic_upsample(y, in_shape, method: str = "bicubic"):
  """Resize a low-resolution measurement (h, w, C) to the image shape (H, W, C).

  `jax.image.resize` samples pixel centres (half-pixel offsets), the
  convention of MATLAB `imresize` and DPS's `Resizer`, so an x s downscale
  and this upscale stay aligned.
  """
  return jax.image.resize(y, tuple(in_shape), method)


# ------------------------------------------------------------------------------ Wiener

def blur_transfer(kernel, h: int, w: int):
  """Transfer function T (h, w) of circular cross-correlation with a centred kernel.

  With `Y = T * fft2(x)` per channel, `ifft2(Y)` equals
  y[i, j] = sum_{a, b} kernel[a, b] x[(i + a - c) mod h, (j + b - c) mod w],
  c = k // 2 (the convention of `jaxir.operators.Blur`).
  """
  k = kernel.shape[0]
  c = k // 2
  rows = (np.arange(k) - c) % h
  cols = (np.arange(k) - c) % w
  emb = jnp.zeros((h, w), jnp.float32).at[rows[:, None], cols[None, :]].add(
      kernel.astype(jnp.float32))
  return jnp.conj(jnp.fft.fft2(emb))


def gradient_symbol(h: int, w: int):
  """|D(f)|^2 = 4 sin^2(pi k / h) + 4 sin^2(pi l / w): the periodic gradient's power, (h, w)."""
  sh = np.sin(np.pi * np.arange(h) / h) ** 2
  sw = np.sin(np.pi * np.arange(w) / w) ** 2
  return jnp.asarray(4.0 * (sh[:, None] + sw[None, :]), jnp.float32)


def wiener_filter(y, transfer, nsr, spectrum: str = "flat"):
  """x = ifft2(conj(T) Y / (|T|^2 + nsr R)) per channel: the per-frequency Wiener solution.

  Args:
    y: (h, w, C) measurement on the grid of `transfer`.
    transfer: (h, w) complex transfer function (`blur_transfer`).
    nsr: noise-to-signal power ratio (scalar > 0).
    spectrum: "flat" (R = 1) or "gradient" (R = `gradient_symbol`, which is 0 at
      f = 0: give a zero-mean y, or T(0) != 0).
  """
  h, w = transfer.shape
  reg = 1.0 if spectrum == "flat" else gradient_symbol(h, w)[None]
  # FFTs over the last two axes of (C, h, w): the layout XLA's CPU FFT takes under every
  # sharding (with the channel last, a vmapped FFT split over host devices can fail).
  yf = jnp.fft.fft2(jnp.moveaxis(y, -1, 0), axes=(-2, -1))
  t = transfer[None]
  xf = jnp.conj(t) * yf / (jnp.abs(t) ** 2 + nsr * reg)
  return jnp.moveaxis(jnp.fft.ifft2(xf, axes=(-2, -1)).real, 0, -1).astype(y.dtype)


def wiener_deconvolve(y, operator, nsr: float, pad: int | None = None, spectrum: str = "flat"):
  """Wiener deconvolution for `Blur`, `CircularBlur` or `SeparableBlur` (one image).

  The Wiener estimate of a signal with mean m (here each channel's mean of y,
  as a constant image) and white fluctuations of noise-to-signal power ratio
  `nsr`: x = m + W (y - A m), W the regularized inverse
  argmin_d ||A d - r||^2 + nsr ||d||^2 (without the mean, W would also shrink
  the image's mean towards 0, mid-grey on jaxir's [-1, 1] scale), or with
  `spectrum="gradient"` argmin_d ||A d - r||^2 + nsr ||grad d||^2 (periodic
  differences; `Blur` only). W is
  * for `Blur(padding="circular")`: exact per frequency (`wiener_filter`);
  * for `Blur` with reflect or zero padding: r extended by reflection by `pad`
    pixels a side (default the kernel size), filtered as circular, cropped;
  * for `CircularBlur`, `SeparableBlur` (SVD operators, singular values possibly
    floored as DDRM's): exact in the operator's own SVD,
    W r = V diag(s / (s^2 + nsr)) U^T r.
  """
  from jaxir.operators.blur import Blur, CircularBlur
  from jaxir.operators.separable import SeparableBlur
  H, W, _ = operator.in_shape
  m = jnp.broadcast_to(jnp.mean(y, axis=(0, 1), keepdims=True), tuple(operator.in_shape))
  r = y - operator.A(m)
  if isinstance(operator, (CircularBlur, SeparableBlur)):
    if spectrum != "flat":
      raise ConfigError(f"Wiener with spectrum={spectrum!r} needs a Blur (FFT); "
                        f"{type(operator).__name__} takes spectrum='flat'.")
    s = operator.singulars()
    u = operator.UT(r)
    v = jnp.zeros((int(np.prod(operator.in_shape)),), u.dtype).at[: s.shape[0]].set(
        s / (s * s + nsr) * u)
    return (m + jnp.real(operator.V(v))).astype(y.dtype)
  if isinstance(operator, Blur) and operator.padding == "circular":
    return m + wiener_filter(r, blur_transfer(operator.kernel, H, W), nsr, spectrum)
  if isinstance(operator, Blur):
    k = operator.size
    p = k if pad is None else int(pad)
    p = min(p, H - 1, W - 1)
    rp = jnp.pad(r, ((p, p), (p, p), (0, 0)), mode="reflect") if p > 0 else r
    d = wiener_filter(rp, blur_transfer(operator.kernel, H + 2 * p, W + 2 * p), nsr, spectrum)
    return m + d[p:p + H, p:p + W]
  raise ConfigError(f"Wiener deconvolution takes Blur, CircularBlur or SeparableBlur; got "
                    f"{type(operator).__name__}.")


# ---------------------------------------------------------------------------------- TV

def image_grad(x):
  """Forward differences of an (H, W, C) image: (H, W, C, 2), zero past the last row/col."""
  gh = jnp.concatenate([x[1:] - x[:-1], jnp.zeros_like(x[:1])], axis=0)
  gw = jnp.concatenate([x[:, 1:] - x[:, :-1], jnp.zeros_like(x[:, :1])], axis=1)
  return jnp.stack([gh, gw], axis=-1)


def image_div(p):
  """Discrete divergence, the negative adjoint of `image_grad`: <grad x, p> = -<x, div p>."""
  ph, pw = p[..., 0], p[..., 1]
  dh = jnp.concatenate([ph[:1], ph[1:-1] - ph[:-2], -ph[-2:-1]], axis=0)
  dw = jnp.concatenate([pw[:, :1], pw[:, 1:-1] - pw[:, :-2], -pw[:, -2:-1]], axis=1)
  return dh + dw


def tv_norm(x):
  """Isotropic total variation of an (H, W, C) image, channels summed."""
  g = image_grad(x)
  return jnp.sum(jnp.sqrt(jnp.sum(g * g, axis=-1)))


def tv_objective(x, y, weight, operator=None):
  """1/2 ||A x - y||^2 + weight TV(x) (A the identity when `operator` is None)."""
  r = (x if operator is None else operator.A(x)) - y
  return 0.5 * jnp.sum(r * r) + weight * tv_norm(x)


def _project_ball(p, radius):
  """Project each pixel's gradient pair onto the disc of `radius` (0 gives 0)."""
  n = jnp.sqrt(jnp.sum(p * p, axis=-1, keepdims=True))
  return p / jnp.maximum(1.0, n / jnp.maximum(radius, 1e-30)) * (radius > 0)


def tv_denoise(y, weight, iterations: int = 300):
  """ROF denoising: argmin_x 1/2 ||x - y||^2 + weight TV(x) for one (H, W, C) image.

  Accelerated primal-dual (Chambolle & Pock 2011, Algorithm 2, gamma = 1):
  the data term is 1-strongly convex, so steps adapt as
  theta = 1 / sqrt(1 + 2 tau), tau <- theta tau, sigma <- sigma / theta, from
  tau = sigma = 1 / sqrt(8) (||grad||^2 <= 8). weight = 0 returns y.
  """
  y = jnp.asarray(y)
  weight = jnp.asarray(weight, y.dtype)
  lip = jnp.sqrt(8.0).astype(y.dtype)  # ||grad|| <= sqrt(8)

  def body(_, carry):
    x, x_bar, p, tau, sigma = carry
    p = _project_ball(p + sigma * image_grad(x_bar), weight)
    x_new = (x + tau * image_div(p) + tau * y) / (1.0 + tau)
    theta = 1.0 / jnp.sqrt(1.0 + 2.0 * tau)
    x_bar = x_new + theta * (x_new - x)
    return x_new, x_bar, p, theta * tau, sigma / theta

  p0 = jnp.zeros(y.shape + (2,), y.dtype)
  x, *_ = jax.lax.fori_loop(0, iterations, body, (y, y, p0, 1.0 / lip, 1.0 / lip))
  return x


def operator_norm_sq(operator, iterations: int = 30):
  """||A||^2 (largest eigenvalue of A^T A) by power iteration from a fixed start."""
  x = jax.random.normal(jax.random.key(0), operator.in_shape, jnp.float32)

  def body(_, x):
    v = operator.AT(operator.A(x))
    return v / jnp.maximum(jnp.linalg.norm(v), 1e-30)

  x = jax.lax.fori_loop(0, iterations, body, x / jnp.linalg.norm(x))
  return jnp.vdot(operator.A(x), operator.A(x)).real


def tv_restore(y, operator, weight, iterations: int = 300, *, x0=None, box: bool = True):
  """argmin_x 1/2 ||A x - y||^2 + weight TV(x) (+ x in [-1, 1] if `box`), one image.

  Primal-dual iterations (Chambolle & Pock 2011, Algorithm 1, theta = 1) on
  K = (A, grad), with duals q (measurement space: prox of the conjugate of
  1/2 ||. - y||^2 is (q - sigma y) / (1 + sigma)) and p (projection on discs of
  radius `weight`); steps tau = sigma = 0.99 / sqrt(||A||^2 + 8), ||A||^2 by
  power iteration. Starts at `x0` (default zeros).

  Args:
    y: measurement, `operator.out_shape`.
    operator: a linear operator (A and AT).
    weight: the TV weight w (>= 0).
    iterations: primal-dual iterations.
    x0: starting image (H, W, C), or None.
    box: project onto [-1, 1] (the prior's image range).
  """
  y = jnp.asarray(y)
  x = jnp.zeros(operator.in_shape, jnp.float32) if x0 is None else jnp.asarray(x0, jnp.float32)
  weight = jnp.asarray(weight, jnp.float32)
  step = 0.99 / jnp.sqrt(operator_norm_sq(operator) + 8.0)
  tau = sigma = step

  def body(_, carry):
    x, x_bar, q, p = carry
    q = (q + sigma * (operator.A(x_bar) - y)) / (1.0 + sigma)
    p = _project_ball(p + sigma * image_grad(x_bar), weight)
    x_new = x - tau * (operator.AT(q) - image_div(p))
    if box:
      x_new = jnp.clip(x_new, -1.0, 1.0)
    return x_new, 2.0 * x_new - x, q, p

  carry = (x, x, jnp.zeros_like(y), jnp.zeros(operator.in_shape + (2,), jnp.float32))
  x, *_ = jax.lax.fori_loop(0, iterations, body, carry)
  return x


# -------------------------------------------------------------------------------- BM3D

def bm3d_available() -> bool:
  """Whether the optional `bm3d` package imports (`pip install bm3d`)."""
  return importlib.util.find_spec("bm3d") is not None


def bm3d_denoise(y, sigma_y: float):
  """BM3D of one (H, W, C) image in [-1, 1] with noise std `sigma_y` (host callback).

  Runs `bm3d.bm3d` on the [0, 1] scale (noise std sigma_y / 2) through
  `jax.pure_callback`, so it sits inside jit/vmap (images one at a time).
  """
  if not bm3d_available():
    raise ConfigError("BM3D needs the optional `bm3d` package (pip install bm3d); jaxir does "
                      "not depend on it.")

  def host(v):
    import bm3d
    u = (np.asarray(v, np.float64) + 1.0) / 2.0
    out = np.stack([bm3d.bm3d(u[..., c], sigma_psd=sigma_y / 2.0)
                    for c in range(u.shape[-1])], axis=-1)
    return (2.0 * out - 1.0).astype(np.float32)

  return jax.pure_callback(host, jax.ShapeDtypeStruct(y.shape, jnp.float32), y,
                           vmap_method="sequential")


# ---------------------------------------------------------------- per-task parameters

#: Wiener per task: (a, b, spectrum) gives nsr = a sigma_y^2 + b with that signal model
#: ("<prior>/<task>" entries for a shipped prior's data). Chosen on 8 TRAINING images
#: (the images of experiments/tune_dcdp.py; natural64: 64x64 patches) by mean PSNR over
#: a grid a in {0.3, ..., 300} x b in {1e-5, ..., 1e-3}; PSNR at the choice (input's) below.
#: The DPS blurs take the gradient (1/f^2) spectrum: with a flat one the best Wiener stays
#: below the noisy input on natural64 (28.3 vs 30.0 dB, Gaussian blur), as a flat model
#: shrinks every frequency alike instead of the noisy high ones.
WIENER_NSR: dict[str, tuple[float, float, str]] = {
    # natural64 Gaussian 31.9 dB (input 30.0; a = 100: 32.0), motion 28.5 (26.0; 28.8)
    "gaussian_deblur": (30.0, 1e-3, "gradient"),
    "motion_deblur": (30.0, 1e-3, "gradient"),
    # mnist32 digits: Gaussian 32.2 dB (input 30.6; a = 30: 29.5), motion 22.3 (17.9; 20.4)
    "mnist32/gaussian_deblur": (3.0, 1e-3, "gradient"),
    "mnist32/motion_deblur": (3.0, 1e-3, "gradient"),
    # noiseless separable blurs (SVD form, flat): natural64 deblur_gauss 39.8 dB (input 18.0;
    # b = 1e-4: 39.4), mnist32 32.2 (12.2)
    "default": (3.0, 1e-5, "flat"),
}

#: TV weight per task: (a, b) gives weight = a sigma_y + b. Same images and criterion,
#: grids of 3-8 weights per task (natural64 PSNR at the chosen weight in the comments;
#: mnist32 agreed on denoise, 0.16: 27.6 dB, and Gaussian deblur, 0.02: 37.0 dB).
TV_WEIGHT: dict[str, tuple[float, float]] = {
    "denoise": (0.8, 0.0),            # 0.16 at sigma_y 0.2: 29.6 dB (0.08: 26.6, 0.32: 28.4)
    "gaussian_deblur": (0.2, 0.01),   # 0.02: 33.6 dB (0.006: 31.5, 0.04: 33.3)
    "motion_deblur": (0.2, 0.01),     # 0.02: 31.2 dB (0.01: 30.6, 0.04: 30.6)
    "deblur_gauss": (0.4, 3e-4),      # noiseless 3e-4: 35.6 dB (1e-4: 35.1, 1e-3: 35.2)
    "deblur_uni": (0.4, 3e-4),        # as deblur_gauss (not tuned apart)
    "deblur_aniso": (0.4, 3e-4),      # as deblur_gauss (not tuned apart)
    "sr4": (0.1, 0.003),              # 0.008 at 0.05: 27.7 dB (0.002: 27.0, 0.016: 27.1)
    "sr8": (0.1, 0.003),              # as sr4 (not tuned apart)
    "sr4_avgpool": (0.1, 0.003),      # noiseless 0.003-0.01: 26.8 dB (0.03: 25.5)
    "box_inpaint": (0.0, 0.1),        # 0.1: 27.6 dB (0.05: 23.7, 0.4: 26.2; a slow fill)
    "random_inpaint": (0.4, 0.01),    # 0.03: 28.6 dB (0.006: 20.5, 0.09: 28.1)
    "cs_wh": (0.0, 0.03),             # 0.03-0.1 within 0.2 dB on one draw; 0.01 worse
    "default": (0.4, 3e-4),           # colorize and the rest: the blur setting
    # mnist32 training digits, same procedure (where its best differs from the above):
    "mnist32/motion_deblur": (0.1, 0.0),  # 0.005: 27.6 dB (0.02: 24.8; lowest weight tried)
    "mnist32/sr4": (0.04, 0.0),           # 0.002: 16.8 dB (0.008: 16.2; lowest tried)
    "mnist32/box_inpaint": (0.0, 0.03),   # 0.03: 14.7 dB (0.1: 13.7; lowest tried)
}


def _entry(table, task, prior):
  """The table's entry for "<prior>/<task>", else the task's, else "default"."""
  return table.get(f"{prior}/{task}", table.get(task, table["default"]))


def _wiener_config(task, sigma_y, prior=None) -> WienerConfig:
  a, b, spectrum = _entry(WIENER_NSR, task, prior)
  return WienerConfig(nsr=a * float(sigma_y) ** 2 + b, spectrum=spectrum)


def _tv_config(task, sigma_y, prior=None) -> TVConfig:
  a, b = _entry(TV_WEIGHT, task, prior)
  return TVConfig(weight=a * float(sigma_y) + b)


# ------------------------------------------------------------------ registry entries

def _unwrap(operator):
  """The known operator behind a `NonBlind` degradation (others as they are)."""
  from jaxir.operators.blind import NonBlind
  return operator.op if isinstance(operator, NonBlind) else operator


def _sr_shape(operator):
  """The image shape of a super-resolution operator or blind SR degradation, else None."""
  from jaxir.operators.blind import BlindSR, BlurDecimate
  from jaxir.operators.superres import AvgPoolSR, BicubicSR
  op = _unwrap(operator)
  if isinstance(op, (BicubicSR, AvgPoolSR, BlurDecimate, BlindSR)):
    return tuple(op.in_shape)
  return None


def _info(operator, x, y):
  from jaxir.operators.base import Operator
  op = _unwrap(operator)
  if isinstance(op, Operator):
    r = op.A(x) - y
    res = jnp.sqrt(jnp.sum(jnp.real(r * jnp.conj(r))))
  else:
    res = jnp.asarray(jnp.nan, jnp.float32)
  return ClassicalInfo(nfe=jnp.asarray(0, jnp.int32), residual=res)


def _measurement_fn(key, y, operator, prior, config: MeasurementConfig):
  del key, prior, config
  x = jnp.clip(y, -1.0, 1.0)
  return x, _info(operator, x, y)


def _bicubic_fn(key, y, operator, prior, config: BicubicConfig):
  del key, prior
  x = bicubic_upsample(y, _sr_shape(operator), config.method)
  return x, _info(operator, x, y)


def _wiener_fn(key, y, operator, prior, config: WienerConfig):
  del key, prior
  x = wiener_deconvolve(y, _unwrap(operator), config.nsr, config.pad, config.spectrum)
  return x, _info(operator, x, y)


def _tv_fn(key, y, operator, prior, config: TVConfig):
  del key, prior
  from jaxir.operators.base import SVDOperator
  from jaxir.operators.denoise import Identity
  op = _unwrap(operator)
  if isinstance(op, Identity):
    x = tv_denoise(y, config.weight, config.iterations)
    x = jnp.clip(x, -1.0, 1.0) if config.box else x
  else:
    if y.shape == tuple(op.in_shape) and not jnp.iscomplexobj(y):
      x0 = y  # blur, inpainting: the measurement is an image
    elif isinstance(op, SVDOperator):
      x0 = op.pinv(y)
    else:
      x0 = None
    x0 = None if x0 is None else jnp.clip(x0, -1.0, 1.0)
    x = tv_restore(y, op, config.weight, config.iterations, x0=x0, box=config.box)
  return x, _info(operator, x, y)


def _bm3d_fn(key, y, operator, prior, config: BM3DConfig):
  del key, prior
  x = bm3d_denoise(y, config.sigma_y)
  return x, _info(operator, x, y)


def _is_blur(operator) -> bool:
  from jaxir.operators.blur import Blur, CircularBlur
  from jaxir.operators.separable import SeparableBlur
  return isinstance(_unwrap(operator), (Blur, CircularBlur, SeparableBlur))


def _measures_image(operator) -> bool:
  """Whether y is an image of x's shape (blurs, blind blur and denoising, inpainting)."""
  from jaxir.operators.blind import BlindBlur, BlindDenoise
  from jaxir.operators.inpaint import Inpaint
  return _is_blur(operator) or _is_identity(operator) or \
      isinstance(_unwrap(operator), (Inpaint, BlindBlur, BlindDenoise))


def _is_linear(operator) -> bool:
  from jaxir.operators.base import Operator
  op = _unwrap(operator)
  return isinstance(op, Operator) and bool(getattr(op, "linear", False))


def _is_identity(operator) -> bool:
  from jaxir.operators.denoise import Identity
  return isinstance(_unwrap(operator), Identity)


@dataclasses.dataclass(frozen=True)
class ClassicalSpec:
  """A classical method in the solver registry's shape (`jaxir.solvers.registry.SolverSpec`).

  Attributes:
    name: row name ("measurement", "bicubic", "wiener", "tv", "bm3d").
    fn: `fn(key, y, operator, prior, config) -> (x, ClassicalInfo)`, one image.
    config_cls: the config dataclass.
    make_config: `make_config(task, sigma_y, prior) -> config`, the task's parameters
      (`prior`: a shipped prior's name, for values tuned on its data, or None).
    applies: `applies(operator) -> bool`, the operators the method handles.
    description: one line for help texts and tables.
    needs: an optional package the method imports ("" for none).
  """
  name: str
  fn: Callable
  config_cls: type
  make_config: Callable[[str, float], Any]
  applies: Callable[[Any], bool]
  description: str = ""
  needs: str = ""

  @property
  def presets(self) -> dict:
    """Named presets (the registry's shape): the default config only."""
    return {"default": self.config_cls()}

  def available(self) -> bool:
    """Whether the optional package this method needs imports."""
    return not self.needs or importlib.util.find_spec(self.needs) is not None

  def config(self, task: str, *, sigma_y: float | None = None, prior: str | None = None,
             overrides=()):
    """The parameters for `task` at noise `sigma_y` (default the task's) for images of
    shipped prior `prior`'s data where tuned, overrides last."""
    from jaxir.solvers.registry import apply_overrides
    from jaxir.tasks import TASKS
    sigma = (TASKS[task].sigma_y if task in TASKS else 0.0) if sigma_y is None else sigma_y
    return apply_overrides(self.make_config(task, float(sigma), prior), overrides)

  def supports(self, operator) -> bool:
    """Whether the method handles this operator (and its package imports)."""
    return self.available() and bool(self.applies(operator))


CLASSICAL: dict[str, ClassicalSpec] = {s.name: s for s in [
    ClassicalSpec("measurement", _measurement_fn, MeasurementConfig,
                  lambda task, s, prior=None: MeasurementConfig(), _measures_image,
                  "the measurement itself (image-shaped measurements): the row to beat"),
    ClassicalSpec("bicubic", _bicubic_fn, BicubicConfig,
                  lambda task, s, prior=None: BicubicConfig(),
                  lambda op: _sr_shape(op) is not None,
                  "bicubic upsampling of the low-resolution measurement"),
    ClassicalSpec("wiener", _wiener_fn, WienerConfig, _wiener_config, _is_blur,
                  "Wiener deconvolution (FFT; SVD for separable blurs)"),
    ClassicalSpec("tv", _tv_fn, TVConfig, _tv_config, _is_linear,
                  "total-variation regularized least squares (primal-dual)"),
    ClassicalSpec("bm3d", _bm3d_fn, BM3DConfig,
                  lambda task, s, prior=None: BM3DConfig(sigma_y=max(s, 1e-3)), _is_identity,
                  "BM3D denoising (optional `bm3d` package)", needs="bm3d"),
]}


def method_names() -> list[str]:
  """Names of the classical methods."""
  return list(CLASSICAL)


def get_method(name: str) -> ClassicalSpec:
  """The classical method `name` (`ConfigError` listing the names otherwise)."""
  if name not in CLASSICAL:
    raise ConfigError(f"unknown classical method {name!r}; choose from {method_names()}.")
  return CLASSICAL[name]
