"""GroupNorm against a float64 NumPy reference (torch.nn.GroupNorm's definition)."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxir.models.norm import GroupNorm, group_norm


def _reference(x, scale, bias, groups, eps):
  x = np.asarray(x, np.float64)
  n, c = x.shape[0], x.shape[-1]
  g = x.reshape(n, -1, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
  return y * scale + bias


@pytest.mark.parametrize("shape,groups,eps", [((2, 8, 8, 64), 32, 1e-5), ((3, 16, 96), 32, 1e-6),
                                               ((1, 4, 4, 32), 8, 1e-5)])
def test_group_norm_matches_float64_reference(shape, groups, eps):
  rng = np.random.default_rng(0)
  x = (rng.standard_normal(shape) * 3 + 5).astype(np.float32)  # offset mean: two-pass matters
  c = shape[-1]
  scale = rng.standard_normal(c).astype(np.float32)
  bias = rng.standard_normal(c).astype(np.float32)
  got = jax.jit(group_norm, static_argnums=(3, 4))(x, scale, bias, groups, eps)
  np.testing.assert_allclose(np.asarray(got), _reference(x, scale, bias, groups, eps),
                             rtol=1e-5, atol=1e-5)


def test_module_params_and_dtype():
  x = jnp.ones((2, 4, 4, 64), jnp.bfloat16) * jnp.arange(64, dtype=jnp.bfloat16)
  params = GroupNorm().init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, params) == {"params": {"scale": (64,), "bias": (64,)}}
  y = GroupNorm().apply(params, x)
  assert y.dtype == jnp.bfloat16
  ref = _reference(np.asarray(x, np.float32), 1.0, 0.0, 32, 1e-5)
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=2e-2)


@pytest.mark.parametrize("offset", [30.0, 300.0])
def test_group_norm_error_with_a_large_mean_stays_at_input_rounding(offset):
  # The output is x * a + (bias - mean * a): its rounding error grows like
  # eps32 * |mean| / std, the same order as float32's own spacing of x there.
  rng = np.random.default_rng(1)
  x = (rng.standard_normal((2, 8, 8, 64)) + offset).astype(np.float32)
  scale = rng.standard_normal(64).astype(np.float32)
  bias = rng.standard_normal(64).astype(np.float32)
  got = jax.jit(group_norm, static_argnums=(3, 4))(x, scale, bias, 32, 1e-5)
  err = np.abs(np.asarray(got) - _reference(x, scale, bias, 32, 1e-5)).max()
  spacing = np.spacing(np.float32(offset))  # float32 step of x near its mean (std is 1)
  assert err <= 8 * spacing * np.abs(scale).max(), (err, spacing)
