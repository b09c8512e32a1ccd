"""Query-blocked attention: equal to the dense form, and linear in memory.

The blocked form is checked against the dense one (outputs and gradients), the
U-Nets with blocking forced on against the upstream PyTorch fixtures, and the
compiled temporary memory of both forms at two token counts.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxir.errors import ConfigError, ShapeError
from jaxir.models import from_torch
from jaxir.models import ddpm as D
from jaxir.models.attention import (AttentionConfig, attention, blocked_attention,
                                    dense_attention)
from references import FIXTURES, nhwc, rel_err

# Forces query blocks at every attention of the 32x32 fixtures (256 and 64
# tokens), with a block size that divides neither.
ALWAYS_BLOCKED = AttentionConfig(block_size=48, dense_max_tokens=0)


def _qkv(shape_q, s, d, seed=0, dtype=jnp.float32):
  *lead, t, c = shape_q
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(kq, (*lead, t, c), dtype)
  k = jax.random.normal(kk, (*lead, s, c), dtype)
  v = jax.random.normal(kv, (*lead, s, d), dtype)
  return q, k, v


# (q shape, key count, value width, block size, logit scale): divisible and
# not, one block smaller than the block size, cross-attention (S != T), no
# leading axes.
CASES = [((2, 4, 256, 16), 256, 16, 64, None),
         ((1, 3, 100, 8), 100, 8, 32, 0.25),
         ((1, 2, 20, 8), 20, 8, 32, None),
         ((2, 70, 12), 45, 5, 16, 0.25),
         ((33, 16), 33, 16, 8, None)]


@pytest.mark.parametrize("shape_q,s,d,block,logit_scale", CASES)
def test_blocked_equals_dense(shape_q, s, d, block, logit_scale):
  q, k, v = _qkv(shape_q, s, d)
  q = 3.0 * q  # peaked softmax rows, as in trained models
  dense = jax.jit(dense_attention, static_argnums=3)(q, k, v, logit_scale)
  blocked = jax.jit(blocked_attention, static_argnums=(3, 4))(q, k, v, logit_scale, block)
  assert blocked.shape == dense.shape == shape_q[:-1] + (d,)
  assert rel_err(blocked, dense) <= 2e-6


@pytest.mark.parametrize("shape_q,s,d,block,_", CASES[1:2] + CASES[3:4])
def test_blocked_gradients_equal_dense(shape_q, s, d, block, _):
  q, k, v = _qkv(shape_q, s, d, seed=1)
  g = jax.random.normal(jax.random.key(2), shape_q[:-1] + (d,))

  def loss(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * g), argnums=(0, 1, 2)))

  dense = loss(lambda q, k, v: dense_attention(q, k, v, 0.5))(q, k, v)
  blocked = loss(lambda q, k, v: blocked_attention(q, k, v, 0.5, block))(q, k, v)
  for a, b in zip(blocked, dense):
    assert rel_err(a, b) <= 1e-5


def test_vmap_equals_loop():
  """Solvers vmap the prior over images: a vmapped `lax.map` per image."""
  q, k, v = _qkv((3, 2, 70, 8), 70, 8, seed=3)
  cfg = AttentionConfig(block_size=32, dense_max_tokens=0)
  fn = jax.jit(jax.vmap(lambda q, k, v: attention(q, k, v, 0.3, cfg)))
  loop = np.stack([attention(q[i], k[i], v[i], 0.3, cfg) for i in range(3)])
  assert rel_err(fn(q, k, v), loop) <= 2e-6


def test_bfloat16_blocked_as_accurate_as_dense():
  q, k, v = _qkv((1, 2, 96, 16), 96, 16, dtype=jnp.bfloat16)
  exact = dense_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
  dense = dense_attention(q, k, v)
  blocked = blocked_attention(q, k, v, None, 40)
  assert blocked.dtype == dense.dtype == jnp.bfloat16
  # XLA may round the bfloat16 logits differently in the two programs, so
  # compare each with the float32 result of the same inputs.
  err_dense, err_blocked = rel_err(dense, exact), rel_err(blocked, exact)
  assert err_dense <= 3e-2 and err_blocked <= 1.5 * err_dense


def _has_scan(fn, *args):
  """Whether the traced program (with its nested jaxprs) holds a `scan` (`lax.map`)."""
  return "scan[" in str(jax.make_jaxpr(fn)(*args))


def test_switch_at_threshold():
  cfg = AttentionConfig(block_size=16, dense_max_tokens=64)
  for t, blocked in ((64, False), (65, True)):
    q, k, v = _qkv((1, t, 8), t, 8)
    assert cfg.use_blocks(t) is blocked
    assert _has_scan(lambda q, k, v: attention(q, k, v, config=cfg), q, k, v) is blocked
    out = attention(q, k, v, config=cfg)
    assert rel_err(out, dense_attention(q, k, v)) <= 2e-6


def test_bad_settings_and_shapes_raise_named_errors():
  with pytest.raises(ConfigError, match="block_size"):
    AttentionConfig(block_size=0)
  with pytest.raises(ConfigError, match="dense_max_tokens"):
    AttentionConfig(dense_max_tokens=-1)
  q, k, v = _qkv((1, 10, 8), 10, 8)
  with pytest.raises(ShapeError, match=r"\(\.\.\., T, C\)"):
    attention(q, k[..., :4], v)
  with pytest.raises(ShapeError):
    attention(q, k, v[:, :9])


def _temp_bytes(fn, *shapes):
  """Temporary bytes of the compiled program (`memory_analysis`).

  On CPU the dense attention becomes one YNNPACK fusion whose (T, S) buffer is
  internal and not counted, so those fusions are turned off here: then the
  logits are an ordinary XLA buffer that the analysis counts.
  """
  lowered = jax.jit(fn).lower(*shapes)
  opts = {"xla_cpu_experimental_ynn_fusion_type": ""} if jax.default_backend() == "cpu" else {}
  return lowered.compile(compiler_options=opts).memory_analysis().temp_size_in_bytes


def test_memory_quadratic_dense_linear_blocked():
  heads, c, block = 4, 16, 64  # the shipped natural64 prior's attention heads

  def temps(fn, t):
    s = jax.ShapeDtypeStruct((1, heads, t, c), jnp.float32)
    return _temp_bytes(fn, s, s, s)

  def grad_of(fn):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2))

  dense = lambda q, k, v: dense_attention(q, k, v)
  blocked = lambda q, k, v: blocked_attention(q, k, v, None, block)
  t1, t2 = 1024, 2048
  logits = heads * t2 * t2 * 4  # bytes of the dense (T, S) float32 logits at t2
  block_logits = heads * block * t2 * 4  # bytes of one block's logits at t2
  d1, d2 = temps(dense, t1), temps(dense, t2)
  assert d2 >= logits and d2 / d1 >= 3.5  # x4 per doubling: quadratic
  b1, b2 = temps(blocked, t1), temps(blocked, t2)
  assert b2 / b1 <= 2.5 and b2 <= 4 * block_logits  # x2 per doubling: linear
  gd1, gd2 = temps(grad_of(dense), t1), temps(grad_of(dense), t2)
  assert gd2 >= logits and gd2 / gd1 >= 3.5
  gb1, gb2 = temps(grad_of(blocked), t1), temps(grad_of(blocked), t2)
  assert gb2 / gb1 <= 2.5 and gb2 <= 8 * block_logits


def test_adm_fixtures_with_query_blocks():
  """Both attention orders of guided-diffusion, every attention blocked, vs PyTorch."""
  for name in ("adm_tiny_a", "adm_tiny_b"):
    fix = f"{FIXTURES}/adm/{name}"
    with open(fix + ".json") as f:
      model, params = from_torch(fix + ".pt", "adm", json.load(f))
    io = np.load(fix + "_io.npz")
    y = jnp.asarray(io["y"]) if "y" in io else None
    model = model.clone(attention=ALWAYS_BLOCKED)
    x, t = nhwc(io["x"]), jnp.asarray(io["t"])
    assert _has_scan(model.apply, params, x, t, y)
    out = jax.jit(model.apply)(params, x, t, y)
    assert rel_err(out, nhwc(io["out"])) <= 1e-5


def test_ddpm_fixture_with_query_blocks():
  fix = f"{FIXTURES}/ddpm/ddpm_tiny_a"
  with open(fix + ".json") as f:
    cfg = D.ddpm_config(**json.load(f))
  sd = {k: v.numpy() for k, v in torch.load(fix + ".pt", map_location="cpu",
                                            weights_only=True).items()}
  params = D.ddpm_params_from_state_dict(sd, cfg)
  model = D.DDPMUNet(cfg, attention=ALWAYS_BLOCKED)
  z = np.load(fix + "_io.npz")
  x, t = nhwc(z["x"]), jnp.asarray(z["t"], jnp.int32)
  assert _has_scan(model.apply, params, x, t)
  out = jax.jit(model.apply)(params, x, t)
  assert rel_err(out, nhwc(z["out"])) <= 1e-5

