"""The DDPM U-Net of ermongroup DDIM (SDEdit's CelebA-HQ model) in Flax, NHWC.

This is the eps network used by DDRM, DDNM, DeqIR and BIRD: GroupNorm(32,
eps 1e-6) + swish pre-activation residual blocks with a projected timestep
embedding, single-head self-attention at the resolutions in
`attn_resolutions`, and a symmetric decoder whose blocks read the encoder's
skip activations in reverse order. Checkpoints convert from the upstream
PyTorch state dict (ermongroup key names) or from a diffusers `UNet2DModel`
of the same architecture (the google/ddpm-* checkpoints).

Module names mirror the upstream keys (`down_{i}_block_{j}` is
`down.{i}.block.{j}`, `mid_attn_1` is `mid.attn_1`), so the key mapping is
mechanical.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020.
  Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021;
    ermongroup/ddim `models/diffusion.py` (`Model`, `get_timestep_embedding`).
  huggingface/diffusers `UNet2DModel` (`models/unets/unet_2d.py`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import CheckpointError, ConfigError, ShapeError
from jaxir.models.attention import AttentionConfig, attention
from jaxir.models.conv import conv_general_dilated
from jaxir.models.activations import silu
from jaxir.models.norm import GroupNorm

__all__ = ["DDPMConfig", "ddpm_config", "ddpm_config_from_diffusers", "ddpm_config_to_diffusers",
           "DDPMUNet", "ddpm_timestep_embedding", "ddpm_state_dict_shapes", "ddpm_key_naming",
           "check_ddpm_keys", "ddpm_params_from_state_dict", "ddpm_state_dict_from_params"]

_GROUPS = 32
_NORM_EPS = 1e-6


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
    if self.ch <= 0 or self.ch % _GROUPS:
      raise ConfigError(f"ch={self.ch}: GroupNorm uses {_GROUPS} groups, so ch must be a positive "
                        f"multiple of {_GROUPS}.")
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
    raise ConfigError(f"unknown DDPM config fields {unknown}; expected a subset of {sorted(known)}.")
  return DDPMConfig(**{k: v for k, v in fields.items() if k in known})


def _level_has_attn(config: DDPMConfig, level: int) -> bool:
  return (config.resolution // 2 ** level) in config.attn_resolutions


def ddpm_config_to_diffusers(config: DDPMConfig) -> dict:
  """Keyword arguments of a diffusers `UNet2DModel` equal to this network.

  Needs `ch_mult[0] == 1` (diffusers sizes the timestep embedding from the
  first level) and `resamp_with_conv` (diffusers' `UNet2DModel` has no
  average-pool downsampler); raises `ConfigError` otherwise.
  """
  if config.ch_mult[0] != 1 or not config.resamp_with_conv:
    raise ConfigError("a diffusers UNet2DModel equals the ermongroup Model only with ch_mult[0] == 1 "
                      f"and resamp_with_conv=True; got ch_mult={config.ch_mult}, "
                      f"resamp_with_conv={config.resamp_with_conv}.")
  attn = [_level_has_attn(config, i) for i in range(config.num_levels)]
  return dict(
      sample_size=config.resolution, in_channels=config.in_channels, out_channels=config.out_ch,
      block_out_channels=tuple(config.ch * m for m in config.ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
      layers_per_block=config.num_res_blocks, attention_head_dim=None, norm_num_groups=_GROUPS,
      norm_eps=_NORM_EPS, act_fn="silu", downsample_padding=0, flip_sin_to_cos=False,
      freq_shift=1, time_embedding_type="positional", center_input_sample=False,
      mid_block_scale_factor=1, resnet_time_scale_shift="default", dropout=config.dropout)


def ddpm_config_from_diffusers(cfg: Mapping[str, Any]) -> DDPMConfig:
  """`DDPMConfig` of a diffusers `UNet2DModel` config (e.g. google/ddpm-* `config.json`).

  Raises `ConfigError` when the diffusers model is not an ermongroup `Model`
  (other block types, time embedding, padding, norm settings).
  """
  chans = [int(c) for c in cfg["block_out_channels"]]
  ch = chans[0]
  if any(c % ch for c in chans):
    raise ConfigError(f"block_out_channels={chans} are not multiples of the first entry.")
  res = cfg.get("sample_size") or 256
  res = res[0] if isinstance(res, (list, tuple)) else res
  n = len(chans)
  down = list(cfg["down_block_types"])
  attn = tuple(res // 2 ** i for i in range(n) if down[i] == "AttnDownBlock2D")
  config = DDPMConfig(ch=ch, out_ch=int(cfg.get("out_channels", 3)), ch_mult=[c // ch for c in chans],
                      num_res_blocks=int(cfg.get("layers_per_block", 2)), attn_resolutions=attn,
                      in_channels=int(cfg.get("in_channels", 3)), resamp_with_conv=True,
                      resolution=int(res), dropout=float(cfg.get("dropout", 0.0)))
  want = ddpm_config_to_diffusers(config)
  # diffusers defaults of the fields that must take the values in `want`.
  defaults = dict(norm_num_groups=32, norm_eps=1e-5, act_fn="silu", downsample_padding=1,
                  flip_sin_to_cos=True, freq_shift=0, time_embedding_type="positional",
                  center_input_sample=False, mid_block_scale_factor=1,
                  resnet_time_scale_shift="default", up_block_types=None)
  bad = []
  for k, default in defaults.items():
    got, exp = cfg.get(k, default), want[k]
    got = tuple(got) if isinstance(got, list) else got
    same = math.isclose(got, exp) if k in ("norm_eps", "mid_block_scale_factor") else got == exp
    if not same:
      bad.append(f"{k}={got!r} (need {exp!r})")
  extras = dict(time_embedding_dim=None, class_embed_type=None, num_class_embeds=None,
                downsample_type="conv", upsample_type="conv", mid_block_type="UNetMidBlock2D",
                add_attention=True, attn_norm_num_groups=None)
  for k, exp in extras.items():
    got = cfg.get(k, exp)
    if got != exp and not (k == "attn_norm_num_groups" and got == _GROUPS):
      bad.append(f"{k}={got!r} (need {exp!r})")
  head = cfg.get("attention_head_dim", 8)
  attn_chans = {chans[i] for i in range(n) if down[i] == "AttnDownBlock2D"} | {chans[-1]}
  if head is not None and attn_chans != {head}:
    bad.append(f"attention_head_dim={head!r} (need None: single-head attention)")
  if set(down) - {"DownBlock2D", "AttnDownBlock2D"}:
    bad.append(f"down_block_types={down}")
  if bad:
    raise ConfigError("this diffusers UNet2DModel is not an ermongroup DDPM Model: " + ", ".join(bad)
                      + ".")
  return config


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
  return GroupNorm(num_groups=_GROUPS, epsilon=_NORM_EPS, name=name)


def _conv(features, kernel, dtype, name, stride=1, padding="SAME"):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, conv_general_dilated=conv_general_dilated, name=name)


class ResnetBlock(nn.Module):
  """GroupNorm-swish-conv twice, timestep projection added between, 1x1 skip if widths differ."""
  out_channels: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, deterministic=True):
    h = silu(_norm("norm1")(x.astype(jnp.float32))).astype(self.dtype)
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="temb_proj")(silu(temb))[:, None, None, :]
    h = silu(_norm("norm2")(h.astype(jnp.float32))).astype(self.dtype)
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


class Downsample(nn.Module):
  """Halve H and W: zero pad right/bottom by one then 3x3 stride-2 conv, or 2x2 average pool."""
  with_conv: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.with_conv:
      return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=((0, 1), (0, 1)))(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Upsample(nn.Module):
  """Double H and W by nearest-neighbour repetition, then an optional 3x3 conv."""
  with_conv: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if self.with_conv:
      x = _conv(x.shape[-1], 3, self.dtype, "conv")(x)
    return x


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
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ShapeError(f"x has shape {x.shape}; expected (N, H, W, {cfg.in_channels}) (NHWC).")
    f = 2 ** (levels - 1)
    if x.shape[1] % f or x.shape[2] % f:
      raise ShapeError(f"x is {x.shape[1]}x{x.shape[2]}; H and W must be divisible by {f} "
                       f"(2**(len(ch_mult)-1)); pad or resize the image.")
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
        if _level_has_attn(cfg, i):
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
        if _level_has_attn(cfg, i):
          h = AttnBlock(dtype=dt, attention=self.attention, name=f"up_{i}_attn_{j}")(h)
      if i != 0:
        h = Upsample(cfg.resamp_with_conv, dtype=dt, name=f"up_{i}_upsample")(h)

    h = silu(_norm("norm_out")(h.astype(jnp.float32))).astype(dt)
    h = _conv(cfg.out_ch, 3, dt, "conv_out")(h)
    return h.astype(jnp.float32)


# ----------------------------------------------------------------------------- key naming

_MODULE_PATTERNS = [  # flax top-level module name -> ermongroup key prefix
    (re.compile(r"^(down|up)_(\d+)_(block|attn)_(\d+)$"), r"\1.\2.\3.\4"),
    (re.compile(r"^(down|up)_(\d+)_(downsample|upsample)$"), r"\1.\2.\3"),
    (re.compile(r"^temb_dense_(\d+)$"), r"temb.dense.\1"),
    (re.compile(r"^mid_(.+)$"), r"mid.\1"),
]


def _flax_path_to_key(path: tuple) -> str:
  """('down_0_block_1', 'norm1', 'scale') -> 'down.0.block.1.norm1.weight'."""
  top = path[0]
  for pat, rep in _MODULE_PATTERNS:
    if pat.match(top):
      top = pat.sub(rep, top)
      break
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[path[-1]]
  return ".".join((top,) + tuple(path[1:-1]) + (leaf,))


_RANK = {"temb": 0, "conv_in": 1, "down": 2, "mid": 3, "up": 4, "norm_out": 5, "conv_out": 6,
         "dense": 0, "block": 0, "attn": 1, "downsample": 2, "upsample": 2,
         "block_1": 0, "attn_1": 1, "block_2": 2, "norm1": 0, "conv1": 1, "temb_proj": 2,
         "norm2": 3, "conv2": 4, "nin_shortcut": 5, "norm": 0, "q": 1, "k": 2, "v": 3,
         "proj_out": 4, "conv": 0, "weight": 0, "bias": 1}


def _torch_order(key: str) -> tuple:
  """Sort key giving the upstream module registration order of state-dict keys."""
  return tuple(int(p) if p.isdigit() else _RANK[p] for p in key.split("."))


def _to_torch_layout(a):
  """Flax leaf -> PyTorch layout: conv HWIO -> OIHW, dense (in, out) -> (out, in)."""
  if a.ndim == 4:
    return np.transpose(a, (3, 2, 0, 1))
  if a.ndim == 2:
    return a.T
  return a


def _from_torch_layout(a):
  if a.ndim == 4:
    return np.transpose(a, (2, 3, 1, 0))
  if a.ndim == 2:
    return a.T
  return a


def _torch_shape(shape: tuple) -> tuple:
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return shape[::-1]
  return shape


_RES_TO_DIFF = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
                "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN_TO_DIFF = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RES_FROM_DIFF = {v: k for k, v in _RES_TO_DIFF.items()}
_ATTN_FROM_DIFF = {v: k for k, v in _ATTN_TO_DIFF.items()}
_ATTN_FROM_DIFF.update({"query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"})
_ATTN_LINEAR = ("q", "k", "v", "proj_out")


def _ermon_to_diffusers_key(key: str, levels: int) -> str:
  """An ermongroup key -> the diffusers `UNet2DModel` key of the same tensor."""
  if m := re.fullmatch(r"temb\.dense\.(\d)\.(\w+)", key):
    return f"time_embedding.linear_{int(m[1]) + 1}.{m[2]}"
  if m := re.fullmatch(r"norm_out\.(\w+)", key):
    return f"conv_norm_out.{m[1]}"
  if m := re.fullmatch(r"(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(\w+)\.(\w+)", key):
    blk = f"down_blocks.{m[2]}" if m[1] == "down" else f"up_blocks.{levels - 1 - int(m[2])}"
    table, kind = (_RES_TO_DIFF, "resnets") if m[3] == "block" else (_ATTN_TO_DIFF, "attentions")
    return f"{blk}.{kind}.{m[4]}.{table[m[5]]}.{m[6]}" if m[5] in table else key
  if m := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(\w+)", key):
    return f"down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
  if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(\w+)", key):
    return f"up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
  if (m := re.fullmatch(r"mid\.block_([12])\.(\w+)\.(\w+)", key)) and m[2] in _RES_TO_DIFF:
    return f"mid_block.resnets.{int(m[1]) - 1}.{_RES_TO_DIFF[m[2]]}.{m[3]}"
  if (m := re.fullmatch(r"mid\.attn_1\.(\w+)\.(\w+)", key)) and m[1] in _ATTN_TO_DIFF:
    return f"mid_block.attentions.0.{_ATTN_TO_DIFF[m[1]]}.{m[2]}"
  return key


def _diffusers_to_ermon_key(key: str, levels: int) -> str | None:
  """A diffusers key -> the ermongroup key, or None if it belongs to no such tensor."""
  if m := re.fullmatch(r"time_embedding\.linear_([12])\.(\w+)", key):
    return f"temb.dense.{int(m[1]) - 1}.{m[2]}"
  if m := re.fullmatch(r"conv_norm_out\.(\w+)", key):
    return f"norm_out.{m[1]}"
  if key.split(".")[0] in ("conv_in", "conv_out") and key.count(".") == 1:
    return key
  if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)\.(\w+)", key):
    lvl = int(m[2]) if m[1] == "down" else levels - 1 - int(m[2])
    table, kind = (_RES_FROM_DIFF, "block") if m[3] == "resnets" else (_ATTN_FROM_DIFF, "attn")
    if m[5] not in table or lvl < 0:
      return None
    return f"{m[1]}.{lvl}.{kind}.{m[4]}.{table[m[5]]}.{m[6]}"
  if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
    return f"down.{m[1]}.downsample.conv.{m[2]}"
  if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
    lvl = levels - 1 - int(m[1])
    return f"up.{lvl}.upsample.conv.{m[2]}" if lvl >= 0 else None
  if (m := re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)\.(\w+)", key)) and m[2] in _RES_FROM_DIFF:
    return f"mid.block_{int(m[1]) + 1}.{_RES_FROM_DIFF[m[2]]}.{m[3]}"
  if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(\w+)", key):
    return f"mid.attn_1.{_ATTN_FROM_DIFF[m[1]]}.{m[2]}" if m[1] in _ATTN_FROM_DIFF else None
  return None


def _is_attn_linear_weight(ermon_key: str) -> bool:
  parts = ermon_key.split(".")
  return parts[-1] == "weight" and parts[-2] in _ATTN_LINEAR and ("attn" in parts or "attn_1" in parts)


def ddpm_key_naming(keys) -> str:
  """'diffusers' if the keys are a diffusers `UNet2DModel` state dict, else 'ermongroup'."""
  keys = list(keys)
  diff = sum(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "time_embedding.",
                           "conv_norm_out.")) for k in keys)
  return "diffusers" if diff > 0 and diff >= sum(k.startswith(("down.", "up.", "mid.", "temb."))
                                                   for k in keys) else "ermongroup"


@functools.lru_cache(maxsize=8)
def _flax_shapes(config: DDPMConfig) -> dict:
  """{flax path tuple: shape} of the parameters, by `jax.eval_shape` of init."""
  model = DDPMUNet.from_config(config)
  s = 2 ** (config.num_levels - 1)
  x = jax.ShapeDtypeStruct((1, s, s, config.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  tree = jax.eval_shape(model.init, jax.random.key(0), x, t)["params"]
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  shapes = {tuple(p.key for p in path): tuple(leaf.shape) for path, leaf in flat}
  return dict(sorted(shapes.items(), key=lambda kv: _torch_order(_flax_path_to_key(kv[0]))))


def ddpm_state_dict_shapes(config: DDPMConfig, naming: str = "ermongroup") -> dict[str, tuple]:
  """Every key and PyTorch shape of the network's state dict.

  Args:
    config: the architecture.
    naming: 'ermongroup' (upstream `Model`) or 'diffusers' (`UNet2DModel`,
      current attention names `to_q`/`to_k`/`to_v`/`to_out.0`, Linear weights).

  Returns:
    {key: shape} in the order of the Flax parameter tree.
  """
  if naming not in ("ermongroup", "diffusers"):
    raise ConfigError(f"naming={naming!r}; use 'ermongroup' or 'diffusers'.")
  out = {}
  for path, shape in _flax_shapes(config).items():
    key, shp = _flax_path_to_key(path), _torch_shape(shape)
    if naming == "diffusers":
      if _is_attn_linear_weight(key):
        shp = shp[:2]
      key = _ermon_to_diffusers_key(key, config.num_levels)
    out[key] = shp
  return out


def _normalize_keys(keys, config: DDPMConfig) -> tuple[dict, str]:
  """Map input keys to canonical names in their own naming: {canonical: original}.

  Strips a DataParallel 'module.' prefix and maps diffusers' old attention names
  (query/key/value/proj_attn) to the current ones.
  """
  keys = list(keys)
  if keys and all(k.startswith("module.") for k in keys):
    keys_c = [k[len("module."):] for k in keys]
  else:
    keys_c = keys
  # upstream 'bayesian' models hold a 'logvar' the forward pass never reads.
  keys, keys_c = [k for k, c in zip(keys, keys_c) if c != "logvar"], [c for c in keys_c if c != "logvar"]
  naming = ddpm_key_naming(keys_c)
  out = {}
  for orig, k in zip(keys, keys_c):
    if naming == "diffusers":
      e = _diffusers_to_ermon_key(k, config.num_levels)
      if e is not None:
        k = _ermon_to_diffusers_key(e, config.num_levels)
    out[k] = orig
  return out, naming


def _fmt(items, n=20):
  items = list(items)
  more = f" ... and {len(items) - n} more" if len(items) > n else ""
  return "[" + ", ".join(items[:n]) + "]" + more


def check_ddpm_keys(shapes: Mapping[str, tuple], config: DDPMConfig) -> str:
  """Check a checkpoint's {key: shape} against the architecture, without its arrays.

  Accepts ermongroup or diffusers key names (detected), an optional 'module.'
  prefix, and diffusers' old attention names.

  Args:
    shapes: {state-dict key: shape}.
    config: the architecture the checkpoint should have.

  Returns:
    The detected naming, 'ermongroup' or 'diffusers'.

  Raises:
    CheckpointError: listing all missing, unexpected and wrongly shaped keys.
  """
  names, naming = _normalize_keys(list(shapes), config)
  expected = ddpm_state_dict_shapes(config, naming)
  missing = [k for k in expected if k not in names]
  unexpected = [names[k] for k in names if k not in expected]
  wrong = [f"{names[k]}: {tuple(shapes[names[k]])} (expected {expected[k]})"
           for k in names if k in expected and tuple(shapes[names[k]]) != expected[k]]
  if missing or unexpected or wrong:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing keys {_fmt(missing)}")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected keys {_fmt(unexpected)}")
    if wrong:
      parts.append(f"{len(wrong)} keys with wrong shapes {_fmt(wrong)}")
    raise CheckpointError(
        f"checkpoint ({naming} naming) does not match the DDPM U-Net {config}: " + "; ".join(parts)
        + ". Pass the config the checkpoint was trained with (ch, ch_mult, num_res_blocks, "
        "attn_resolutions, resolution), or the matching checkpoint.")
  return naming


def ddpm_params_from_state_dict(state_dict: Mapping[str, Any], config: DDPMConfig) -> dict:
  """Flax variables of `DDPMUNet` from a PyTorch state dict.

  Args:
    state_dict: {key: array} (NumPy arrays, or anything `np.asarray` takes) with
      ermongroup or diffusers `UNet2DModel` key names (detected from the keys).
    config: the architecture.

  Returns:
    {'params': tree} of float32 arrays for `DDPMUNet.from_config(config).apply`.

  Raises:
    CheckpointError: keys or shapes do not match (all problems in one message).
  """
  naming = check_ddpm_keys({k: np.shape(v) for k, v in state_dict.items()}, config)
  names, _ = _normalize_keys(list(state_dict), config)
  params = {}
  for path in _flax_shapes(config):
    key = _flax_path_to_key(path)
    src = _ermon_to_diffusers_key(key, config.num_levels) if naming == "diffusers" else key
    a = np.asarray(state_dict[names[src]], dtype=np.float32)
    if naming == "diffusers" and _is_attn_linear_weight(key):
      a = a[:, :, None, None]
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = jnp.asarray(_from_torch_layout(a))
  return {"params": params}


def ddpm_state_dict_from_params(params: Mapping, config: DDPMConfig,
                                naming: str = "ermongroup") -> dict[str, np.ndarray]:
  """PyTorch state dict (NumPy float32, OIHW convs) of `DDPMUNet` variables.

  The exact inverse of `ddpm_params_from_state_dict`.

  Args:
    params: {'params': tree} or the bare tree.
    config: the architecture.
    naming: 'ermongroup' (default) or 'diffusers'.
  """
  tree = params["params"] if set(params) == {"params"} else params
  flat = {tuple(p.key for p in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  expected = _flax_shapes(config)
  if set(flat) != set(expected) or any(tuple(np.shape(flat[p])) != s for p, s in expected.items()):
    raise CheckpointError(f"params do not match the DDPM U-Net {config}; pass the config they were "
                          "built with.")
  out = {}
  for path in expected:
    key = _flax_path_to_key(path)
    a = _to_torch_layout(np.asarray(flat[path], np.float32))
    if naming == "diffusers":
      if _is_attn_linear_weight(key):
        a = a[:, :, 0, 0]
      key = _ermon_to_diffusers_key(key, config.num_levels)
    out[key] = a
  return out
