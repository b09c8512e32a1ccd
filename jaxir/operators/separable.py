"""Separable blurs in SVD form: DDRM's `Deblurring` / `Deblurring2D` (DDNM, DeqIR).

A 1-D kernel acts along the rows (H axis) and another along the columns (W
axis) of every channel, each as a dense banded matrix with zero padding:
y[:, :, c] = M_h x[:, :, c] M_wᵀ. The matrices are built as the official code
builds them (`Deblurring.__init__`): row i holds kernel[d + k // 2] at column
i + d for the offsets d = -(k // 2), ..., k // 2 - 1 (`range(i - k//2, i + k//2)`),
so

  y[i] = sum_d kernel[d + k // 2] x[i + d]   (cross-correlation, no flip),

which for an odd k never uses the kernel's LAST tap (a 5-tap kernel blurs with
4 taps, DDRM's 9-tap uniform kernel with 8 taps of 1/9) and for an even k uses
all k taps centred at index k // 2. `drop_last_tap=False` gives the symmetric
odd-length correlation instead (all taps, d = -(k // 2), ..., k // 2).

SVD and thresholding (as the official): each 1-D matrix is factored
M = U diag(s) Vᵀ (here in float64 on the host), singular values below
`threshold` (official `ZERO = 3e-2`) are set to zero, and the 2-D singular
values are the outer products s_h[a] s_w[b], sorted in descending order. The
operator IS the thresholded one, A = U diag(s') Vᵀ with s' thresholded: the
official measures y = A(x) with it too. So `A` differs from the plain blur by
the dropped components (relative max error 0.019 / 0.024 / 0.027 for the
official Gaussian / uniform / anisotropic kernels on a 256x256 image, where
7455 / 13552 / 16050 of the 65536 products are zero); `threshold=0` gives the
exact banded blur. `pinv` divides by the kept products and zeroes the rest
(products of two kept values can be as small as threshold², about 1e-3).

Official defect, not copied by default: DDRM's `singulars()` returns
`_singulars.repeat(1, 3)` (the sorted values tiled channel-block-wise,
[s, s, s]) while `Vt` lays the coefficients out pixel-major, channel-minor
(index r * C + c). The coefficient of rank r in channel c is therefore scaled
by s[(r C + c) mod HW] instead of s[r], and the official "blur" is not the
blur (measured with the official class, torch 2.13 CPU, 16x16x3: relative
max error 0.70 / 0.85 / 0.71 against its own thresholded banded matrices for
`deblur_gauss` / `deblur_uni` / `deblur_aniso`). DDRM, DDNM and DeqIR measure
and restore with that operator. (`SRConv` in the same DDNM/DeqIR file uses
`repeat_interleave(3)`, the pairing this layout needs.) jaxir pairs s[r] with every channel of rank r
(`singulars()` = repeat); `ddrm_tiling=True` reproduces the tiling (A is then
U diag(tiled) Vᵀ; still a consistent SVD, not a blur).

Tie order: many products tie exactly (s_a s_b = s_b s_a when both kernels are
equal; all the zeros). jaxir sorts stably (ties by flat index a * W + b); the
official `torch.sort(descending=True)` is not stable and orders ties in its own
way (device- and version-dependent). The sorted values, A, Aᵀ and A⁺ are the
same either way; with `ddrm_tiling=True` the tie order also decides which basis
vector gets which tiled value, so that mode equals the official only up to it:
measured on 16x16x3, A differs from the official's by 0.17 / 0.82 / 0.04
(relative max) with the stable order and by 8e-6 / 4e-6 / 2e-6 with torch's
order substituted (float32 torch SVD against float64 here).

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `Deblurring` (bahjat-kawar/ddrm).
  Wang et al., "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
    Model" (DDNM), ICLR 2023: `functions/svd_operators.py` `Deblurring`,
    `Deblurring2D`.
  Cao et al., "Deep Equilibrium Diffusion Restoration with Parallel Sampling"
    (DeqIR), CVPR 2024: caojiezhang/DeqIR `functions/svd_operators.py`;
    kernels in `runners/diffusion.py` (`deblur_gauss`, `deblur_uni`, `deblur_aniso`).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ConfigError, KernelError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["SeparableBlur", "banded_matrix", "ddrm_gaussian_taps", "deblur_gauss", "deblur_uni",
           "deblur_aniso"]

_HI = jax.lax.Precision.HIGHEST


def _kernel_tuple(kernel, what: str, drop_last_tap: bool) -> tuple:
  """Validate a 1-D kernel and return it as a tuple of Python floats."""
  if isinstance(kernel, jax.core.Tracer):
    raise KernelError(f"SeparableBlur: {what} is traced; the SVD is computed on the host "
                      "when the operator is built, so build it outside jit/vmap from a "
                      "concrete kernel.")
  try:
    k = np.asarray(kernel, np.float64)
  except (TypeError, ValueError) as e:
    raise KernelError(f"SeparableBlur: {what} is not an array of numbers ({e}).") from None
  if k.ndim != 1 or k.size < 1:
    raise KernelError(f"SeparableBlur: {what} has shape {k.shape}; expected a 1-D kernel "
                      "(k,) with k >= 1 (a separable blur takes one 1-D kernel per axis).")
  if not np.all(np.isfinite(k)):
    raise KernelError(f"SeparableBlur: {what} contains NaN or infinite values.")
  if drop_last_tap and k.size < 2:
    raise KernelError(f"SeparableBlur: {what} has 1 tap; the official construction "
                      "(drop_last_tap=True) uses offsets -(k//2) .. k//2 - 1, none for k = 1, "
                      "so the operator would be zero. Use k >= 2 or drop_last_tap=False.")
  if not drop_last_tap and k.size % 2 == 0:
    raise KernelError(f"SeparableBlur: {what} has an even length {k.size} and no centre tap; "
                      "with drop_last_tap=False the kernel must have odd length (pad it with "
                      "a zero), or use drop_last_tap=True (the official rule: centre at k//2).")
  return tuple(float(v) for v in k)


@functools.lru_cache(maxsize=64)
def banded_matrix(kernel: tuple, n: int, drop_last_tap: bool = True) -> np.ndarray:
  """The (n, n) zero-padded correlation matrix of a 1-D kernel, as DDRM builds it.

  Args:
    kernel: tuple of k floats.
    n: signal length.
    drop_last_tap: True: offsets d = -(k//2) .. k//2 - 1 (official `range(i - k//2,
      i + k//2)`; drops the last tap of an odd kernel); False: d = -(k//2) .. k//2
      (odd k).

  Returns:
    float64 M with M[i, i + d] = kernel[d + k // 2] (entries outside [0, n) dropped),
    read-only.
  """
  k = len(kernel)
  c = k // 2
  hi = c if drop_last_tap else k - c
  m = np.zeros((n, n))
  rows = np.arange(n)
  for d in range(-c, hi):
    cols = rows + d
    ok = (cols >= 0) & (cols < n)
    m[rows[ok], cols[ok]] = kernel[d + c]
  m.setflags(write=False)
  return m


@functools.lru_cache(maxsize=64)
def _axis_factors(kernel: tuple, n: int, drop_last_tap: bool, threshold: float):
  """float64 (M', M'⁺, U, s, s', V) of one axis: M = U diag(s) Vᵀ, s' thresholded."""
  m = banded_matrix(kernel, n, drop_last_tap)
  u, s, vt = np.linalg.svd(m)
  s_cut = np.where(s < threshold, 0.0, s)
  inv = np.where(s_cut > 0, 1.0 / np.where(s_cut > 0, s_cut, 1.0), 0.0)
  out = ((u * s_cut) @ vt, (vt.T * inv) @ u.T, u, s, s_cut, np.ascontiguousarray(vt.T))
  for a in out:
    a.setflags(write=False)
  return out


@functools.lru_cache(maxsize=64)
def _ranking(kh: tuple, kw: tuple, H: int, W: int, drop_last_tap: bool, threshold: float):
  """(order, inverse order, sorted thresholded products, same order unthresholded)."""
  *_, sh, sh_cut, _ = _axis_factors(kh, H, drop_last_tap, threshold)
  *_, sw, sw_cut, _ = _axis_factors(kw, W, drop_last_tap, threshold)
  prod = np.outer(sh_cut, sw_cut).reshape(-1)
  order = np.argsort(-prod, kind="stable")
  inv = np.empty_like(order)
  inv[order] = np.arange(order.size)
  out = (order, inv, prod[order], np.outer(sh, sw).reshape(-1)[order])
  for a in out:
    a.setflags(write=False)
  return out


class SeparableBlur(SVDOperator):
  """Separable zero-padded blur in SVD form (DDRM `Deblurring` / `Deblurring2D`).

  y[:, :, c] = M_h' x[:, :, c] M_w'ᵀ with the thresholded `banded_matrix` of
  `kernel_h` (along H, the rows; DDRM's `kernel1`) and of `kernel_w` (along W;
  `kernel2`), see the module docstring. Output shape = input shape.

  Coefficient layout (the official's): Z[c] = V_hᵀ x[:, :, c] V_w; `VT(x)` lists
  Z[c][a, b] by descending product s_h[a] s_w[b] (stable ties, flat index a W + b),
  pixel-major and channel-minor: entry r * C + c. `UT(y)` is the same with
  U_h, U_w. `singulars()` has all H W C values (zeros included, m = n):
  entry r * C + c is the r-th largest product (the official's tiled order with
  `ddrm_tiling=True`).

  `A`, `AT` and `pinv` use the direct separable forms M', M'ᵀ, M'⁺ (equal to
  the SVD forms), except with `ddrm_tiling=True`, where they are the SVD forms.
  Factors are computed on the host in float64 once per (kernel, size, flags)
  and cached; they are constants of the traced program, not leaves, and this
  operator has no leaves (kernels are static tuples, like `Colorization`'s
  weights).

  Attributes:
    in_shape: static (H, W, C).
    kernel_h: static 1-D kernel along H (tuple of floats; arrays are converted).
    kernel_w: static 1-D kernel along W; None: the same as `kernel_h` (DDRM
      `Deblurring`).
    threshold: 1-D singular values below it are set to zero (DDRM/DDNM/DeqIR
      `Deblurring` `ZERO = 3e-2`; `Deblurring2D` hard-codes 3e-2).
    drop_last_tap: build the matrices as the official loop does (True, see
      `banded_matrix`) or with all taps of an odd kernel (False).
    ddrm_tiling: reproduce the official `singulars()` channel tiling (False:
      the correct blur).
  """
  kernel_h: tuple = pytree.field(pytree_node=False)
  kernel_w: tuple | None = pytree.field(pytree_node=False, default=None)
  threshold: float = pytree.field(pytree_node=False, default=3e-2)
  drop_last_tap: bool = pytree.field(pytree_node=False, default=True)
  ddrm_tiling: bool = pytree.field(pytree_node=False, default=False)

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "SeparableBlur"))
    drop = bool(self.drop_last_tap)
    kh = _kernel_tuple(self.kernel_h, "kernel_h", drop)
    kw = kh if self.kernel_w is None else _kernel_tuple(self.kernel_w, "kernel_w", drop)
    try:
      t = float(self.threshold)
    except (TypeError, ValueError):
      t = float("nan")
    if not (math.isfinite(t) and t >= 0):
      raise ConfigError(f"SeparableBlur: threshold={self.threshold!r} must be a finite number "
                        ">= 0 (official: 3e-2; 0 keeps every singular value).")
    for name, value in (("kernel_h", kh), ("kernel_w", kw), ("threshold", t),
                        ("drop_last_tap", drop), ("ddrm_tiling", bool(self.ddrm_tiling))):
      object.__setattr__(self, name, value)

  # ------------------------------------------------------------------ factors

  def _axes(self, dtype):
    H, W, _ = self.in_shape
    fh = _axis_factors(self.kernel_h, H, self.drop_last_tap, self.threshold)
    fw = _axis_factors(self.kernel_w, W, self.drop_last_tap, self.threshold)
    return [tuple(jnp.asarray(a, dtype) for a in f) for f in (fh, fw)]

  def _rank(self):
    H, W, _ = self.in_shape
    return _ranking(self.kernel_h, self.kernel_w, H, W, self.drop_last_tap, self.threshold)

  def _check(self, x, what):
    check_image(x, self.in_shape, f"SeparableBlur.{what}")

  def matrices(self):
    """(M_h', M_w'): the thresholded 1-D matrices, float64 numpy (H, H), (W, W)."""
    H, W, _ = self.in_shape
    return (_axis_factors(self.kernel_h, H, self.drop_last_tap, self.threshold)[0],
            _axis_factors(self.kernel_w, W, self.drop_last_tap, self.threshold)[0])

  # ------------------------------------------------------------- direct forms

  def A(self, x):
    """Blur one image (H, W, C) -> (H, W, C)."""
    self._check(x, "A")
    if self.ddrm_tiling:
      return SVDOperator.A(self, x)
    (mh, *_), (mw, *_) = self._axes(x.dtype)
    return jnp.einsum("ih,hwc,jw->ijc", mh, x, mw, precision=_HI)

  def AT(self, y):
    self._check(y, "AT")
    if self.ddrm_tiling:
      return SVDOperator.AT(self, y)
    (mh, *_), (mw, *_) = self._axes(y.dtype)
    return jnp.einsum("ih,ijc,jw->hwc", mh, y, mw, precision=_HI)

  def pinv(self, y):
    self._check(y, "pinv")
    if self.ddrm_tiling:
      return SVDOperator.pinv(self, y)
    (_, ph, *_), (_, pw, *_) = self._axes(y.dtype)
    return jnp.einsum("hi,ijc,wj->hwc", ph, y, pw, precision=_HI)

  # ----------------------------------------------------------------- SVD form

  def singulars(self):
    """Thresholded singular values, float32 (H W C,), layout r * C + c."""
    s = jnp.asarray(self._rank()[2], jnp.float32)
    c = self.in_shape[2]
    return jnp.tile(s, c) if self.ddrm_tiling else jnp.repeat(s, c)

  def singulars_unthresholded(self):
    """The same products before thresholding, same order (DDNM's `_singulars_orig`,
    which its noisy-measurement `Lambda` reads)."""
    s = jnp.asarray(self._rank()[3], jnp.float32)
    c = self.in_shape[2]
    return jnp.tile(s, c) if self.ddrm_tiling else jnp.repeat(s, c)

  def _to_coef(self, z):
    """(H, W, C) spectral image -> ranked (H W C,) vector."""
    order = self._rank()[0]
    return z.reshape(-1, z.shape[-1])[order].reshape(-1)

  def _from_coef(self, v):
    H, W, C = self.in_shape
    inv = self._rank()[1]
    return v.reshape(H * W, C)[inv].reshape(H, W, C)

  def VT(self, x):
    self._check(x, "VT")
    (*_, vh), (*_, vw) = self._axes(x.dtype)
    return self._to_coef(jnp.einsum("ha,hwc,wb->abc", vh, x, vw, precision=_HI))

  def V(self, v):
    (*_, vh), (*_, vw) = self._axes(v.dtype)
    return jnp.einsum("ha,abc,wb->hwc", vh, self._from_coef(v), vw, precision=_HI)

  def UT(self, y):
    self._check(y, "UT")
    (_, _, uh, *_), (_, _, uw, *_) = self._axes(y.dtype)
    return self._to_coef(jnp.einsum("ha,hwc,wb->abc", uh, y, uw, precision=_HI))

  def U(self, u):
    (_, _, uh, *_), (_, _, uw, *_) = self._axes(u.dtype)
    return jnp.einsum("ha,abc,wb->hwc", uh, self._from_coef(u), uw, precision=_HI)


# ------------------------------------------------------------ official kernels


def ddrm_gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """exp(-x² / (2 sigma²)) at x = -(size//2) .. size//2, normalised to sum one.

  The official `pdf` list of `runners/diffusion.py` (DDRM/DDNM/DeqIR), in float64.
  """
  if isinstance(size, bool) or int(size) != size or size < 1:
    raise KernelError(f"ddrm_gaussian_taps: size={size!r} must be a positive integer.")
  if not (float(sigma) > 0 and math.isfinite(float(sigma))):
    raise KernelError(f"ddrm_gaussian_taps: sigma={sigma!r} must be a positive number.")
  x = np.arange(-(int(size) // 2), int(size) // 2 + 1, dtype=np.float64)
  k = np.exp(-0.5 * (x / float(sigma)) ** 2)
  return k / k.sum()


def deblur_gauss(in_shape, size: int = 5, sigma: float = 10.0, **kw) -> SeparableBlur:
  """DeqIR/DDNM `deblur_gauss`: separable Gaussian, 5 taps, sigma 10 (official
  `runners/diffusion.py`), `Deblurring` rules (4 taps used, threshold 3e-2).

  Keyword arguments go to `SeparableBlur` (threshold, drop_last_tap, ddrm_tiling).
  """
  return SeparableBlur(in_shape, ddrm_gaussian_taps(size, sigma), **kw)


def deblur_uni(in_shape, size: int = 9, **kw) -> SeparableBlur:
  """DeqIR/DDNM `deblur_uni`: 9 uniform taps of 1/9 (official `runners/diffusion.py`);
  the official matrix uses 8 of them (row sums 8/9 inside the image)."""
  if isinstance(size, bool) or int(size) != size or size < 1:
    raise KernelError(f"deblur_uni: size={size!r} must be a positive integer.")
  return SeparableBlur(in_shape, np.full((int(size),), 1.0 / int(size)), **kw)


def deblur_aniso(in_shape, sigma_h: float = 1.0, sigma_w: float = 20.0, size: int = 9,
                 **kw) -> SeparableBlur:
  """DeqIR/DDNM `deblur_aniso` (`Deblurring2D`): 9-tap Gaussians, sigma 1 along H
  (official `kernel1`) and sigma 20 along W (`kernel2`), official `runners/diffusion.py`."""
  return SeparableBlur(in_shape, ddrm_gaussian_taps(size, sigma_h),
                       ddrm_gaussian_taps(size, sigma_w), **kw)
