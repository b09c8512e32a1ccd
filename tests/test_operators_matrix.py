"""MatrixOperator against NumPy's dense linear algebra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxir.errors import ShapeError
from jaxir.operators.base import adjoint_error
from jaxir.operators.matrix import matrix_operator
from jaxir.priors.posterior import operator_matrix


@pytest.mark.parametrize("m", [1, 4, 6])
def test_matches_dense_numpy(m):
  rng = np.random.default_rng(m)
  mat = rng.normal(size=(m, 6))
  if m == 4:
    mat[3] = mat[0] + mat[1]  # rank-deficient: a zero singular value
  op = matrix_operator(mat, (1, 2, 3))
  x = jnp.asarray(rng.normal(size=(1, 2, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(m,)), jnp.float32)
  np.testing.assert_allclose(operator_matrix(op), mat, atol=1e-5)
  np.testing.assert_allclose(op.A(x), mat @ np.asarray(x).ravel(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(op.AT(y)).ravel(), mat.T @ np.asarray(y), atol=1e-5)
  np.testing.assert_allclose(np.asarray(op.pinv(y)).ravel(),
                             np.linalg.pinv(mat, rcond=1e-6) @ np.asarray(y), atol=1e-4)
  assert float(adjoint_error(op, jax.random.key(0))) < 1e-6
  np.testing.assert_allclose(op.V(op.VT(x)), x, atol=1e-6)
  np.testing.assert_allclose(op.U(op.UT(y)), y, atol=1e-6)


def test_bad_shapes():
  with pytest.raises(ShapeError, match="expected"):
    matrix_operator(np.ones((2, 5)), (1, 2, 3))
  with pytest.raises(ShapeError, match="more measurements"):
    matrix_operator(np.ones((7, 6)), (1, 2, 3))
  with pytest.raises(ShapeError, match="one image"):
    matrix_operator(np.ones((2, 6)), (1, 2, 3)).A(jnp.ones((4, 1, 2, 3)))
