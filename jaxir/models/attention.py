"""Exact softmax attention, dense or over blocks of queries, for both U-Nets.

`attention(q, k, v)` is softmax(q kᵀ · scale) v over the last two axes. Up to
`AttentionConfig.dense_max_tokens` queries it is computed densely, the way the
U-Nets always did. With more queries it runs `lax.map` over blocks of
`block_size` queries. Each block sees every key, so the softmax of each query
row is the same exact computation as in the dense form, not an approximation.
The outputs agree to float32 rounding. The dense form holds (..., T, S)
logits, which grow with the square of the image area. The blocked form holds
(..., block_size, S), which grows linearly. Each block is wrapped in
`jax.checkpoint`, so reverse mode recomputes a block's logits rather than
storing them all, and gradients also take linear memory. A query count that
`block_size` does not divide is handled by one smaller dense block at the end.

Measured with XLA CPU on a 2-core AMD EPYC (32 MiB L3), float32, batch 1,
process CPU time (the machine was shared, so wall times were not usable):
* attention alone, 4 heads of 16 channels (the shipped `natural64` prior,
  attention at 1/8 resolution, so a P x P image gives (P/8)^2 tokens),
  dense vs blocks of 64 / 128 / 256 queries, ms:
  1024 tokens 6.5 vs 7.1 / 7.0 / 7.5; 2048 tokens 68 vs 33 / 33 / 37;
  4096 tokens 311 vs 150 / 173 / 184; 8192 tokens 1224 vs 608 / 727 / 1317.
  8 heads of 64 (the attention of the public ffhq256_dps prior): 256 tokens
  2.0 vs 2.3 (blocks of 64); 1024 tokens 43 vs 41 / 36; 4096 tokens 872 vs
  641 / 635. Blocks are faster once a block's logits fit the cache and the
  dense ones do not. The crossover lies between 1024 and 2048 tokens, so
  the default stays dense up to 1024 tokens (a 256 x 256 image for
  natural64, 512 x 512 for priors with attention at 1/16) and uses blocks of
  64 queries above.
* one natural64 U-Net forward at 1024 x 1024, all-dense vs default:
  52.9 vs 19.5 s CPU time, peak resident memory 9.1 vs 1.9 GiB. At 512 x 512:
  3.8 vs 3.1 s and 0.76 vs 0.71 GiB (one run each). Up to 256 x 256 the
  compiled program is the one before query blocks existed, op for op.
On a GPU larger blocks are likely faster (not measured); set `block_size`.
XLA CPU runs the dense attention as one YNNPACK fusion whose (T, S) buffer is
internal. `Compiled.memory_analysis()` does not count that buffer, so there
the dense path shows near-zero temporary memory. Compiling with
`compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}` makes it
visible (tests/test_attention.py does so).

References:
  Rabe & Staats, "Self-attention Does Not Need O(n^2) Memory", 2021
    (arXiv:2112.05682): query chunking with checkpointed chunks.
  openai/guided-diffusion `guided_diffusion/unet.py` (`QKVAttentionLegacy`),
  ermongroup/ddim `models/diffusion.py` (`AttnBlock`): the dense forms.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxir.errors import ConfigError, ShapeError

__all__ = ["AttentionConfig", "attention", "dense_attention", "blocked_attention"]


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """When and how the U-Nets' attention runs over query blocks (hashable, static).

  Attributes:
    block_size: queries per block of the blocked form (jaxir's CPU
      measurement in the module docstring: 64 was fastest or within 15 % of
      the fastest of 32-512; larger blocks may suit a GPU).
    dense_max_tokens: most queries computed densely. Above it the blocked form
      runs (jaxir's measured CPU crossover lies between 1024 and 2048 tokens).
      0 always blocks. A huge value never blocks.
  """
  block_size: int = 64  # jaxir measurement, module docstring.
  dense_max_tokens: int = 1024  # jaxir measurement, module docstring.

  def __post_init__(self):
    if int(self.block_size) != self.block_size or self.block_size < 1:
      raise ConfigError(f"block_size={self.block_size} must be a positive integer "
                        "(queries per block, e.g. 1024).")
    if int(self.dense_max_tokens) != self.dense_max_tokens or self.dense_max_tokens < 0:
      raise ConfigError(f"dense_max_tokens={self.dense_max_tokens} must be an integer >= 0 "
                        "(0 always uses query blocks).")

  def use_blocks(self, num_queries: int) -> bool:
    """Whether `attention` runs over query blocks for `num_queries` queries."""
    return num_queries > self.dense_max_tokens


def _check(q, k, v):
  if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
    raise ShapeError(f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; expected "
                     "(..., T, C), (..., S, C), (..., S, D) with the same leading axes.")
  if (q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2] or q.shape[-1] != k.shape[-1]
      or k.shape[-2] != v.shape[-2]):
    raise ShapeError(f"q, k, v have shapes {q.shape}, {k.shape}, {v.shape}; expected "
                     "(..., T, C), (..., S, C), (..., S, D) with the same leading axes.")


def dense_attention(q, k, v, logit_scale: float | None = None):
  """softmax(q kᵀ · logit_scale) v with all logits at once.

  The logits are computed in q's dtype, then the scaling and softmax run in
  float32. The weights are cast to v's dtype for the product with v, as in
  the upstream bfloat16/float16 models.

  Args:
    q: (..., T, C) queries.
    k: (..., S, C) keys.
    v: (..., S, D) values.
    logit_scale: factor on the float32 logits (None: no multiplication, for
      callers that scaled q and k beforehand).

  Returns:
    (..., T, D) in v's dtype.
  """
  w = jnp.einsum("...tc,...sc->...ts", q, k).astype(jnp.float32)
  if logit_scale is not None:
    w = w * logit_scale
  w = jax.nn.softmax(w, axis=-1).astype(v.dtype)
  return jnp.einsum("...ts,...sd->...td", w, v)


def blocked_attention(q, k, v, logit_scale: float | None = None,
                      block_size: int = AttentionConfig.block_size):
  """`dense_attention` computed over blocks of `block_size` queries.

  Each block's output is computed by `dense_attention` on that block against
  all keys, so the result equals the dense one up to float32 rounding (the
  same reductions, in blocks). The blocks run one after another in
  `lax.map`, each under `jax.checkpoint`. Peak temporary memory is about
  (..., block_size, S) logits, forward and backward.

  Args:
    q, k, v, logit_scale: as `dense_attention`.
    block_size: queries per block. A remainder of T mod block_size queries
      forms one last, smaller block.

  Returns:
    (..., T, D) in v's dtype.
  """
  t, c = q.shape[-2:]
  lead = q.shape[:-2]
  nb, rem = divmod(t, block_size)
  block = functools.partial(dense_attention, k=k, v=v, logit_scale=logit_scale)
  parts = []
  if nb:
    qb = q[..., :nb * block_size, :].reshape(lead + (nb, block_size, c))
    qb = jnp.moveaxis(qb, -3, 0)
    ob = jax.lax.map(jax.checkpoint(block, prevent_cse=False), qb)
    parts.append(jnp.moveaxis(ob, 0, -3).reshape(lead + (nb * block_size, v.shape[-1])))
  if rem:
    parts.append(block(q[..., nb * block_size:, :]))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-2)


def attention(q, k, v, logit_scale: float | None = None,
              config: AttentionConfig = AttentionConfig()):
  """softmax(q kᵀ · logit_scale) v, over query blocks when there are many queries.

  Dense (`dense_attention`) up to `config.dense_max_tokens` queries, blocked
  (`blocked_attention` with `config.block_size`) above. The choice is made
  from static shapes at trace time.

  Args:
    q: (..., T, C) queries.
    k: (..., S, C) keys.
    v: (..., S, D) values.
    logit_scale: factor on the float32 logits, or None.
    config: the `AttentionConfig`.

  Returns:
    (..., T, D) in v's dtype.

  Raises:
    ShapeError: the shapes do not fit together.
  """
  _check(q, k, v)
  if config.use_blocks(q.shape[-2]):
    return blocked_attention(q, k, v, logit_scale, config.block_size)
  return dense_attention(q, k, v, logit_scale)
