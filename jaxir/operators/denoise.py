"""Denoising: the identity forward model y = x (noise is added by the caller).

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `Denoising`.
  Chung et al., "Diffusion Posterior Sampling" (DPS), 2023:
    `guided_diffusion/measurements.py` `DenoiseOperator`.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxir.errors import ShapeError
from jaxir.operators.base import SVDOperator

__all__ = ["Identity"]


def _check_in_shape(in_shape, name: str) -> tuple:
  """Return `in_shape` as a tuple of 3 positive ints, or raise `ShapeError`."""
  try:
    shape = tuple(int(d) for d in in_shape)
  except TypeError:
    shape = None
  if shape is None or len(shape) != 3 or min(shape) < 1:
    raise ShapeError(f"{name}: in_shape={in_shape!r} must be (H, W, C) with positive "
                     "sizes (one channels-last image, no batch axis; batch with vmap).")
  return shape


def _check_array(a, shape, name: str):
  """Raise `ShapeError` unless `a` has exactly `shape` (one image or measurement, no batch)."""
  got = tuple(jnp.shape(a))
  if got != tuple(shape):
    raise ShapeError(f"{name} takes one array of shape {tuple(shape)}, got {got}; "
                     "batch with jax.vmap.")
  return a


class Identity(SVDOperator):
  """y = x, in SVD form with U = V = I and all singular values 1.

  Coefficients are the image flattened in (H, W, C) order. Every method takes
  exactly one array (an (H, W, C) image or measurement, or an (H W C,)
  coefficient vector) and raises `ShapeError` on anything else, a batch
  included.

  Attributes:
    in_shape: static (H, W, C).
  """

  def __post_init__(self):
    object.__setattr__(self, "in_shape", _check_in_shape(self.in_shape, "Identity"))

  def _n(self):
    return (int(np.prod(self.in_shape)),)

  def A(self, x):
    return _check_array(x, self.in_shape, "Identity.A")

  def AT(self, y):
    return _check_array(y, self.in_shape, "Identity.AT")

  def pinv(self, y):
    return _check_array(y, self.in_shape, "Identity.pinv")

  def singulars(self):
    return jnp.ones(self._n(), jnp.float32)

  def VT(self, x):
    return jnp.reshape(_check_array(x, self.in_shape, "Identity.VT"), (-1,))

  def V(self, v):
    return jnp.reshape(_check_array(v, self._n(), "Identity.V"), self.in_shape)

  def UT(self, y):
    return jnp.reshape(_check_array(y, self.in_shape, "Identity.UT"), (-1,))

  def U(self, u):
    return jnp.reshape(_check_array(u, self._n(), "Identity.U"), self.in_shape)
