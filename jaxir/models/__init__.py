"""Diffusion U-Nets in Flax and exact conversion of the public PyTorch checkpoints.

What lives here:
  `adm.py`: `ADMUNet`, guided-diffusion's UNetModel (DPS FFHQ, OpenAI ImageNet).
  `ddpm_unet.py`: `DDPMUNet`, ermongroup's DDIM/SDEdit model (CelebA-HQ).
  `resample.py`, `conv.py`, `norm.py`, `activations.py`, `attention.py`: the
    layers both U-Nets share.
  `convert/`: the converter (`from_torch`, `to_torch`, `save_converted`,
    `load_converted`, `python -m jaxir.models.convert`) with the key mapping
    of each architecture (`convert/adm.py`, `convert/ddpm.py`) and the shared
    tensor layouts (`convert/layout.py`).
  `state_dict.py`: reading PyTorch/safetensors/npz state dicts without torch.
  `named_configs.py`: the public checkpoints' architectures.
  `loading.py`: `load(name, path)`, returning (model, params) with
    `model.apply(params, x, t)` on NHWC images, and the shipped priors.
  `configs.py`, `shipped.py`, `ddpm.py`: the old import paths, re-exporting.

Imports: within the library only `jaxir.errors`; the modules import one
another without cycles (layers <- networks <- convert <- loading).
"""
from jaxir.models.adm import ADMConfig, ADMUNet, adm_config, timestep_embedding
from jaxir.models.convert import (adm_params_from_state_dict, adm_state_dict_from_params,
                                  adm_state_dict_shapes, check_state_dict_shapes, count_params,
                                  ddpm_config_from_diffusers, ddpm_params_from_state_dict,
                                  ddpm_state_dict_from_params, ddpm_state_dict_shapes,
                                  from_torch, load_converted, save_converted, to_torch)
from jaxir.models.ddpm_unet import DDPMConfig, DDPMUNet, ddpm_config
from jaxir.models.loading import (SHIPPED, checkpoint_dir, export_card, load, load_shipped,
                                  register_shipped, shipped_meta, shipped_names)
from jaxir.models.named_configs import NAMED_CONFIGS, NamedConfig, get_config
from jaxir.models.state_dict import read_state_dict, write_safetensors

__all__ = ["ADMConfig", "ADMUNet", "adm_config", "timestep_embedding", "NAMED_CONFIGS",
           "NamedConfig", "get_config", "load", "register_shipped", "shipped_names",
           "read_state_dict", "write_safetensors", "DDPMConfig", "DDPMUNet", "ddpm_config",
           "ddpm_config_from_diffusers", "ddpm_params_from_state_dict",
           "ddpm_state_dict_from_params", "ddpm_state_dict_shapes", "SHIPPED", "checkpoint_dir",
           "load_shipped", "shipped_meta", "export_card", "from_torch", "to_torch", "load_converted",
           "save_converted", "adm_params_from_state_dict", "adm_state_dict_from_params",
           "adm_state_dict_shapes", "check_state_dict_shapes", "count_params"]
