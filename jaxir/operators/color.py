"""Colorization: y = a fixed weighted sum of the channels (a gray image).

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `Colorization`; the same class is in DDNM's
    `functions/svd_operators.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ShapeError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["Colorization", "DDRM_GRAY_WEIGHTS"]

_HI = jax.lax.Precision.HIGHEST

DDRM_GRAY_WEIGHTS = (0.3333, 0.3334, 0.3333)
"""The per-pixel row DDRM and DDNM use (`[[0.3333, 0.3334, 0.3333]]`)."""


class Colorization(SVDOperator):
  """Gray measurement y[..., 0] = sum_c w_c x[..., c]; the channel mean by default.

  Per pixel the 1 x C matrix wᵀ has one singular value |w| (sqrt(3)/3 for the
  3-channel mean, and to 8 digits also for DDRM's `DDRM_GRAY_WEIGHTS`), U = 1, and right
  basis Q = the Householder reflection taking e₁ to w/|w| (symmetric, closed
  form; DDRM takes LAPACK's basis, equal up to sign in the first vector and a
  rotation of the other two).

  Coefficient layout (DDRM's): `VT(x)` is (Q x_p) for every pixel p, flattened
  in (k, p) order, so the first H W entries are the gray components w·x/|w|;
  `UT(y)` is y flattened (H W,). Every method takes exactly one array (image
  (H, W, 3), gray measurement (H, W, 1) or coefficient vector) and raises
  `ShapeError` otherwise, a batch included (batch with `jax.vmap`).

  The image must have C = 3 channels (colour from grey): a one-channel (grey)
  image or prior, such as the shipped mnist32, raises `ShapeError`.

  Attributes:
    in_shape: static (H, W, 3).
    weights: static channel weights of length 3, or None for the mean 1/3.
  """
  weights: tuple | None = pytree.field(pytree_node=False, default=None)

  def __post_init__(self):
    shape = check_in_shape(self.in_shape, "Colorization")
    if shape[2] != 3:
      raise ShapeError(f"Colorization: in_shape={shape} has {shape[2]} channel(s); "
                       "colorization restores 3 colour channels from a grey image, so it needs "
                       "C = 3. A grey (1-channel) prior such as mnist32 cannot colorize: use an "
                       "RGB prior (e.g. natural64) and 3-channel images, or pick another task.")
    object.__setattr__(self, "in_shape", shape)
    if self.weights is not None:
      w = tuple(float(v) for v in np.ravel(self.weights))
      if len(w) != shape[2] or not np.any(w):
        raise ShapeError(f"Colorization: weights {self.weights!r} must be {shape[2]} "
                         f"numbers, not all zero (one per channel of in_shape={shape}).")
      object.__setattr__(self, "weights", w)

  def _w(self, dtype):
    c = self.in_shape[2]
    w = np.full((c,), 1.0 / c) if self.weights is None else np.asarray(self.weights)
    return jnp.asarray(w, dtype)

  def _basis(self, dtype):
    """Q (C, C): symmetric orthogonal, first column w / |w|."""
    c = self.in_shape[2]
    w = np.full((c,), 1.0 / c) if self.weights is None else np.asarray(self.weights)
    u = w / np.linalg.norm(w)
    v = -u
    v[0] += 1.0
    vv = v @ v
    q = np.eye(c) - (2.0 / vv) * np.outer(v, v) if vv > 0 else np.eye(c)
    return jnp.asarray(q, dtype)

  def _y_shape(self):
    H, W, _ = self.in_shape
    return (H, W, 1)

  def A(self, x):
    check_image(x, self.in_shape, "Colorization.A")
    return jnp.sum(x * self._w(x.dtype), axis=-1, keepdims=True)

  def AT(self, y):
    check_image(y, self._y_shape(), "Colorization.AT")
    return y * self._w(y.dtype)

  def pinv(self, y):
    check_image(y, self._y_shape(), "Colorization.pinv")
    w = self._w(y.dtype)
    return y * (w / jnp.sum(w * w))

  def singulars(self):
    H, W, _ = self.in_shape
    return jnp.full((H * W,), jnp.linalg.norm(self._w(jnp.float32)), jnp.float32)

  def VT(self, x):
    check_image(x, self.in_shape, "Colorization.VT")
    z = jnp.einsum("hwc,ck->hwk", x, self._basis(x.dtype), precision=_HI)  # Q = Qᵀ
    return jnp.moveaxis(z, -1, 0).reshape(-1)

  def V(self, v):
    H, W, C = self.in_shape
    check_image(v, (H * W * C,), "Colorization.V")
    z = jnp.moveaxis(v.reshape(C, H, W), 0, -1)
    return jnp.einsum("hwk,kc->hwc", z, self._basis(v.dtype), precision=_HI)

  def UT(self, y):
    check_image(y, self._y_shape(), "Colorization.UT")
    return y.reshape(-1)

  def U(self, u):
    H, W, _ = self.in_shape
    check_image(u, (H * W,), "Colorization.U")
    return u.reshape(H, W, 1)
