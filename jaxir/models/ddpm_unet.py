"""The DDPM U-Net of ermongroup DDIM (SDEdit's CelebA-HQ model) in Flax, NHWC.

This is the eps network used by DDRM, DDNM, DeqIR and BIRD: GroupNorm(32,
eps 1e-6) + swish pre-activation residual blocks with a projected timestep
embedding, single-head self-attention at the resolutions in
`attn_resolutions`, and a symmetric decoder whose blocks read the encoder's
skip activations in reverse order.

Module names mirror the upstream keys (`down_{i}_block_{j}` is
`down.{i}.block.{j}`, `mid_attn_1` is `mid.attn_1`), so the key mapping in
`jaxir.models.convert.ddpm` (ermongroup and diffusers checkpoints) is
mechanical.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021;
    ermongroup/ddim `models/diffusion.py` (`Model`, `get_timestep_embedding`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError
from jaxir.models import resample
from jaxir.models.activations import silu
from jaxir.models.attention import AttentionConfig, attention
from jaxir.models.conv import conv2d
from jaxir.models.norm import GroupNorm

__all__ = ["DDPMConfig", "ddpm_config", "DDPMUNet", "ddpm_timestep_embedding", "ResnetBlock",
           "AttnBlock", "Downsample", "Upsample", "NORM_GROUPS", "NORM_EPS"]

NORM_GROUPS = 32  # GroupNorm groups (ermongroup/ddim models/diffusion.py, Normalize).
NORM_EPS = 1e-6  # GroupNorm epsilon (ermongroup/ddim models/diffusion.py, Normalize).

# ----------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class DDPMConfig:
  """Architecture of the ermongroup DDPM U-Net (upstream `config.model` fields).

  Attributes:
    ch: base channel count (a multiple of 32; GroupNorm uses 32 groups).
    out_ch: output channels (eps only, so the image channels).
    ch_mult: channel multiplier per resolution level.
    num_res_blocks: residual blocks per level in the encoder (decoder: +1).
    attn_resolutions: feature-map sizes (relative to `resolution`) with attention.
    in_channels: input image channels.
    resamp_with_conv: strided 3x3 conv downsampling and conv after upsampling
      (False: 2x2 average pooling and plain nearest upsampling).
    resolution: training image size (upstream `config.data.image_size`); fixes
      where attention sits, inputs of other sizes are allowed.
    dropout: dropout rate inside the residual blocks (training only).
  """
  ch: int = 128
  out_ch: int = 3
  ch_mult: tuple = (1, 1, 2, 2, 4, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple = (16,)
  in_channels: int = 3
  resamp_with_conv: bool = True
  resolution: int = 256
  dropout: float = 0.0

  def __post_init__(self):
    object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
    object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
    if self.ch <= 0 or self.ch % NORM_GROUPS:
      raise ConfigError(f"ch={self.ch}: GroupNorm uses {NORM_GROUPS} groups, so ch must be a "
                        f"positive multiple of {NORM_GROUPS}.")
    if not self.ch_mult or min(self.ch_mult) <= 0:
      raise ConfigError(f"ch_mult={self.ch_mult} must be a non-empty tuple of positive integers.")
    if self.num_res_blocks < 1:
      raise ConfigError(f"num_res_blocks={self.num_res_blocks} must be >= 1.")
    if min(self.in_channels, self.out_ch, self.resolution) < 1:
      raise ConfigError("in_channels, out_ch and resolution must be positive.")
    if not 0.0 <= self.dropout < 1.0:
      raise ConfigError(f"dropout={self.dropout} must lie in [0, 1).")

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  def has_attention(self, level: int) -> bool:
    """Whether resolution level `level` (0 = full size) has attention blocks."""
    return (self.resolution // 2 ** level) in self.attn_resolutions


# Upstream `config.model` fields that do not change the network's parameters or output.
_IGNORED_FIELDS = ("type", "ema", "ema_rate", "var_type", "image_size")


def ddpm_config(**fields) -> DDPMConfig:
  """`DDPMConfig` from upstream `config.model` fields (plus `resolution`).

  Upstream keys that do not affect the network (`type`, `ema`, `ema_rate`,
  `var_type`) are accepted and ignored; `image_size` is read as `resolution`.
  Unknown fields raise `ConfigError`.
  """
  if "image_size" in fields and "resolution" not in fields:
    fields["resolution"] = fields["image_size"]
  known = {f.name for f in dataclasses.fields(DDPMConfig)}
  unknown = sorted(set(fields) - known - set(_IGNORED_FIELDS))
  if unknown:
    raise ConfigError(f"unknown DDPM config fields {unknown}; expected a subset of "
                      f"{sorted(known)}.")
  return DDPMConfig(**{k: v for k, v in fields.items() if k in known})



# ----------------------------------------------------------------------------- network

def ddpm_timestep_embedding(t, dim: int):
  """Sinusoidal embedding of DDPM: [sin(t f), cos(t f)], f_k = 10000^(-k/(dim/2 - 1)).

  Args:
    t: (N,) timesteps (integers or floats).
    dim: embedding width (odd widths get a zero column).

  Returns:
    (N, dim) float32.

  References:
    ermongroup/ddim `models/diffusion.py` `get_timestep_embedding`.
  """
  half = dim // 2
  # float32 frequencies computed as upstream: arange * (-log(1e4) / (half - 1)), then exp.
  expo = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000) / max(half - 1, 1))
  freqs = np.exp(expo.astype(np.float64)).astype(np.float32)
  arg = jnp.asarray(t, jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
  emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _norm(name):
  return GroupNorm(num_groups=NORM_GROUPS, epsilon=NORM_EPS, name=name)


def _conv(features, kernel, dtype, name):
  return conv2d(features, dtype, name, kernel=kernel)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv twice, timestep projection added between, 1x1 skip if widths differ."""
  out_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, deterministic=True):
    h = _norm("norm1")(x.astype(jnp.float32), act=True).astype(self.dtype)
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    e = nn.Dense(self.out_channels, dtype=self.dtype, name="temb_proj")(silu(temb))
    h = h + e[:, None, None, :]
    h = _norm("norm2")(h.astype(jnp.float32), act=True).astype(self.dtype)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
    return x.astype(self.dtype) + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all pixels, 1x1 conv q/k/v/proj_out, residual.

  Above `attention.dense_max_tokens` pixels the attention runs over query
  blocks (`jaxir.models.attention`), in memory linear in the pixels.
  """
  dtype: Any = jnp.float32
  attention: AttentionConfig = AttentionConfig()

  @nn.compact
  def __call__(self, x):
    n, hh, ww, c = x.shape
    h = _norm("norm")(x.astype(jnp.float32)).astype(self.dtype)
    q, k, v = (_conv(c, 1, self.dtype, name)(h).reshape(n, hh * ww, c) for name in ("q", "k", "v"))
    h = attention(q, k, v, logit_scale=c ** -0.5, config=self.attention).reshape(n, hh, ww, c)
    return x.astype(self.dtype) + _conv(c, 1, self.dtype, "proj_out")(h)


def Downsample(with_conv: bool, dtype: Any = jnp.float32, name: str | None = None):  # noqa: N802
  """ermongroup's `Downsample`: the shared `resample.Downsample`, padded right/bottom.

  A 3x3 stride-2 conv (key `conv`) after zero-padding the right and bottom
  edges by one, or 2x2 average pooling when `with_conv` is False.
  """
  return resample.Downsample(use_conv=with_conv, dtype=dtype, pad=((0, 1), (0, 1)),
                             conv_name="conv", name=name)


def Upsample(with_conv: bool, dtype: Any = jnp.float32, name: str | None = None):  # noqa: N802
  """ermongroup's `Upsample`: nearest x2, then a 3x3 conv (key `conv`) when `with_conv`."""
  return resample.Upsample(use_conv=with_conv, dtype=dtype, name=name)


class DDPMUNet(nn.Module):
  """ermongroup DDIM `Model`: eps(x_t, t) for NHWC images.

  Fields: `config` (a `DDPMConfig`), `dtype`, the compute dtype of
  convolutions, dense layers and attention products (e.g. bfloat16;
  parameters, GroupNorm and softmax stay float32 and the output is float32),
  and `attention`, an `AttentionConfig` saying when attention runs over query
  blocks (large images; e.g. `model.clone(attention=...)`).

  Call: `model.apply(variables, x, t, deterministic=True)` with x (N, H, W,
  in_channels) float32 (H, W divisible by 2**(len(ch_mult)-1)) and t (N,) or
  scalar integer timesteps; returns (N, H, W, out_ch) float32. Dropout
  (deterministic=False) needs a 'dropout' rng.
  """
  config: DDPMConfig = DDPMConfig()
  dtype: Any = jnp.float32
  attention: AttentionConfig = AttentionConfig()

  @classmethod
  def from_config(cls, config: DDPMConfig, dtype=jnp.float32) -> "DDPMUNet":
    """The network of a `DDPMConfig`."""
    return cls(config, dtype=dtype)

  @nn.compact
  def __call__(self, x, t, deterministic: bool = True):
    cfg = self.config
    levels = cfg.num_levels
    resample.check_unet_input(x, cfg.in_channels, levels)
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    dt = self.dtype
    block = functools.partial(ResnetBlock, dropout=cfg.dropout, dtype=dt)

    temb = ddpm_timestep_embedding(t, cfg.ch)
    temb = nn.Dense(4 * cfg.ch, dtype=dt, name="temb_dense_0")(temb)
    temb = nn.Dense(4 * cfg.ch, dtype=dt, name="temb_dense_1")(silu(temb))

    hs = [_conv(cfg.ch, 3, dt, "conv_in")(x.astype(dt))]
    for i in range(levels):
      for j in range(cfg.num_res_blocks):
        h = block(cfg.ch * cfg.ch_mult[i], name=f"down_{i}_block_{j}")(hs[-1], temb, deterministic)
        if cfg.has_attention(i):
          h = AttnBlock(dtype=dt, attention=self.attention, name=f"down_{i}_attn_{j}")(h)
        hs.append(h)
      if i != levels - 1:
        hs.append(Downsample(cfg.resamp_with_conv, dtype=dt, name=f"down_{i}_downsample")(hs[-1]))

    h = hs[-1]
    h = block(h.shape[-1], name="mid_block_1")(h, temb, deterministic)
    h = AttnBlock(dtype=dt, attention=self.attention, name="mid_attn_1")(h)
    h = block(h.shape[-1], name="mid_block_2")(h, temb, deterministic)

    for i in reversed(range(levels)):
      for j in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = block(cfg.ch * cfg.ch_mult[i], name=f"up_{i}_block_{j}")(h, temb, deterministic)
        if cfg.has_attention(i):
          h = AttnBlock(dtype=dt, attention=self.attention, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = Upsample(cfg.resamp_with_conv, dtype=dt, name=f"up_{i}_upsample")(h)

    h = _norm("norm_out")(h.astype(jnp.float32), act=True).astype(dt)
    h = _conv(cfg.out_ch, 3, dt, "conv_out")(h)
    return h.astype(jnp.float32)
