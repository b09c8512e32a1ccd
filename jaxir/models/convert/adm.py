"""Key and layout mapping between guided-diffusion `UNetModel` state dicts and `ADMUNet`.

Flax module paths mirror the PyTorch module tree, so a key maps mechanically:
`input_blocks_3_0/in_layers_2/kernel` <-> `input_blocks.3.0.in_layers.2.weight`
(`_<digits>` <-> `.<digits>`; `kernel`, `scale` (norms) and `embedding` <->
`weight`). Layouts follow `jaxir.models.convert.layout`.

References:
  openai/guided-diffusion `guided_diffusion/unet.py` (module tree, key names),
  `script_util.py` (`create_model` arguments).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from typing import Any, Mapping

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import CheckpointError, ConfigError
from jaxir.models.adm import ADMConfig, ADMUNet, adm_config
from jaxir.models.convert.layout import (check_state_dict_shapes, from_torch_layout,
                                         to_torch_layout, torch_shape)
from jaxir.models.named_configs import get_config

__all__ = ["flax_path_to_torch_key", "as_adm_config", "adm_init_args", "adm_state_dict_shapes",
           "adm_params_from_state_dict", "adm_state_dict_from_params"]

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# create_model_and_diffusion arguments that do not shape the network, and DPS's yaml extra.
_NON_MODEL_KEYS = {"model_path", "diffusion_steps", "noise_schedule", "timestep_respacing",
                   "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas"}


def flax_path_to_torch_key(path: tuple) -> str:
  """PyTorch key of a Flax parameter path, e.g. ('out_2', 'kernel') -> 'out.2.weight'."""
  *mods, leaf = path
  if leaf not in _LEAF_TO_TORCH:
    raise CheckpointError(f"no PyTorch name for Flax parameter {'/'.join(path)}.")
  return ".".join([re.sub(r"_(\d+)", r".\1", m) for m in mods] + [_LEAF_TO_TORCH[leaf]])


def as_adm_config(config) -> ADMConfig:
  """`ADMConfig` from itself, a named config, or create_model (or ADMConfig) arguments."""
  if isinstance(config, ADMConfig):
    return config
  if isinstance(config, str):
    nc = get_config(config)
    if nc.arch != "adm":
      raise ConfigError(f"named config {config!r} is arch {nc.arch!r}, not 'adm'.")
    config = nc.upstream
  if not isinstance(config, Mapping):
    raise ConfigError(f"ADM config must be an ADMConfig, a named config or a dict of "
                      f"create_model arguments; got {type(config).__name__}.")
  kw = {k: v for k, v in config.items() if k not in _NON_MODEL_KEYS}
  fields = ({f.name for f in dataclasses.fields(ADMConfig)} if "model_channels" in kw
            else set(inspect.signature(adm_config).parameters))
  bad = sorted(set(kw) - fields)
  if bad:
    raise ConfigError(f"unknown ADM config arguments {bad}; expected guided-diffusion "
                      f"create_model arguments {sorted(fields)}.")
  try:
    return ADMConfig(**kw) if "model_channels" in kw else adm_config(**kw)
  except TypeError as e:
    raise ConfigError(f"incomplete ADM config: {e}.") from None


def adm_init_args(config: ADMConfig) -> tuple:
  """Abstract (x, t, y) of the smallest input `ADMUNet(config).init` accepts."""
  s = 2 ** (len(config.channel_mult) - 1)
  x = jax.ShapeDtypeStruct((1, s, s, config.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if config.num_classes is not None else None
  return x, t, y


@functools.lru_cache(maxsize=16)
def _adm_flax_shapes(config: ADMConfig) -> dict:
  config = dataclasses.replace(config, use_checkpoint=False)  # same tree; remat reorders it
  order = []

  def init(*args):  # records the creation order (= PyTorch's registration order)
    variables = ADMUNet(config).init(*args)
    order.extend(tu.flatten_dict(variables["params"]))
    return variables

  variables = jax.eval_shape(init, jax.random.key(0), *adm_init_args(config))
  shapes = tu.flatten_dict(variables["params"])
  return {p: tuple(shapes[p].shape) for p in order}


def _adm_spec(config: ADMConfig) -> dict:
  """torch key -> (flax path, torch shape), in the model's call order."""
  return {flax_path_to_torch_key(p): (p, torch_shape(p[-1], s))
          for p, s in _adm_flax_shapes(config).items()}


def adm_state_dict_shapes(config) -> dict[str, tuple]:
  """{key: shape} of guided-diffusion's `UNetModel.state_dict()` for `config` (no arrays)."""
  return {k: s for k, (_, s) in _adm_spec(as_adm_config(config)).items()}


def adm_params_from_state_dict(state_dict: Mapping[str, Any], config) -> dict:
  """Flax variables {'params': ...} of `ADMUNet` from a guided-diffusion state dict.

  Args:
    state_dict: name -> array (e.g. `read_state_dict(path)`); float16/bfloat16
      weights are cast to float32.
    config: `ADMConfig`, a named config, or create_model arguments.

  Raises:
    CheckpointError: one error listing all missing, unexpected and wrongly
      shaped keys.
  """
  spec = _adm_spec(as_adm_config(config))
  check_state_dict_shapes({k: np.shape(v) for k, v in state_dict.items()},
                          {k: s for k, (_, s) in spec.items()}, "ADM config")
  flat = {}
  for key, (path, _) in spec.items():
    a = np.asarray(state_dict[key])
    a = a.astype(np.float32) if a.dtype != np.float32 else a
    flat[path] = jnp.asarray(from_torch_layout(path[-1], a))
  return {"params": tu.unflatten_dict(flat)}


def adm_state_dict_from_params(params, config) -> dict[str, np.ndarray]:
  """guided-diffusion state dict (float32 NumPy, PyTorch layouts) from `ADMUNet` params.

  The exact inverse of `adm_params_from_state_dict`. `params` may be the
  variables dict {'params': ...} or its inner tree.
  """
  spec = _adm_spec(as_adm_config(config))
  tree = params["params"] if "params" in params else params
  flat = dict(tu.flatten_dict(dict(tree)))
  got = {flax_path_to_torch_key(p): torch_shape(p[-1], np.shape(v)) for p, v in flat.items()}
  check_state_dict_shapes(got, {k: s for k, (_, s) in spec.items()}, "ADM config")
  return {k: to_torch_layout(p[-1], np.asarray(flat[p], np.float32))
          for k, (p, _) in spec.items()}
