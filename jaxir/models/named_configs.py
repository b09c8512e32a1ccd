"""Named configurations of the public diffusion checkpoints.

Each entry records the architecture ("adm": guided-diffusion `UNetModel`,
"ddpm": ermongroup `Model`) and the upstream arguments (guided-diffusion
`create_model` keyword arguments, or the ermongroup `config.model` fields plus
`resolution`), exactly as the checkpoint was trained with.

`jaxir.models.load(name, path)` reads a checkpoint with its named config;
this module is plain data and imports only `jaxir.errors`.

References:
  DPS2022/diffusion-posterior-sampling `configs/model_config.yaml` (ffhq_10m.pt).
  openai/guided-diffusion README (256x256_diffusion_uncond.pt flags).
  ermongroup/SDEdit `configs/celeba.yml` (celeba_hq.ckpt), used by DDRM, DDNM, DeqIR.
"""
from __future__ import annotations

import dataclasses
import types

from jaxir.errors import CheckpointError

__all__ = ["NamedConfig", "NAMED_CONFIGS", "get_config"]


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


def get_config(name: str) -> NamedConfig:
  """The named configuration `name`; CheckpointError listing the known names if unknown."""
  if name not in NAMED_CONFIGS:
    raise CheckpointError(f"unknown model config {name!r}; known: {sorted(NAMED_CONFIGS)} "
                          "(or pass the upstream arguments as a dict).")
  return NAMED_CONFIGS[name]
