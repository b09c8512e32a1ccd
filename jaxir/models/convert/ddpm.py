"""Key and layout mapping between DDPM U-Net state dicts and `DDPMUNet`.

Two namings are read and written: the upstream ermongroup `Model` keys
(`down.0.block.1.norm1.weight`, mirrored by the Flax module names) and those of
a diffusers `UNet2DModel` of the same architecture (the google/ddpm-*
checkpoints), detected from the keys. diffusers' attention q/k/v/out are
Linear layers where ermongroup has 1x1 convs, so their weights gain or lose
the two unit axes. Layouts follow `jaxir.models.convert.layout`.

References:
  ermongroup/ddim `models/diffusion.py` (`Model`, module registration order).
  huggingface/diffusers `UNet2DModel` (`models/unets/unet_2d.py`), and its
    conversion of the original DDPM checkpoints.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import CheckpointError, ConfigError
from jaxir.models.convert.layout import from_torch_layout, to_torch_layout, torch_shape
from jaxir.models.ddpm_unet import NORM_EPS, NORM_GROUPS, DDPMConfig, DDPMUNet

__all__ = ["ddpm_config_from_diffusers", "ddpm_config_to_diffusers", "ddpm_init_args",
           "ddpm_state_dict_shapes",
           "ddpm_key_naming", "check_ddpm_keys", "ddpm_params_from_state_dict",
           "ddpm_state_dict_from_params"]


# ----------------------------------------------------------------------------- diffusers config

def ddpm_config_to_diffusers(config: DDPMConfig) -> dict:
  """Keyword arguments of a diffusers `UNet2DModel` equal to this network.

  Needs `ch_mult[0] == 1` (diffusers sizes the timestep embedding from the
  first level) and `resamp_with_conv` (diffusers' `UNet2DModel` has no
  average-pool downsampler); raises `ConfigError` otherwise.
  """
  if config.ch_mult[0] != 1 or not config.resamp_with_conv:
    raise ConfigError("a diffusers UNet2DModel equals the ermongroup Model only with "
                      f"ch_mult[0] == 1 and resamp_with_conv=True; got ch_mult={config.ch_mult}, "
                      f"resamp_with_conv={config.resamp_with_conv}.")
  attn = [config.has_attention(i) for i in range(config.num_levels)]
  return dict(
      sample_size=config.resolution, in_channels=config.in_channels, out_channels=config.out_ch,
      block_out_channels=tuple(config.ch * m for m in config.ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
      layers_per_block=config.num_res_blocks, attention_head_dim=None, norm_num_groups=NORM_GROUPS,
      norm_eps=NORM_EPS, act_fn="silu", downsample_padding=0, flip_sin_to_cos=False,
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
  config = DDPMConfig(ch=ch, out_ch=int(cfg.get("out_channels", 3)),
                      ch_mult=[c // ch for c in chans],
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
    if got != exp and not (k == "attn_norm_num_groups" and got == NORM_GROUPS):
      bad.append(f"{k}={got!r} (need {exp!r})")
  head = cfg.get("attention_head_dim", 8)
  attn_chans = {chans[i] for i in range(n) if down[i] == "AttnDownBlock2D"} | {chans[-1]}
  if head is not None and attn_chans != {head}:
    bad.append(f"attention_head_dim={head!r} (need None: single-head attention)")
  if set(down) - {"DownBlock2D", "AttnDownBlock2D"}:
    bad.append(f"down_block_types={down}")
  if bad:
    raise ConfigError("this diffusers UNet2DModel is not an ermongroup DDPM Model: "
                      + ", ".join(bad) + ".")
  return config


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



_RES_TO_DIFF = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
                "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
_ATTN_TO_DIFF = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
                 "proj_out": "to_out.0"}
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
  m = re.fullmatch(r"mid_block\.resnets\.([01])\.(\w+)\.(\w+)", key)
  if m and m[2] in _RES_FROM_DIFF:
    return f"mid.block_{int(m[1]) + 1}.{_RES_FROM_DIFF[m[2]]}.{m[3]}"
  if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(\w+)", key):
    return f"mid.attn_1.{_ATTN_FROM_DIFF[m[1]]}.{m[2]}" if m[1] in _ATTN_FROM_DIFF else None
  return None


def _is_attn_linear_weight(ermon_key: str) -> bool:
  parts = ermon_key.split(".")
  return (parts[-1] == "weight" and parts[-2] in _ATTN_LINEAR
          and ("attn" in parts or "attn_1" in parts))


def ddpm_key_naming(keys) -> str:
  """'diffusers' if the keys are a diffusers `UNet2DModel` state dict, else 'ermongroup'."""
  keys = list(keys)
  diff = sum(k.startswith(("down_blocks.", "up_blocks.", "mid_block.", "time_embedding.",
                           "conv_norm_out.")) for k in keys)
  return "diffusers" if diff > 0 and diff >= sum(k.startswith(("down.", "up.", "mid.", "temb."))
                                                   for k in keys) else "ermongroup"


def ddpm_init_args(config: DDPMConfig) -> tuple:
  """Abstract (x, t) of the smallest input `DDPMUNet.from_config(config).init` accepts."""
  s = 2 ** (config.num_levels - 1)
  x = jax.ShapeDtypeStruct((1, s, s, config.in_channels), jnp.float32)
  return x, jax.ShapeDtypeStruct((1,), jnp.int32)


@functools.lru_cache(maxsize=8)
def _flax_shapes(config: DDPMConfig) -> dict:
  """{flax path tuple: shape} of the parameters, by `jax.eval_shape` of init."""
  model = DDPMUNet.from_config(config)
  tree = jax.eval_shape(model.init, jax.random.key(0), *ddpm_init_args(config))["params"]
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
    key, shp = _flax_path_to_key(path), torch_shape(path[-1], shape)
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
  keys = [k for k, c in zip(keys, keys_c) if c != "logvar"]
  keys_c = [c for c in keys_c if c != "logvar"]
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
    node[path[-1]] = jnp.asarray(from_torch_layout(path[-1], a))
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
    a = to_torch_layout(path[-1], np.asarray(flat[path], np.float32))
    if naming == "diffusers":
      if _is_attn_linear_weight(key):
        a = a[:, :, 0, 0]
      key = _ermon_to_diffusers_key(key, config.num_levels)
    out[key] = a
  return out
