"""Old import path of the DDPM U-Net and its checkpoint conversion (kept for existing imports).

The network lives in `jaxir.models.ddpm_unet`; the ermongroup/diffusers key
mapping beside the converter, in `jaxir.models.convert.ddpm`.
"""
from jaxir.models.convert.ddpm import (check_ddpm_keys, ddpm_config_from_diffusers,
                                       ddpm_config_to_diffusers, ddpm_key_naming,
                                       ddpm_params_from_state_dict, ddpm_state_dict_from_params,
                                       ddpm_state_dict_shapes)
from jaxir.models.ddpm_unet import (AttnBlock, DDPMConfig, DDPMUNet, Downsample, ResnetBlock,
                                    Upsample, ddpm_config, ddpm_timestep_embedding)

__all__ = ["DDPMConfig", "ddpm_config", "ddpm_config_from_diffusers", "ddpm_config_to_diffusers",
           "DDPMUNet", "ddpm_timestep_embedding", "ddpm_state_dict_shapes", "ddpm_key_naming",
           "check_ddpm_keys", "ddpm_params_from_state_dict", "ddpm_state_dict_from_params",
           "ResnetBlock", "AttnBlock", "Downsample", "Upsample"]
