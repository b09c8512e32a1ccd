"""GroupNorm over the channel (last) axis, computed in float32, fast on CPU.

Both U-Nets (`adm.py`, `ddpm.py`) normalize with this one module. The
statistics are the usual biased group mean and variance over all non-batch
axes, taken in two passes (mean, then centered squares) as PyTorch does. They
are reduced per channel first, keeping channels as the contiguous minor axis,
and only then summed within groups: reducing a (N, HW, G, C/G) view directly
(as `flax.linen.GroupNorm` does) leaves a minor axis of 1-4 elements, which XLA
CPU does not vectorize (measured 33 ms vs 7 ms for GroupNorm+SiLU on a
(8, 64, 64, 64) float32 batch on one core here; PyTorch: 4 ms). The normalized
output is one fused multiply-add per element.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GroupNorm", "group_norm"]


def _group_total(v, groups):
  """(N, C) per-channel sums -> (N, C) sums over each channel's group."""
  n, c = v.shape
  return jnp.repeat(v.reshape(n, groups, c // groups).sum(-1), c // groups, axis=-1)


def group_norm(x, scale, bias, num_groups: int, epsilon: float):
  """GroupNorm of x (N, ..., C) with per-channel scale and bias (C,), in float32.

  Returns float32 of x's shape. C must be a multiple of `num_groups`.
  """
  h = x.astype(jnp.float32)
  c = h.shape[-1]
  axes = tuple(range(1, h.ndim - 1))
  count = (h.size // (h.shape[0] * c)) * (c // num_groups)
  bshape = (h.shape[0],) + (1,) * len(axes) + (c,)
  mean = _group_total(h.sum(axes), num_groups) / count
  centered = h - mean.reshape(bshape)
  var = _group_total(jnp.square(centered).sum(axes), num_groups) / count
  a = jax.lax.rsqrt(var + epsilon) * scale
  return centered * a.reshape(bshape) + bias


class GroupNorm(nn.Module):
  """GroupNorm(num_groups, C, eps) over the last axis; parameters `scale`, `bias` (C,).

  Computed in float32 and cast back to the input dtype (upstream's
  `GroupNorm32`); the parameter names match `flax.linen.GroupNorm`.
  """
  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    return group_norm(x, scale, bias, self.num_groups, self.epsilon).astype(x.dtype)
