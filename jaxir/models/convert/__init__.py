"""Exact conversion between PyTorch diffusion U-Net checkpoints and Flax parameters.

The converter (`from_torch`, `to_torch`, `save_converted`, `load_converted`)
dispatches on the architecture to its key mapping beside it:

  `convert.adm`: guided-diffusion `UNetModel` <-> `ADMUNet`.
  `convert.ddpm`: ermongroup `Model` or diffusers `UNet2DModel` <-> `DDPMUNet`.
  `convert.layout`: the PyTorch <-> Flax tensor layouts both share (pure
    transposes, so a round trip is bit-exact) and the state-dict shape check.

Command line (writes an orbax checkpoint and config.json; read it back with
`load_converted`):

  python -m jaxir.models.convert ffhq_10m.pt out/ffhq256 --arch adm --config ffhq256_dps

References:
  openai/guided-diffusion `guided_diffusion/unet.py` (module tree, key names).
  ermongroup/ddim `models/diffusion.py`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import CheckpointError, ConfigError, JaxirError
from jaxir.models.adm import ADMConfig, ADMUNet
from jaxir.models.convert.adm import (adm_init_args, adm_params_from_state_dict,
                                      adm_state_dict_from_params, adm_state_dict_shapes,
                                      as_adm_config, flax_path_to_torch_key)
from jaxir.models.convert.ddpm import (check_ddpm_keys, ddpm_config_from_diffusers,
                                       ddpm_config_to_diffusers, ddpm_init_args,
                                       ddpm_key_naming, ddpm_params_from_state_dict,
                                       ddpm_state_dict_from_params, ddpm_state_dict_shapes)
from jaxir.models.convert.layout import check_state_dict_shapes
from jaxir.models.ddpm_unet import DDPMUNet, ddpm_config
from jaxir.models.named_configs import NAMED_CONFIGS, get_config
from jaxir.models.state_dict import read_state_dict, write_safetensors

__all__ = ["flax_path_to_torch_key", "check_state_dict_shapes", "adm_state_dict_shapes",
           "adm_params_from_state_dict", "adm_state_dict_from_params", "ddpm_state_dict_shapes",
           "ddpm_params_from_state_dict", "ddpm_state_dict_from_params", "ddpm_key_naming",
           "check_ddpm_keys", "ddpm_config_from_diffusers", "ddpm_config_to_diffusers",
           "resolve_config", "from_torch", "to_torch", "save_converted", "load_converted",
           "count_params", "main"]

_FORMAT = "jaxir-converted-v1"
_ARCHS = ("adm", "ddpm")


def resolve_config(arch: str | None, config) -> tuple[str, Any]:
  """(arch, config) from a named config, upstream arguments or a config object.

  ADM configs come back as `ADMConfig`; DDPM ones as `ddpm_config(...)`.
  """
  if config is None:
    raise ConfigError(f"pass config=: a named config {sorted(NAMED_CONFIGS)} or the upstream "
                      "arguments as a dict.")
  if isinstance(config, str):
    nc = get_config(config)
    if arch is not None and arch != nc.arch:
      raise ConfigError(f"named config {config!r} is arch {nc.arch!r}, but arch={arch!r}.")
    arch, config = nc.arch, dict(nc.upstream)
  arch = arch or "adm"
  if arch == "adm":
    return arch, as_adm_config(config)
  if arch == "ddpm":
    return arch, ddpm_config(**config) if isinstance(config, Mapping) else config
  raise ConfigError(f"unknown arch {arch!r}; use 'adm' (guided-diffusion) or 'ddpm' "
                    "(ermongroup).")


def count_params(params) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def _build(arch: str, cfg, dtype):
  dtype = jnp.float32 if dtype is None else dtype
  if arch == "adm":
    return ADMUNet(cfg, dtype=dtype)
  return DDPMUNet.from_config(cfg, dtype=dtype)


def from_torch(path, arch: str | None = None, config=None, *, dtype=None,
               select: str | int | None = None) -> tuple:
  """Convert a PyTorch checkpoint to (model, params) with `model.apply(params, x, t)`.

  Args:
    path: checkpoint file (see `read_state_dict`).
    arch: "adm" (guided-diffusion UNetModel) or "ddpm" (ermongroup Model);
      default: the named config's, else "adm".
    config: a named config (`NAMED_CONFIGS`), the upstream arguments as a dict
      (create_model kwargs for adm; config.model fields plus resolution for
      ddpm), or a config object.
    dtype: compute dtype (float32 default, or bfloat16).
    select: key/index of the state dict inside a wrapping container.
  """
  arch, cfg = resolve_config(arch, config)
  sd = read_state_dict(path, select)
  if arch == "adm":
    params = adm_params_from_state_dict(sd, cfg)
  else:
    params = ddpm_params_from_state_dict(sd, cfg)
  return _build(arch, cfg, dtype), params


def _arch_of(model) -> str:
  if isinstance(model, ADMUNet):
    return "adm"
  if isinstance(model, DDPMUNet):
    return "ddpm"
  raise ConfigError(f"to_torch supports ADMUNet and DDPMUNet; got {type(model).__name__}.")


def to_torch(model, params, path) -> dict[str, np.ndarray]:
  """Write params as the upstream PyTorch state dict in a .safetensors file.

  Load it with `model.load_state_dict(safetensors.torch.load_file(path),
  strict=True)`. Returns the written state dict.
  """
  arch = _arch_of(model)
  if arch == "adm":
    sd = adm_state_dict_from_params(params, model.config)
  else:
    sd = ddpm_state_dict_from_params(params, model.config)
  write_safetensors(path, sd, metadata={
      "arch": arch, "config": json.dumps(dataclasses.asdict(model.config))})
  return sd


def _abstract_variables(arch: str, model):
  args = adm_init_args(model.config) if arch == "adm" else ddpm_init_args(model.config)
  return jax.eval_shape(model.init, jax.random.key(0), *args)


def save_converted(directory, model, params, upstream: Mapping | None = None) -> str:
  """Write params (orbax) and config.json into `directory`; returns its absolute path."""
  import orbax.checkpoint as ocp
  arch = _arch_of(model)
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "params"), params, force=True)
  ckptr.wait_until_finished()
  meta = {"format": _FORMAT, "arch": arch, "model_config": dataclasses.asdict(model.config),
          "upstream": dict(upstream) if upstream is not None else None,
          "num_params": count_params(params)}
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(meta, f, indent=1)
  return directory


def load_converted(directory, *, dtype=None) -> tuple:
  """Read back (model, params) written by `save_converted` / the converter command."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.fspath(directory))
  cfg_path = os.path.join(directory, "config.json")
  if not os.path.isfile(cfg_path):
    raise CheckpointError(f"{directory} has no config.json; convert a checkpoint with "
                          "`python -m jaxir.models.convert SRC DST --config NAME` first.")
  with open(cfg_path) as f:
    meta = json.load(f)
  if meta.get("format") != _FORMAT or meta.get("arch") not in _ARCHS:
    raise CheckpointError(f"{cfg_path} is not a jaxir converted checkpoint ({_FORMAT}).")
  arch = meta["arch"]
  if arch == "adm":
    cfg = ADMConfig(**meta["model_config"])
  else:
    cfg = ddpm_config(**meta["model_config"])
  model = _build(arch, cfg, dtype)
  target = _abstract_variables(arch, model)
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, "params"), target)
  return model, params


def main(argv=None) -> int:
  """`python -m jaxir.models.convert SRC DST [--arch adm|ddpm] --config NAME|JSON`."""
  ap = argparse.ArgumentParser(prog="python -m jaxir.models.convert",
                               description="Convert a PyTorch diffusion U-Net checkpoint to an "
                               "orbax checkpoint plus config.json (read with load_converted).")
  ap.add_argument("src", help="checkpoint (.pt/.pth/.ckpt/.safetensors/.npz)")
  ap.add_argument("dst", help="output directory")
  ap.add_argument("--arch", choices=list(_ARCHS), default=None)
  ap.add_argument("--config", required=True,
                  help=f"named config {sorted(NAMED_CONFIGS)}, a JSON object of upstream "
                  "arguments, or a path to such a JSON file")
  ap.add_argument("--select", default=None, help="key of the state dict inside a container")
  args = ap.parse_args(argv)
  config = args.config
  if config not in NAMED_CONFIGS:
    if os.path.isfile(config):
      with open(config) as f:
        config = json.load(f)
    elif config.lstrip().startswith("{"):
      config = json.loads(config)
  try:
    upstream = dict(get_config(config).upstream) if isinstance(config, str) else config
    model, params = from_torch(args.src, args.arch, config, select=args.select)
    save_converted(args.dst, model, params, upstream=upstream)
  except JaxirError as e:
    ap.exit(1, f"{ap.prog}: error: {e}\n")
  return 0
