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

from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["Identity"]


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
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "Identity"))

  def _n(self):
    return (int(np.prod(self.in_shape)),)

  def A(self, x):
    return check_image(x, self.in_shape, "Identity.A")

  def AT(self, y):
    return check_image(y, self.in_shape, "Identity.AT")

  def pinv(self, y):
    return check_image(y, self.in_shape, "Identity.pinv")

  def singulars(self):
    return jnp.ones(self._n(), jnp.float32)

  def VT(self, x):
    return jnp.reshape(check_image(x, self.in_shape, "Identity.VT"), (-1,))

  def V(self, v):
    return jnp.reshape(check_image(v, self._n(), "Identity.V"), self.in_shape)

  def UT(self, y):
    return jnp.reshape(check_image(y, self.in_shape, "Identity.UT"), (-1,))

  def U(self, u):
    return jnp.reshape(check_image(u, self._n(), "Identity.U"), self.in_shape)
