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


class Identity(SVDOperator):
  """y = x, in SVD form with U = V = I and all singular values 1.

  Coefficients are the image flattened in (H, W, C) order.

  Attributes:
    in_shape: static (H, W, C).
  """

  def __post_init__(self):
    object.__setattr__(self, "in_shape", _check_in_shape(self.in_shape, "Identity"))

  def A(self, x):
    return x

  def AT(self, y):
    return y

  def pinv(self, y):
    return y

  def singulars(self):
    return jnp.ones((int(np.prod(self.in_shape)),), jnp.float32)

  def VT(self, x):
    return jnp.reshape(x, (-1,))

  def V(self, v):
    return jnp.reshape(v, self.in_shape)

  def UT(self, y):
    return jnp.reshape(y, (-1,))

  def U(self, u):
    return jnp.reshape(u, self.in_shape)
