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


def _reference_act(x, scale, bias, groups, eps, act):
  """float64 jnp reference (differentiable): GroupNorm, a (C,) or (N, C) affine, SiLU."""
  n, c = x.shape[0], x.shape[-1]
  g = x.reshape(n, -1, groups, c // groups)
  mean = g.mean(axis=(1, 3), keepdims=True)
  var = g.var(axis=(1, 3), keepdims=True)
  y = ((g - mean) / jnp.sqrt(var + eps)).reshape(x.shape)
  if scale.ndim == 2:
    scale = scale.reshape((n,) + (1,) * (x.ndim - 2) + (c,))
    bias = bias.reshape(scale.shape)
  z = y * scale + bias
  return z * jax.nn.sigmoid(z) if act else z


@pytest.mark.parametrize("shape,groups,per_example,act,offset", [
    ((2, 8, 8, 64), 32, False, False, 5.0), ((3, 4, 4, 64), 32, True, True, 5.0),
    ((2, 16, 96), 32, True, False, 0.0), ((2, 4, 4, 32), 8, False, True, 30.0)])
def test_hand_written_gradient_matches_float64_autodiff(shape, groups, per_example, act, offset):
  # group_norm's backward is a custom_vjp; autodiff of the float64 definition is the reference.
  rng = np.random.default_rng(2)
  x = rng.standard_normal(shape) * 3 + offset
  pshape = (shape[0], shape[-1]) if per_example else (shape[-1],)
  scale, bias = rng.standard_normal(pshape), rng.standard_normal(pshape)
  w = rng.standard_normal(shape)
  f32 = lambda *a: tuple(np.asarray(v, np.float32) for v in a)
  got_y, vjp = jax.vjp(lambda *a: group_norm(*a, groups, 1e-5, act=act), *f32(x, scale, bias))
  got = vjp(jnp.asarray(w, jnp.float32))
  with jax.enable_x64():
    want_y, vjp64 = jax.vjp(lambda *a: _reference_act(*a, groups, 1e-5, act),
                            *(jnp.asarray(v, jnp.float64) for v in (x, scale, bias)))
    want = [np.asarray(v) for v in vjp64(jnp.asarray(w))]
  np.testing.assert_allclose(np.asarray(got_y), np.asarray(want_y), rtol=1e-5, atol=1e-5)
  for name, a, b in zip(("x", "scale", "bias"), got, want):
    assert a.shape == b.shape, name
    err = np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()
    assert err < 2e-5, (name, err)


def test_module_scale_shift_and_act_equal_the_explicit_form():
  # ADM's scale-shift norm: norm(x) * (1 + s) + shift, then SiLU, folded into one op.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 64)), jnp.float32)
  s, shift = (jnp.asarray(rng.standard_normal((2, 1, 1, 64)), jnp.float32) for _ in range(2))
  mod = GroupNorm()
  params = {"params": {"scale": jnp.asarray(rng.standard_normal(64), jnp.float32),
                       "bias": jnp.asarray(rng.standard_normal(64), jnp.float32)}}
  got = mod.apply(params, x, scale_shift=(s, shift), act=True)
  z = mod.apply(params, x) * (1 + s) + shift
  np.testing.assert_allclose(np.asarray(got), np.asarray(z * jax.nn.sigmoid(z)), atol=2e-6)
  with pytest.raises(ValueError, match="must both be"):
    group_norm(x, jnp.ones(32), jnp.zeros(32), 32, 1e-5)
