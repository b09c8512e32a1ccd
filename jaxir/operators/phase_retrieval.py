"""Fourier phase retrieval: magnitudes of the oversampled, centred 2-D DFT.

DPS's `PhaseRetrievalOperator`: zero-pad every channel by `int(oversample / 8
* 256)` pixels on each side, apply fastMRI's centred orthonormal FFT
(`fftshift(fft2(ifftshift(x), norm="ortho"))` over the two image axes) and
keep the modulus. Channels are transformed independently.

References:
  Chung et al., DPS, ICLR 2023; `guided_diffusion/measurements.py`
    (PhaseRetrievalOperator), `util/img_utils.py` (fft2_m),
    `util/fastmri_utils.py` (fft2c_new, fftshift, ifftshift).
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxir import pytree

from jaxir.errors import ConfigError
from jaxir.operators.base import Operator, check_image, check_in_shape, safe_abs

__all__ = ["PhaseRetrieval"]


class PhaseRetrieval(Operator):
  """y = |F_c pad(x)|, per channel; a nonlinear operator.

  Attributes:
    in_shape: static (H, W, C).
    oversample: static; each side gets `int(oversample / 8 * H)` zero rows and
      `int(oversample / 8 * W)` zero columns (DPS: 2.0, i.e. 64 for 256x256, so
      y is (384, 384, C)). DPS hard-codes 256 for H and W; scaling with the
      image size is the same there and keeps the oversampling ratio elsewhere.

  `A` maps (H, W, C) -> (H + 2 ph, W + 2 pw, C), float; its gradient at zero
  Fourier coefficients is 0, as with torch's `abs`.
  """
  oversample: float = pytree.field(pytree_node=False, default=2.0)

  def __post_init__(self):
    object.__setattr__(self, "in_shape", check_in_shape(self.in_shape, "PhaseRetrieval"))
    if not self.oversample >= 0:
      raise ConfigError(f"oversample={self.oversample!r} must be >= 0 (DPS: 2.0).")

  @property
  def pad(self) -> tuple[int, int]:
    """Zero padding (rows, columns) added on each side."""
    h, w, _ = self.in_shape
    return int(self.oversample / 8.0 * h), int(self.oversample / 8.0 * w)

  def A(self, x):
    """Fourier magnitudes: (H, W, C) -> (H + 2 ph, W + 2 pw, C)."""
    check_image(x, self.in_shape, "PhaseRetrieval.A", kind="image")
    ph, pw = self.pad
    xp = jnp.pad(x, ((ph, ph), (pw, pw), (0, 0)))
    z = jnp.fft.ifftshift(xp, axes=(0, 1))
    z = jnp.fft.fft2(z, axes=(0, 1), norm="ortho")
    z = jnp.fft.fftshift(z, axes=(0, 1))
    return safe_abs(z).astype(x.dtype)
