"""Named configurations of the public diffusion checkpoints, and `load`.

Each entry records the architecture ("adm": guided-diffusion `UNetModel`,
"ddpm": ermongroup `Model`) and the upstream arguments (guided-diffusion
`create_model` keyword arguments, or the ermongroup `config.model` fields plus
`resolution`), exactly as the checkpoint was trained with.

Shipped priors (weights that come with jaxir, so no path is needed) register
a loader with `register_shipped`; `load(name)` without a path uses it.

References:
  DPS2022/diffusion-posterior-sampling `configs/model_config.yaml` (ffhq_10m.pt).
  openai/guided-diffusion README (256x256_diffusion_uncond.pt flags).
  ermongroup/SDEdit `configs/celeba.yml` (celeba_hq.ckpt), used by DDRM, DDNM, DeqIR.
"""
from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Callable

from jaxir.errors import CheckpointError, ConfigError

__all__ = ["NamedConfig", "NAMED_CONFIGS", "get_config", "register_shipped", "shipped_names",
           "load"]


@dataclasses.dataclass(frozen=True)
class NamedConfig:
  """A public checkpoint's architecture.

  Attributes:
    name: short name (`load(name, path)`).
    arch: "adm" or "ddpm".
    upstream: the upstream arguments (read-only mapping).
    num_params: parameter count of the public checkpoint.
    source: where the public weights come from.
  """
  name: str
  arch: str
  upstream: types.MappingProxyType
  num_params: int
  source: str


def _named(name, arch, upstream, num_params, source):
  return NamedConfig(name, arch, types.MappingProxyType(dict(upstream)), num_params, source)


NAMED_CONFIGS: dict[str, NamedConfig] = {
    c.name: c for c in [
        _named("ffhq256_dps", "adm", dict(
            image_size=256, num_channels=128, num_res_blocks=1, channel_mult="",
            learn_sigma=True, class_cond=False, use_checkpoint=False,
            attention_resolutions="16", num_heads=4, num_head_channels=64,
            num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
            resblock_updown=True, use_fp16=False, use_new_attention_order=False),
            93_563_910,
            "ffhq_10m.pt from DPS2022/diffusion-posterior-sampling (README, Google Drive)"),
        _named("imagenet256_uncond", "adm", dict(
            image_size=256, num_channels=256, num_res_blocks=2, channel_mult="",
            learn_sigma=True, class_cond=False, use_checkpoint=False,
            attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
            num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
            resblock_updown=True, use_fp16=False, use_new_attention_order=False),
            552_814_086,
            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
            "256x256_diffusion_uncond.pt"),
        _named("celebahq256_ddpm", "ddpm", dict(
            ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
            attn_resolutions=(16,), in_channels=3, resolution=256, resamp_with_conv=True),
            113_673_219,
            "https://image-editing-test-12345.s3-us-west-2.amazonaws.com/checkpoints/"
            "celeba_hq.ckpt (SDEdit)"),
    ]
}

# name -> loader() -> (model, params); filled by the shipped-priors module.
_SHIPPED: dict[str, Callable[[], tuple]] = {}


def get_config(name: str) -> NamedConfig:
  """The named configuration `name`; CheckpointError listing the known names if unknown."""
  if name not in NAMED_CONFIGS:
    raise CheckpointError(f"unknown model config {name!r}; known: {sorted(NAMED_CONFIGS)} "
                          "(or pass the upstream arguments as a dict).")
  return NAMED_CONFIGS[name]


def register_shipped(name: str, loader: Callable[[], tuple]) -> None:
  """Register a shipped prior: `load(name)` (no path) then returns `loader()`.

  Args:
    name: the prior's name.
    loader: zero-argument callable returning (model, params), e.g. reading a
      converted checkpoint under `checkpoints/` with `load_converted`.
  """
  if not callable(loader):
    raise ConfigError(f"loader for {name!r} must be callable; got {type(loader).__name__}.")
  _SHIPPED[name] = loader


def shipped_names() -> list[str]:
  """Names `load` accepts without a path."""
  return sorted(_SHIPPED)


def load(name_or_config: Any, path: str | os.PathLike | None = None, *, arch: str | None = None,
         dtype: Any = None) -> tuple:
  """Load a diffusion U-Net as (model, params).

  Args:
    name_or_config: a name in `NAMED_CONFIGS` (or a shipped prior), a dict of
      upstream arguments, or an `ADMConfig`.
    path: the checkpoint: a PyTorch/safetensors/npz file (converted on the
      fly) or a directory written by the converter (`load_converted`). None
      loads a shipped prior.
    arch: "adm" or "ddpm" when `name_or_config` is a dict (default "adm").
    dtype: compute dtype (default float32).

  Returns:
    (model, params) with `model.apply(params, x, t)`.
  """
  from jaxir.models import convert
  if path is None:
    if isinstance(name_or_config, str) and name_or_config in _SHIPPED:
      loader = _SHIPPED[name_or_config]
      return loader() if dtype is None else loader(dtype=dtype)
    if isinstance(name_or_config, str) and name_or_config in NAMED_CONFIGS:
      c = NAMED_CONFIGS[name_or_config]
      raise CheckpointError(f"no shipped weights for {name_or_config!r}; download {c.source} "
                            f"and pass path=. Shipped priors: {shipped_names()}.")
    raise CheckpointError(f"unknown prior {name_or_config!r} and no path given; shipped priors: "
                          f"{shipped_names()}, named configs (need path=): "
                          f"{sorted(NAMED_CONFIGS)}.")
  if os.path.isdir(path):
    return convert.load_converted(path, dtype=dtype)
  return convert.from_torch(path, arch=arch, config=name_or_config, dtype=dtype)
