"""A dense linear operator y = M x.reshape(-1), in SVD form.

For small problems (analytic-prior tests, low-dimensional toy inverse problems)
and for users with an explicit measurement matrix. The SVD is computed once,
in float64 NumPy, when the operator is built.

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `GeneralH` (the same factorization).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["MatrixOperator", "matrix_operator"]

_HI = "highest"


class MatrixOperator(SVDOperator):
  """y = M @ x.reshape(-1) for one (H, W, C) image, M of shape (m <= n, n = H W C).

  Build with `matrix_operator(M, in_shape)`. `VT(x)` gives the n coefficients
  of x in the right singular basis (the first len(s) carry the singular values,
  in decreasing order), `UT(y)` the m coefficients of y.

  Attributes:
    in_shape: static (H, W, C).
    u: (m, m) left singular vectors (columns).
    s: (m,) singular values, decreasing (zeros where M is rank-deficient).
    vt: (n, n) right singular vectors (rows).
  """
  u: jnp.ndarray
  s: jnp.ndarray
  vt: jnp.ndarray

  def _check(self, x):
    check_image(x, self.in_shape, "MatrixOperator", kind="image")

  def matrix(self):
    """The dense (m, n) matrix M = U diag(s) Vᵀ."""
    k = self.s.shape[0]
    return jnp.matmul(self.u[:, :k] * self.s, self.vt[:k], precision=_HI)

  def singulars(self):
    return self.s

  def VT(self, x):
    self._check(x)
    return jnp.matmul(self.vt, jnp.reshape(x, (-1,)), precision=_HI)

  def V(self, v):
    return jnp.reshape(jnp.matmul(self.vt.T, v, precision=_HI), self.in_shape)

  def _check_y(self, y):
    check_image(y, (self.u.shape[0],), "MatrixOperator", kind="measurement")

  def UT(self, y):
    self._check_y(y)
    return jnp.matmul(self.u.T, y, precision=_HI)

  def U(self, u):
    return jnp.matmul(self.u, u, precision=_HI)

  def A(self, x):
    self._check(x)
    return jnp.matmul(self.matrix(), jnp.reshape(x, (-1,)), precision=_HI)

  def AT(self, y):
    self._check_y(y)
    return jnp.reshape(jnp.matmul(self.matrix().T, y, precision=_HI), self.in_shape)


def matrix_operator(matrix, in_shape) -> MatrixOperator:
  """The operator of a dense real (m, n) matrix on (H, W, C) images with H W C = n.

  Args:
    matrix: (m, n) real array (NumPy or JAX, concrete: the SVD is taken here).
    in_shape: (H, W, C) of the images, row-major flattening.
  """
  shape = check_in_shape(in_shape, "matrix_operator")
  m_np = np.asarray(matrix, np.float64)
  if m_np.ndim != 2 or m_np.shape[1] != int(np.prod(shape)):
    raise ShapeError(f"matrix has shape {m_np.shape}; expected (m, {int(np.prod(shape))}) for "
                     f"images of shape {shape}.")
  if m_np.shape[0] > m_np.shape[1]:
    raise ShapeError(f"matrix has shape {m_np.shape}: more measurements than unknowns. The SVD "
                     "form needs m <= n; reduce the system first (e.g. to its normal "
                     "equations' square root, or keep a row basis).")
  if not np.all(np.isfinite(m_np)):
    raise ConfigError("matrix has NaN or inf entries.")
  u, s, vt = np.linalg.svd(m_np, full_matrices=True)
  return MatrixOperator(shape, jnp.asarray(u, jnp.float32), jnp.asarray(s, jnp.float32),
                        jnp.asarray(vt, jnp.float32))
