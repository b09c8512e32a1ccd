"""The ADM U-Net of guided-diffusion (DPS's FFHQ prior, OpenAI's ImageNet priors) in Flax.

`ADMUNet` computes what guided-diffusion's `UNetModel.forward` computes, in NHWC.
Module names follow the PyTorch module tree (`input_blocks_3_0/in_layers_2`
is `input_blocks.3.0.in_layers.2`), so `jaxir.models.convert` maps checkpoint
keys mechanically: `_<digits>` becomes `.<digits>`, `kernel`/`scale`/`embedding`
become `weight`.

Precision: with `dtype=jnp.bfloat16` the convolutions and the attention products
run in bfloat16 while parameters, group norms, softmax, the timestep/class
embedding MLP and the output head stay float32 (as upstream's `use_fp16` keeps
them float32). Measured against the float32 PyTorch output on the upstream
fixtures (32x32, trained-like random weights, t in {0, 517, 999}): relative max
error 2.2e-3 (`adm_tiny_a`) and 3.3e-3 (`adm_tiny_b`), relative RMS error
1.5e-3 and 1.8e-3. In float32 the model matches PyTorch to about 5e-7.

References:
  Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021.
  openai/guided-diffusion `guided_diffusion/unet.py`, `nn.py`, `script_util.py`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxir.errors import ConfigError, ShapeError
from jaxir.models.attention import AttentionConfig, attention
from jaxir.models.activations import silu
from jaxir.models.conv import conv2d
from jaxir.models.norm import GroupNorm
from jaxir.models.resample import (Downsample, Upsample, avg_pool2, check_unet_input,
                                   upsample_nearest)

__all__ = ["ADMConfig", "adm_config", "ADMUNet", "timestep_embedding",
           "ResBlock", "AttentionBlock", "Upsample", "Downsample", "NUM_CLASSES"]

NUM_CLASSES = 1000  # guided-diffusion's class count for class_cond models (ImageNet).

# Default channel multipliers of `script_util.create_model` when channel_mult="".
_DEFAULT_CHANNEL_MULT = {
    512: (0.5, 1, 1, 2, 2, 4, 4),
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
}


@dataclasses.dataclass(frozen=True)
class ADMConfig:
  """The arguments of guided-diffusion's `UNetModel` (2-D only), hashable.

  Attributes:
    image_size: training resolution (informational; any multiple of
      2**(len(channel_mult) - 1) runs).
    in_channels, out_channels: image channels in, output channels
      (2 * in_channels when the model learns sigma).
    model_channels: base width.
    num_res_blocks: residual blocks per level.
    attention_resolutions: downsample rates (1, 2, 4, ...) with attention.
    dropout: training-only; the Flax model is inference-only (no dropout).
    channel_mult: width multiplier per level (may hold 0.5 at 512x512).
    conv_resample: learned 3x3 conv in Up/Downsample (else nearest / avg pool).
    num_classes: class count of a class-conditional model, or None.
    use_checkpoint: rematerialize res/attention blocks (`nn.remat`).
    use_fp16: upstream flag, recorded only; pick the compute dtype on `ADMUNet`.
    num_heads, num_head_channels, num_heads_upsample: attention heads; a
      positive `num_head_channels` fixes channels per head and overrides both
      head counts; `num_heads_upsample=-1` means `num_heads`.
    use_scale_shift_norm: FiLM conditioning (norm(h) * (1 + scale) + shift).
    resblock_updown: residual blocks for up/downsampling.
    use_new_attention_order: `QKVAttention` (split q, k, v then heads) instead
      of `QKVAttentionLegacy` (split heads then q, k, v).
  """
  image_size: int
  in_channels: int = 3
  model_channels: int = 128
  out_channels: int = 3
  num_res_blocks: int = 2
  attention_resolutions: tuple = ()
  dropout: float = 0.0
  channel_mult: tuple = (1, 2, 4, 8)
  conv_resample: bool = True
  num_classes: int | None = None
  use_checkpoint: bool = False
  use_fp16: bool = False
  num_heads: int = 1
  num_head_channels: int = -1
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = False
  resblock_updown: bool = False
  use_new_attention_order: bool = False

  def __post_init__(self):
    object.__setattr__(self, "attention_resolutions",
                       tuple(int(r) for r in self.attention_resolutions))
    object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
    if not self.channel_mult:
      raise ConfigError("channel_mult is empty; give one multiplier per level, e.g. (1, 2, 4).")
    widths = {int(m * self.model_channels) for m in self.channel_mult}
    bad = sorted(w for w in widths if w <= 0 or w % 32)
    if bad:
      raise ConfigError(f"level widths {bad} are not positive multiples of 32 (GroupNorm "
                        "uses 32 groups); change model_channels or channel_mult.")
    if self.num_head_channels != -1:
      att = {int(m * self.model_channels) for m in self.channel_mult}
      if self.num_head_channels <= 0 or any(w % self.num_head_channels for w in att):
        raise ConfigError(f"num_head_channels={self.num_head_channels} must divide every level "
                          f"width {sorted(att)}, or be -1 to use num_heads.")
    elif self.num_heads <= 0:
      raise ConfigError(f"num_heads={self.num_heads} must be positive when num_head_channels=-1.")

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.model_channels

  @property
  def heads_upsample(self) -> int:
    return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample


def adm_config(image_size: int, num_channels: int, num_res_blocks: int, channel_mult: str = "",
               learn_sigma: bool = False, class_cond: bool = False, use_checkpoint: bool = False,
               attention_resolutions: str = "16", num_heads: int = 1, num_head_channels: int = -1,
               num_heads_upsample: int = -1, use_scale_shift_norm: bool = False,
               dropout: float = 0.0, resblock_updown: bool = False, use_fp16: bool = False,
               use_new_attention_order: bool = False, in_channels: int = 3) -> ADMConfig:
  """`ADMConfig` from guided-diffusion `script_util.create_model` keyword arguments.

  Follows `create_model` exactly: `channel_mult=""` picks the per-resolution
  default (512, 256, 128, 64), otherwise "1,2,2" is parsed; attention at
  resolution r becomes downsample rate image_size // r; 3 input channels,
  6 outputs when `learn_sigma`, 1000 classes when `class_cond`.

  `in_channels` is jaxir's one addition (create_model fixes 3; guided-diffusion's
  `UNetModel` takes `in_channels`/`out_channels` directly): 1 for greyscale
  priors, with `in_channels` (or twice that with `learn_sigma`) outputs.
  """
  if in_channels < 1:
    raise ConfigError(f"in_channels={in_channels} must be >= 1 (1 grey, 3 RGB).")
  if channel_mult == "" or channel_mult is None:
    if image_size not in _DEFAULT_CHANNEL_MULT:
      raise ConfigError(f"no default channel_mult for image_size={image_size}; pass "
                        f"channel_mult explicitly (e.g. '1,2,2') or use one of "
                        f"{sorted(_DEFAULT_CHANNEL_MULT)}.")
    mult = _DEFAULT_CHANNEL_MULT[image_size]
  elif isinstance(channel_mult, str):
    mult = tuple(int(m) for m in channel_mult.split(","))
  else:
    mult = tuple(channel_mult)
  if isinstance(attention_resolutions, str):
    res = [int(r) for r in attention_resolutions.split(",")] if attention_resolutions else []
  else:
    res = [int(r) for r in attention_resolutions]
  return ADMConfig(
      image_size=image_size, in_channels=in_channels, model_channels=num_channels,
      out_channels=2 * in_channels if learn_sigma else in_channels, num_res_blocks=num_res_blocks,
      attention_resolutions=tuple(image_size // r for r in res), dropout=dropout,
      channel_mult=mult, conv_resample=True, num_classes=NUM_CLASSES if class_cond else None,
      use_checkpoint=use_checkpoint, use_fp16=use_fp16, num_heads=num_heads,
      num_head_channels=num_head_channels, num_heads_upsample=num_heads_upsample,
      use_scale_shift_norm=use_scale_shift_norm, resblock_updown=resblock_updown,
      use_new_attention_order=use_new_attention_order)


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """Sinusoidal embedding as guided-diffusion: [cos(t f), sin(t f)], f_i = P^(-i/half).

  Args:
    t: (N,) timesteps (int or float).
    dim: embedding width; odd widths get a trailing zero.
    max_period: P, the longest period.

  Returns:
    (N, dim) float32.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t).astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class ResBlock(nn.Module):
  """guided-diffusion `ResBlock` (dropout omitted: inference only)."""
  out_channels: int
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, emb):
    oc = self.out_channels
    h = GroupNorm(name="in_layers_0")(x, act=True)
    if self.up:
      h, x = upsample_nearest(h), upsample_nearest(x)
    elif self.down:
      h, x = avg_pool2(h), avg_pool2(x)
    h = conv2d(oc, self.dtype, "in_layers_2")(h)
    e = nn.Dense(2 * oc if self.use_scale_shift_norm else oc, name="emb_layers_1")(silu(emb))
    e = e.astype(h.dtype)[:, None, None, :]
    if self.use_scale_shift_norm:
      # norm(h) * (1 + scale) + shift, then SiLU, as one op (jaxir.models.norm).
      h = GroupNorm(name="out_layers_0")(h, scale_shift=jnp.split(e, 2, axis=-1), act=True)
    else:
      h = GroupNorm(name="out_layers_0")(h + e, act=True)
    h = conv2d(oc, self.dtype, "out_layers_3")(h)
    skip = x if x.shape[-1] == oc else conv2d(oc, self.dtype, "skip_connection", kernel=1)(x)
    return skip + h


class AttentionBlock(nn.Module):
  """guided-diffusion `AttentionBlock`: self-attention over all positions.

  `qkv` and `proj_out` are 1-D convolutions with kernel 1, as upstream (their
  kernels convert to PyTorch's (out, in, 1)). The legacy order reads the qkv
  channels as (heads, 3, ch); the new order as (3, heads, ch). Above
  `attention.dense_max_tokens` positions the attention runs over query blocks
  (`jaxir.models.attention`), in memory linear in the positions.
  """
  num_heads: int = 1
  num_head_channels: int = -1
  use_new_attention_order: bool = False
  dtype: Any = jnp.float32
  attention: AttentionConfig = AttentionConfig()

  @nn.compact
  def __call__(self, x):
    n, hh, ww, c = x.shape
    heads = self.num_heads if self.num_head_channels == -1 else c // self.num_head_channels
    ch = c // heads
    h = x.reshape(n, hh * ww, c)
    qkv = nn.Conv(3 * c, (1,), dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(
        GroupNorm(name="norm")(h))
    if self.use_new_attention_order:
      qkv = qkv.reshape(n, hh * ww, 3, heads, ch)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      qkv = qkv.reshape(n, hh * ww, heads, 3, ch)
      q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    # Heads-major (N, heads, T, ch) operands: with the token axis in the
    # middle, XLA CPU ran this block 2-3x slower (16x16, batch 8: 12-15 vs 5-7 ms).
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))
    # Upstream scales q and k by ch**-1/4 each, before the product.
    scale = 1 / math.sqrt(math.sqrt(ch))
    a = attention(q * scale, k * scale, v, config=self.attention)
    a = jnp.swapaxes(a, 1, 2).reshape(n, hh * ww, c)
    a = nn.Conv(c, (1,), dtype=self.dtype, param_dtype=jnp.float32, name="proj_out")(a)
    return (h + a).reshape(n, hh, ww, c)


class ADMUNet(nn.Module):
  """guided-diffusion's `UNetModel` in NHWC.

  Call `model.apply(params, x, t, y=None)`:
    x: (N, H, W, in_channels) float, H and W multiples of 2**(levels - 1).
    t: (N,) int (or float) timesteps of the original process (a scalar is
      broadcast).
    y: (N,) int class labels, required iff `config.num_classes` is set.
  Returns (N, H, W, out_channels) float32: eps, or (eps, variance interpolation)
  when the model learns sigma.

  Attributes:
    config: the `ADMConfig` (UNetModel arguments).
    dtype: compute dtype of the convolutions and attention (float32 or
      bfloat16); parameters are float32. See the module docstring for the
      measured bfloat16 error.
    attention: when the attention blocks run over query blocks (large
      images); an `AttentionConfig`, e.g. `model.clone(attention=...)`.
  """
  config: ADMConfig
  dtype: Any = jnp.float32
  attention: AttentionConfig = AttentionConfig()

  @nn.compact
  def __call__(self, x, t, y=None):
    cfg = self.config
    levels = len(cfg.channel_mult)
    check_unet_input(x, cfg.in_channels, levels)
    n = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t), (n,)) if jnp.ndim(t) == 0 else jnp.asarray(t)
    if t.shape != (n,):
      raise ShapeError(f"t has shape {t.shape}; expected ({n},), one timestep per image.")
    if (y is not None) != (cfg.num_classes is not None):
      raise ConfigError("pass y (N,) class labels if and only if the model is class-conditional "
                        f"(num_classes={cfg.num_classes}).")

    res_cls = nn.remat(ResBlock) if cfg.use_checkpoint else ResBlock
    att_cls = nn.remat(AttentionBlock) if cfg.use_checkpoint else AttentionBlock
    dt = self.dtype

    def res(out_ch, name, **kw):
      return res_cls(out_ch, cfg.use_scale_shift_norm, dtype=dt, name=name, **kw)

    def att(heads, name):
      return att_cls(heads, cfg.num_head_channels, cfg.use_new_attention_order, dtype=dt,
                     attention=self.attention, name=name)

    ted = cfg.time_embed_dim
    emb = timestep_embedding(t, cfg.model_channels)
    emb = nn.Dense(ted, name="time_embed_0")(emb)
    emb = nn.Dense(ted, name="time_embed_2")(silu(emb))
    if cfg.num_classes is not None:
      y = jnp.asarray(y)
      if y.shape != (n,):
        raise ShapeError(f"y has shape {y.shape}; expected ({n},) integer labels.")
      emb = emb + nn.Embed(cfg.num_classes, ted, name="label_emb")(y)

    mc = cfg.model_channels
    ch = int(cfg.channel_mult[0] * mc)
    h = conv2d(ch, dt, "input_blocks_0_0")(x.astype(dt))
    hs, idx, ds = [h], 1, 1
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        ch = int(mult * mc)
        h = res(ch, f"input_blocks_{idx}_0")(h, emb)
        if ds in cfg.attention_resolutions:
          h = att(cfg.num_heads, f"input_blocks_{idx}_1")(h)
        hs.append(h)
        idx += 1
      if level != levels - 1:
        name = f"input_blocks_{idx}_0"
        if cfg.resblock_updown:
          h = res(ch, name, down=True)(h, emb)
        else:
          h = Downsample(ch, cfg.conv_resample, dtype=dt, name=name)(h)
        hs.append(h)
        idx += 1
        ds *= 2

    h = res(ch, "middle_block_0")(h, emb)
    h = att(cfg.num_heads, "middle_block_1")(h)
    h = res(ch, "middle_block_2")(h, emb)

    idx = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
      for i in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        ch = int(mc * mult)
        h = res(ch, f"output_blocks_{idx}_0")(h, emb)
        j = 1
        if ds in cfg.attention_resolutions:
          h = att(cfg.heads_upsample, f"output_blocks_{idx}_{j}")(h)
          j += 1
        if level and i == cfg.num_res_blocks:
          name = f"output_blocks_{idx}_{j}"
          if cfg.resblock_updown:
            h = res(ch, name, up=True)(h, emb)
          else:
            h = Upsample(ch, cfg.conv_resample, dtype=dt, name=name)(h)
          ds //= 2
        idx += 1

    h = h.astype(jnp.float32)
    h = GroupNorm(name="out_0")(h, act=True)
    return conv2d(cfg.out_channels, jnp.float32, "out_2")(h)
