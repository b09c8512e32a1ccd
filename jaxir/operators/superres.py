"""Super-resolution forward models: DPS's bicubic `Resizer` and DDRM's average pooling.

Both are separable linear maps with closed-form SVDs, so they are `SVDOperator`s.
Images are (H, W, C); the measurement is (h, w, C). Every method takes exactly
one array (image, measurement or coefficient vector) and raises `ShapeError`
on any other shape, a batch included: batch with `jax.vmap`.

References:
  Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems"
    (DPS), ICLR 2023: `guided_diffusion/measurements.py` `SuperResolutionOperator`,
    `util/resizer.py` `Resizer` (A. Shocher's MATLAB-imresize port).
  Keys, "Cubic convolution interpolation for digital image processing", 1981.
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `SuperResolution`; the same class is in DDNM's and
    DeqIR's `functions/svd_operators.py`.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ShapeError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["BicubicSR", "AvgPoolSR", "resizer_matrix"]

_HI = jax.lax.Precision.HIGHEST


def _check_scale(scale, name: str) -> int:
  if isinstance(scale, bool) or not float(scale).is_integer() or int(scale) < 1:
    raise ShapeError(f"{name}: scale={scale!r} must be a positive integer "
                     "(the downsampling factor, e.g. 4).")
  return int(scale)


def _keys_cubic(t):
  """Keys cubic kernel with a = -0.5 (MATLAB `imresize` 'cubic'), support [-2, 2]."""
  a = np.abs(t)
  return ((1.5 * a**3 - 2.5 * a**2 + 1.0) * (a <= 1)
          + (-0.5 * a**3 + 2.5 * a**2 - 4.0 * a + 2.0) * ((a > 1) & (a <= 2)))


@functools.lru_cache(maxsize=64)
def resizer_matrix(in_length: int, scale: int) -> np.ndarray:
  """The 1-D matrix of DPS's bicubic `Resizer` shrinking by an integer factor.

  Rules of `util/resizer.py` (`fix_scale_and_size`, `contributions`) with
  `scale_factor = 1 / scale`: output length ceil(in_length / scale); output pixel
  i (1-based) sits at input position p = (i - (out - in/scale) / 2) * scale
  + (1 - scale) / 2; antialiased weights (1/scale) k((p - q) / scale) over the
  taps q = floor(p - 2 scale) + 0 ... ceil(4 scale) + 1 (1-based), normalised to
  sum one; taps outside the image are folded back by half-sample symmetric
  reflection (... 1 0 | 0 1 ... L-1 | L-1 L-2 ...). For scale 1 it is the identity.

  Args:
    in_length: number of input pixels along the axis.
    scale: integer downsampling factor.

  Returns:
    (ceil(in_length / scale), in_length) float64 matrix M, so that y = M x.
  """
  L = int(in_length)
  sf = 1.0 / scale
  out = int(math.ceil(L * sf))
  width = 4.0 / sf
  pos = (np.arange(1, out + 1) - (out - L * sf) / 2) / sf + 0.5 * (1 - 1 / sf)
  taps = np.floor(pos - width / 2)[:, None] + np.arange(math.ceil(width) + 2) - 1
  w = sf * _keys_cubic(sf * (pos[:, None] - taps - 1))
  total = w.sum(axis=1, keepdims=True)
  w = w / np.where(total == 0, 1.0, total)
  fold = np.concatenate([np.arange(L), np.arange(L - 1, -1, -1)])
  cols = fold[np.mod(taps.astype(np.int64), 2 * L)]
  m = np.zeros((out, L))
  np.add.at(m, (np.broadcast_to(np.arange(out)[:, None], cols.shape), cols), w)
  m.setflags(write=False)
  return m


@functools.lru_cache(maxsize=64)
def _resizer_svd(in_length: int, scale: int):
  """(M, U, s, V, M⁺) of `resizer_matrix`, float64: M = U diag(s) V[:, :out]ᵀ."""
  m = resizer_matrix(in_length, scale)
  u, s, vt = np.linalg.svd(m, full_matrices=True)
  pinv = vt[: s.shape[0]].T @ (u.T / s[:, None])
  out = (m, u, s, np.ascontiguousarray(vt.T), pinv)
  for a in out:
    a.setflags(write=False)
  return out


class BicubicSR(SVDOperator):
  """DPS bicubic super-resolution: antialiased Keys-cubic downscale by `scale`.

  y[:, :, c] = M_h x[:, :, c] M_wᵀ with the `resizer_matrix` of each axis; this
  equals DPS's `SuperResolutionOperator(in_shape, scale).forward` (its `Resizer`).
  The SVD is the Kronecker product of the two 1-D SVDs M = U diag(s) Vᵀ:
  singular values s_h[i] s_w[j] (not sorted). Coefficient layout:

  * `VT(x)`: Z[c] = V_hᵀ x[:, :, c] V_w (C, H, W); first the m = C h w kept
    entries Z[:, :h, :w] in (c, i, j) order, then Z[:, :h, w:] and Z[:, h:, :]
    flattened in C order.
  * `UT(y)`: U_hᵀ y[:, :, c] U_w flattened in (c, i, j) order.

  `A`, `AT` and `pinv` use the direct separable forms (pinv with M_h⁺, M_w⁺).
  All factors are built on the host in float64 and cached; they are not leaves.
  `AT` is the exact adjoint; DPS's `transpose` (nearest upsampling) is not, and
  DPS's sampler never calls it (it differentiates `forward`).

  Attributes:
    in_shape: static (H, W, C).
    scale: static integer factor (4, 8, 16, ...); output (ceil(H/s), ceil(W/s), C).
  """
  scale: int = pytree.field(pytree_node=False, default=4)

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "BicubicSR"))
    object.__setattr__(self, "scale", _check_scale(self.scale, "BicubicSR"))

  def _factors(self, dtype):
    H, W, _ = self.in_shape
    fh, fw = _resizer_svd(H, self.scale), _resizer_svd(W, self.scale)
    return [tuple(jnp.asarray(a, dtype) for a in f) for f in (fh, fw)]

  def _y_shape(self):
    H, W, C = self.in_shape
    return (math.ceil(H / self.scale), math.ceil(W / self.scale), C)

  def _n_m(self):
    h, w, c = self._y_shape()
    return math.prod(self.in_shape), h * w * c

  def A(self, x):
    check_image(x, self.in_shape, "BicubicSR.A")
    (mh, *_), (mw, *_) = self._factors(x.dtype)
    return jnp.einsum("ih,hwc,jw->ijc", mh, x, mw, precision=_HI)

  def AT(self, y):
    check_image(y, self._y_shape(), "BicubicSR.AT")
    (mh, *_), (mw, *_) = self._factors(y.dtype)
    return jnp.einsum("ih,ijc,jw->hwc", mh, y, mw, precision=_HI)

  def pinv(self, y):
    check_image(y, self._y_shape(), "BicubicSR.pinv")
    (*_, ph), (*_, pw) = self._factors(y.dtype)
    return jnp.einsum("hi,ijc,wj->hwc", ph, y, pw, precision=_HI)

  def singulars(self):
    (_, _, sh, _, _), (_, _, sw, _, _) = self._factors(jnp.float32)
    c = self.in_shape[2]
    return jnp.broadcast_to(sh[:, None] * sw[None, :], (c,) + (sh.size, sw.size)).reshape(-1)

  def VT(self, x):
    check_image(x, self.in_shape, "BicubicSR.VT")
    (mh, _, _, vh, _), (mw, _, _, vw, _) = self._factors(x.dtype)
    h, w = mh.shape[0], mw.shape[0]
    z = jnp.einsum("ha,hwc,wb->cab", vh, x, vw, precision=_HI)
    return jnp.concatenate([z[:, :h, :w].reshape(-1), z[:, :h, w:].reshape(-1),
                            z[:, h:, :].reshape(-1)])

  def V(self, v):
    check_image(v, (self._n_m()[0],), "BicubicSR.V")
    (mh, _, _, vh, _), (mw, _, _, vw, _) = self._factors(v.dtype)
    H, W, C = self.in_shape
    h, w = mh.shape[0], mw.shape[0]
    k1, k2 = C * h * w, C * h * w + C * h * (W - w)
    top = jnp.concatenate([v[:k1].reshape(C, h, w), v[k1:k2].reshape(C, h, W - w)], axis=2)
    z = jnp.concatenate([top, v[k2:].reshape(C, H - h, W)], axis=1)
    return jnp.einsum("ha,cab,wb->hwc", vh, z, vw, precision=_HI)

  def UT(self, y):
    check_image(y, self._y_shape(), "BicubicSR.UT")
    (_, uh, _, _, _), (_, uw, _, _, _) = self._factors(y.dtype)
    return jnp.einsum("ia,ijc,jb->cab", uh, y, uw, precision=_HI).reshape(-1)

  def U(self, u):
    check_image(u, (self._n_m()[1],), "BicubicSR.U")
    (_, uh, _, _, _), (_, uw, _, _, _) = self._factors(u.dtype)
    c = self.in_shape[2]
    z = u.reshape(c, uh.shape[0], uw.shape[0])
    return jnp.einsum("ia,cab,jb->ijc", uh, z, uw, precision=_HI)


def _householder(z, u):
  """Apply the reflection Q = I - 2 vvᵀ/vᵀv, v = e₁ - u, on the last axis of z.

  Q is symmetric and orthogonal with Q e₁ = u (u a unit vector), so its first
  column is u and the others an orthonormal basis of u's complement.
  """
  v = -u
  v = v.at[0].add(1.0)
  vv = jnp.vdot(v, v)
  coef = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
  return z - (coef * (z @ v))[..., None] * v


class AvgPoolSR(SVDOperator):
  """Average-pooling super-resolution (DDRM/DDNM/DeqIR `SuperResolution`).

  y = mean of each non-overlapping s x s block, shape (H/s, W/s, C). Per block
  the 1 x s² matrix (1/s²)·1ᵀ has the one singular value 1/s with right vector
  1/s, U = 1. The block basis is the Householder reflection taking e₁ to 1/s
  (closed form; DDRM takes LAPACK's basis, which differs only in the null space).

  Coefficient layout (DDRM's): block pixels in row-major (di, dj) order; `VT(x)`
  holds first the m = C (H/s)(W/s) block means times s in (c, i, j) order, then
  the s² - 1 null-space coefficients of every block in (c, i, j, k) order.
  `UT(y)` is y flattened in (c, i, j) order (DDRM's NCHW vector).

  Attributes:
    in_shape: static (H, W, C) with H and W divisible by `scale`.
    scale: static integer block size.
  """
  scale: int = pytree.field(pytree_node=False, default=4)

  def __post_init__(self):
    shape = check_in_shape(self.in_shape, "AvgPoolSR")
    s = _check_scale(self.scale, "AvgPoolSR")
    if shape[0] % s or shape[1] % s:
      raise ShapeError(f"AvgPoolSR: image size {shape[:2]} is not divisible by scale={s}; "
                       "crop or pad the image to a multiple of the scale.")
    object.__setattr__(self, "in_shape", shape)
    object.__setattr__(self, "scale", s)

  def _blocks(self, x):
    """(H, W, C) -> (C, H/s, W/s, s²) blocks, pixels row-major within a block."""
    H, W, C = self.in_shape
    s = self.scale
    return x.reshape(H // s, s, W // s, s, C).transpose(4, 0, 2, 1, 3).reshape(
        C, H // s, W // s, s * s)

  def _unblocks(self, b):
    H, W, C = self.in_shape
    s = self.scale
    return b.reshape(C, H // s, W // s, s, s).transpose(1, 3, 2, 4, 0).reshape(H, W, C)

  def _y_shape(self):
    H, W, C = self.in_shape
    return (H // self.scale, W // self.scale, C)

  def A(self, x):
    check_image(x, self.in_shape, "AvgPoolSR.A")
    H, W, C = self.in_shape
    s = self.scale
    return x.reshape(H // s, s, W // s, s, C).mean(axis=(1, 3))

  def AT(self, y):
    check_image(y, self._y_shape(), "AvgPoolSR.AT")
    s = self.scale
    return jnp.repeat(jnp.repeat(y, s, axis=0), s, axis=1) / (s * s)

  def pinv(self, y):
    check_image(y, self._y_shape(), "AvgPoolSR.pinv")
    s = self.scale
    return jnp.repeat(jnp.repeat(y, s, axis=0), s, axis=1)

  def singulars(self):
    return jnp.full((math.prod(self._y_shape()),), 1.0 / self.scale, jnp.float32)

  def VT(self, x):
    check_image(x, self.in_shape, "AvgPoolSR.VT")
    s = self.scale
    z = _householder(self._blocks(x), jnp.full((s * s,), 1.0 / s, x.dtype))
    return jnp.concatenate([z[..., 0].reshape(-1), z[..., 1:].reshape(-1)])

  def V(self, v):
    check_image(v, (math.prod(self.in_shape),), "AvgPoolSR.V")
    H, W, C = self.in_shape
    s = self.scale
    m = C * (H // s) * (W // s)
    z = jnp.concatenate([v[:m].reshape(C, H // s, W // s, 1),
                         v[m:].reshape(C, H // s, W // s, s * s - 1)], axis=-1)
    return self._unblocks(_householder(z, jnp.full((s * s,), 1.0 / s, v.dtype)))

  def UT(self, y):
    check_image(y, self._y_shape(), "AvgPoolSR.UT")
    return jnp.transpose(y, (2, 0, 1)).reshape(-1)

  def U(self, u):
    check_image(u, (math.prod(self._y_shape()),), "AvgPoolSR.U")
    H, W, C = self.in_shape
    s = self.scale
    return jnp.transpose(u.reshape(C, H // s, W // s), (1, 2, 0))
