"""Diffusion U-Nets in Flax and exact conversion of the public PyTorch checkpoints.

`ADMUNet` is guided-diffusion's UNetModel (DPS FFHQ, OpenAI ImageNet);
`DDPMUNet` is ermongroup's DDIM/SDEdit model (CelebA-HQ). `load(name, path)`
returns (model, params) with `model.apply(params, x, t)` on NHWC images.

The conversion names (`from_torch`, `to_torch`, ...) are imported on first
use, so `python -m jaxir.models.convert` runs without a double import.
"""
import importlib

from jaxir.models.adm import ADMConfig, ADMUNet, adm_config, timestep_embedding
from jaxir.models.configs import (NAMED_CONFIGS, NamedConfig, get_config, load,
                                  register_shipped, shipped_names)
from jaxir.models.ddpm import (DDPMConfig, DDPMUNet, ddpm_config, ddpm_config_from_diffusers,
                               ddpm_params_from_state_dict, ddpm_state_dict_from_params,
                               ddpm_state_dict_shapes)
from jaxir.models.shipped import SHIPPED, checkpoint_dir, load_shipped, shipped_meta
from jaxir.models.state_dict import read_state_dict, write_safetensors

_LAZY = {
    "from_torch": "jaxir.models.convert",
    "to_torch": "jaxir.models.convert",
    "load_converted": "jaxir.models.convert",
    "save_converted": "jaxir.models.convert",
    "adm_params_from_state_dict": "jaxir.models.convert",
    "adm_state_dict_from_params": "jaxir.models.convert",
    "adm_state_dict_shapes": "jaxir.models.convert",
    "check_state_dict_shapes": "jaxir.models.convert",
    "count_params": "jaxir.models.convert",
}

__all__ = ["ADMConfig", "ADMUNet", "adm_config", "timestep_embedding", "NAMED_CONFIGS",
           "NamedConfig", "get_config", "load", "register_shipped", "shipped_names",
           "read_state_dict", "write_safetensors", "DDPMConfig", "DDPMUNet", "ddpm_config",
           "ddpm_config_from_diffusers", "ddpm_params_from_state_dict",
           "ddpm_state_dict_from_params", "ddpm_state_dict_shapes", "SHIPPED", "checkpoint_dir",
           "load_shipped", "shipped_meta", *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'jaxir.models' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
