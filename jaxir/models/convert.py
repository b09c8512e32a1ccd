"""Exact conversion between PyTorch diffusion U-Net checkpoints and Flax parameters.

Flax module paths mirror the PyTorch module tree, so a key maps mechanically:
`input_blocks_3_0/in_layers_2/kernel` <-> `input_blocks.3.0.in_layers.2.weight`
(`_<digits>` <-> `.<digits>`; `kernel`, `scale` (norms) and `embedding` <->
`weight`). Layouts: conv HWIO <-> OIHW, 1-D conv (attention qkv/proj_out)
WIO <-> OIW, dense (in, out) <-> (out, in). Conversion is a pure transpose, so
the round trip is bit-exact.

Command line (writes an orbax checkpoint and config.json; read it back with
`load_converted`):

  python -m jaxir.models.convert ffhq_10m.pt out/ffhq256 --arch adm --config ffhq256_dps

References:
  openai/guided-diffusion `guided_diffusion/unet.py` (module tree, key names).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import os
import re
from typing import Any, Mapping

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import CheckpointError, ConfigError, JaxirError
from jaxir.models.adm import ADMConfig, ADMUNet, adm_config
from jaxir.models.configs import NAMED_CONFIGS, get_config
from jaxir.models.state_dict import read_state_dict, write_safetensors

__all__ = ["flax_path_to_torch_key", "check_state_dict_shapes", "adm_state_dict_shapes",
           "adm_params_from_state_dict", "adm_state_dict_from_params", "resolve_config",
           "from_torch", "to_torch", "save_converted", "load_converted", "count_params", "main"]

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# create_model_and_diffusion arguments that do not shape the network, and DPS's yaml extra.
_NON_MODEL_KEYS = {"model_path", "diffusion_steps", "noise_schedule", "timestep_respacing",
                   "use_kl", "predict_xstart", "rescale_timesteps", "rescale_learned_sigmas"}
_FORMAT = "jaxir-converted-v1"


def flax_path_to_torch_key(path: tuple) -> str:
  """PyTorch key of a Flax parameter path, e.g. ('out_2', 'kernel') -> 'out.2.weight'."""
  *mods, leaf = path
  if leaf not in _LEAF_TO_TORCH:
    raise CheckpointError(f"no PyTorch name for Flax parameter {'/'.join(path)}.")
  return ".".join([re.sub(r"_(\d+)", r".\1", m) for m in mods] + [_LEAF_TO_TORCH[leaf]])


def _torch_shape(leaf: str, shape: tuple) -> tuple:
  if leaf == "kernel":
    if len(shape) == 4:
      return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 3:
      return (shape[2], shape[1], shape[0])
    if len(shape) == 2:
      return (shape[1], shape[0])
  return tuple(shape)


def _to_torch_layout(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    perm = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}[a.ndim]
    return np.ascontiguousarray(a.transpose(perm))
  return a


def _from_torch_layout(leaf: str, a: np.ndarray) -> np.ndarray:
  if leaf == "kernel":
    perm = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}[a.ndim]
    return np.ascontiguousarray(a.transpose(perm))
  return a


def check_state_dict_shapes(got: Mapping[str, tuple], expected: Mapping[str, tuple],
                            what: str = "model") -> None:
  """Compare {key: shape} of a checkpoint against the model's, raising one error.

  Works on shapes only, so full-size checkpoints can be checked without arrays.

  Raises:
    CheckpointError: listing every missing key, every unexpected key and every
      key whose shape differs (expected vs got).
  """
  got = {k: tuple(int(d) for d in s) for k, s in got.items()}
  missing = [k for k in expected if k not in got]
  unexpected = [k for k in got if k not in expected]
  wrong = [(k, tuple(expected[k]), got[k]) for k in expected
           if k in got and tuple(expected[k]) != got[k]]
  if not (missing or unexpected or wrong):
    return
  lines = [f"checkpoint does not match the {what}: {len(missing)} missing, {len(unexpected)} "
           f"unexpected, {len(wrong)} wrongly shaped key(s)."]
  if missing:
    lines.append("  missing: " + ", ".join(missing))
  if unexpected:
    lines.append("  unexpected: " + ", ".join(unexpected))
  for k, e, g in wrong:
    lines.append(f"  wrong shape: {k}: expected {e}, got {g}")
  lines.append("Check that the config matches the checkpoint (named configs: "
               f"{sorted(NAMED_CONFIGS)}).")
  raise CheckpointError("\n".join(lines))


def _as_adm_config(config) -> ADMConfig:
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


def resolve_config(arch: str | None, config) -> tuple[str, Any]:
  """(arch, config) from a named config, upstream arguments or a config object.

  ADM configs come back as `ADMConfig`; DDPM ones as `ddpm.ddpm_config(...)`.
  """
  if config is None:
    raise ConfigError(f"pass config=: a named config {sorted(NAMED_CONFIGS)} or the upstream "
                      "arguments as a dict.")
  if isinstance(config, str):
    nc = get_config(config)
    if arch is not None and arch != nc.arch:
      raise ConfigError(f"named config {config!r} is arch {nc.arch!r}, but arch={arch!r}.")
    arch, config = nc.arch, dict(nc.upstream)
  if isinstance(config, ADMConfig):
    arch = arch or "adm"
  arch = arch or "adm"
  if arch == "adm":
    return arch, _as_adm_config(config)
  if arch == "ddpm":
    ddpm = _ddpm()
    return arch, ddpm.ddpm_config(**config) if isinstance(config, Mapping) else config
  raise ConfigError(f"unknown arch {arch!r}; use 'adm' (guided-diffusion) or 'ddpm' "
                    "(ermongroup).")


def _ddpm():
  try:
    from jaxir.models import ddpm
  except ImportError as e:
    raise ConfigError(f"arch 'ddpm' needs jaxir.models.ddpm, which failed to import: {e}") \
        from None
  return ddpm


def _init_args(config: ADMConfig):
  s = 2 ** (len(config.channel_mult) - 1)
  x = jax.ShapeDtypeStruct((1, s, s, config.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if config.num_classes is not None else None
  return x, t, y


@functools.lru_cache(maxsize=16)
def _adm_flax_shapes(config: ADMConfig) -> dict:
  config = dataclasses.replace(config, use_checkpoint=False)  # same tree; remat reorders it
  x, t, y = _init_args(config)
  order = []

  def init(*args):  # records the creation order (= PyTorch's registration order)
    variables = ADMUNet(config).init(*args)
    order.extend(tu.flatten_dict(variables["params"]))
    return variables

  shapes = tu.flatten_dict(jax.eval_shape(init, jax.random.key(0), x, t, y)["params"])
  return {p: tuple(shapes[p].shape) for p in order}


def _adm_spec(config: ADMConfig) -> dict:
  """torch key -> (flax path, torch shape), in the model's call order."""
  return {flax_path_to_torch_key(p): (p, _torch_shape(p[-1], s))
          for p, s in _adm_flax_shapes(config).items()}


def adm_state_dict_shapes(config) -> dict[str, tuple]:
  """{key: shape} of guided-diffusion's `UNetModel.state_dict()` for `config` (no arrays)."""
  return {k: s for k, (_, s) in _adm_spec(_as_adm_config(config)).items()}


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
  cfg = _as_adm_config(config)
  spec = _adm_spec(cfg)
  check_state_dict_shapes({k: np.shape(v) for k, v in state_dict.items()},
                          {k: s for k, (_, s) in spec.items()}, "ADM config")
  flat = {}
  for key, (path, _) in spec.items():
    a = np.asarray(state_dict[key])
    a = a.astype(np.float32) if a.dtype != np.float32 else a
    flat[path] = jnp.asarray(_from_torch_layout(path[-1], a))
  return {"params": tu.unflatten_dict(flat)}


def adm_state_dict_from_params(params, config) -> dict[str, np.ndarray]:
  """guided-diffusion state dict (float32 NumPy, PyTorch layouts) from `ADMUNet` params.

  The exact inverse of `adm_params_from_state_dict`. `params` may be the
  variables dict {'params': ...} or its inner tree.
  """
  cfg = _as_adm_config(config)
  tree = params["params"] if "params" in params else params
  flat = {p: v for p, v in tu.flatten_dict(dict(tree)).items()}
  spec = _adm_spec(cfg)
  got = {flax_path_to_torch_key(p): _torch_shape(p[-1], np.shape(v)) for p, v in flat.items()}
  check_state_dict_shapes(got, {k: s for k, (_, s) in spec.items()}, "ADM config")
  return {k: _to_torch_layout(p[-1], np.asarray(flat[p], np.float32))
          for k, (p, _) in spec.items()}


def count_params(params) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def _build(arch: str, cfg, dtype):
  dtype = jnp.float32 if dtype is None else dtype
  if arch == "adm":
    return ADMUNet(cfg, dtype=dtype)
  return _ddpm().DDPMUNet.from_config(cfg, dtype=dtype)


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
    params = _ddpm().ddpm_params_from_state_dict(sd, cfg)
  return _build(arch, cfg, dtype), params


def _arch_of(model) -> str:
  if isinstance(model, ADMUNet):
    return "adm"
  try:
    from jaxir.models import ddpm
  except ImportError:
    ddpm = None
  if ddpm is not None and isinstance(model, ddpm.DDPMUNet):
    return "ddpm"
  raise ConfigError(f"to_torch supports ADMUNet and DDPMUNet; got {type(model).__name__}.")


def _config_json(arch: str, cfg) -> dict:
  if dataclasses.is_dataclass(cfg):
    return dataclasses.asdict(cfg)
  return dict(cfg)


def to_torch(model, params, path) -> dict[str, np.ndarray]:
  """Write params as the upstream PyTorch state dict in a .safetensors file.

  Load it with `model.load_state_dict(safetensors.torch.load_file(path),
  strict=True)`. Returns the written state dict.
  """
  arch = _arch_of(model)
  if arch == "adm":
    sd = adm_state_dict_from_params(params, model.config)
  else:
    sd = _ddpm().ddpm_state_dict_from_params(params, model.config)
  write_safetensors(path, sd, metadata={
      "arch": arch, "config": json.dumps(_config_json(arch, model.config))})
  return sd


def _abstract_variables(arch: str, model):
  if arch == "adm":
    x, t, y = _init_args(model.config)
    return jax.eval_shape(model.init, jax.random.key(0), x, t, y)
  cfg = model.config
  s = 2 ** (len(cfg.ch_mult) - 1)
  x = jax.ShapeDtypeStruct((1, s, s, cfg.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x, jax.ShapeDtypeStruct((1,), jnp.int32))


def save_converted(directory, model, params, upstream: Mapping | None = None) -> str:
  """Write params (orbax) and config.json into `directory`; returns its absolute path."""
  import orbax.checkpoint as ocp
  arch = _arch_of(model)
  directory = os.path.abspath(os.fspath(directory))
  os.makedirs(directory, exist_ok=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(directory, "params"), params, force=True)
  ckptr.wait_until_finished()
  meta = {"format": _FORMAT, "arch": arch, "model_config": _config_json(arch, model.config),
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
  if meta.get("format") != _FORMAT:
    raise CheckpointError(f"{cfg_path} is not a jaxir converted checkpoint ({_FORMAT}).")
  arch = meta["arch"]
  if arch == "adm":
    cfg = ADMConfig(**meta["model_config"])
  else:
    cfg = _ddpm().ddpm_config(**meta["model_config"])
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
  ap.add_argument("--arch", choices=["adm", "ddpm"], default=None)
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


if __name__ == "__main__":
  raise SystemExit(main())
