"""The fast-gradient convolution equals XLA's convolution and its gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxir.models.conv import conv_general_dilated

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("kernel,stride,padding", [
    (3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))), (3, 2, ((0, 1), (0, 1))),
    (1, 1, ((0, 0), (0, 0))), (3, 1, "SAME"), (3, 2, "SAME")])
@pytest.mark.parametrize("route", ["mixed", "matmul", "xla"])
def test_value_and_gradients_match_lax(kernel, stride, padding, route, monkeypatch):
  monkeypatch.setenv("JAXIR_CONV_GRAD", route)
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, 9, 10, 5))
  w = jax.random.normal(kw, (kernel, kernel, 5, 7))

  def ref(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)

  def ours(x, w):
    return conv_general_dilated(x, w, (stride, stride), padding,
                                dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, DN))

  y_ref, y = ref(x, w), ours(x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-5)
  g = jax.random.normal(kg, y_ref.shape)
  loss = lambda f: (lambda x, w: jnp.sum(f(x, w) * g))
  dref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  dours = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
  for a, b in zip(dours, dref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
