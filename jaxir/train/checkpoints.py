"""Checkpoints of a training run (orbax) and the export of a shipped prior.

`checkpoint_manager`/`restore_or_init` resume a run (or start it, optionally from
exported weights: `TrainConfig.init_from`); `export_prior` writes the EMA weights
under guided-diffusion's state-dict keys (`.safetensors`) and the card (`.json`).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.errors import CheckpointError
from jaxir.parallel import data_mesh
from jaxir.train.configs import TrainConfig
from jaxir.train.state import TrainState, create_train_state, memo_jit

__all__ = ["checkpoint_manager", "restore_or_init", "export_prior"]


def checkpoint_manager(directory: str, config: TrainConfig) -> ocp.CheckpointManager:
  """An orbax CheckpointManager keeping `config.keep_checkpoints` steps."""
  # Synchronous saves: the next train step may donate the state's buffers.
  opts = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), options=opts)


def restore_or_init(mngr: ocp.CheckpointManager, config: TrainConfig, model,
                    mesh: Mesh | None = None) -> TrainState:
  """The latest checkpoint of `mngr` (replicated on the mesh), else a fresh state
  (params and EMA params from `config.init_from` if set: a run's latest
  checkpoint or an exported `.safetensors`)."""
  mesh = data_mesh() if mesh is None else mesh
  repl = NamedSharding(mesh, P())
  init = memo_jit("init", config, mesh, model, lambda: jax.jit(
      lambda k: create_train_state(config, model, k), out_shardings=repl))
  key = jax.random.key(config.seed)
  step = mngr.latest_step()
  if step is not None:
    return _restore(mngr, step, _abstract_state(init, key, repl))
  fresh = init(key)
  if not config.init_from:
    return fresh
  # Fine-tuning: params and EMA params from elsewhere, step, optimizer and keys fresh.
  if config.init_from.endswith(".safetensors"):  # an exported prior: EMA = params
    params = jax.device_put(_exported_params(config, fresh.params), repl)
    return fresh.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
  src_dir = os.path.join(config.init_from, "checkpoints")
  src = checkpoint_manager(src_dir, config)
  src_step = src.latest_step()
  if src_step is None:
    raise CheckpointError(f"init_from {config.init_from!r} has no checkpoint under "
                          f"{src_dir}; train that run first or fix the path.")
  src_state = _restore(src, src_step, _abstract_state(init, key, repl))
  src.close()
  return fresh.replace(params=src_state.params, ema_params=src_state.ema_params)


def _abstract_state(init, key, sharding):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                      jax.eval_shape(init, key))


def _exported_params(config: TrainConfig, like):
  """Params of an exported prior (guided-diffusion safetensors) for `config.model`."""
  from jaxir.models.convert import from_torch
  if not os.path.exists(config.init_from):
    raise CheckpointError(f"init_from {config.init_from!r} does not exist; give an exported "
                          "prior's .safetensors (e.g. checkpoints/mnist32.safetensors).")
  _, params = from_torch(config.init_from, "adm", dict(config.model))
  if jax.tree.structure(params) != jax.tree.structure(like):
    raise CheckpointError(f"init_from {config.init_from!r} does not match the model of config "
                          f"{config.name!r}; use a config with the same model arguments.")
  return jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype), params, like)


def _restore(mngr: ocp.CheckpointManager, step: int, abstract) -> TrainState:
  try:
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
  except Exception as e:  # orbax raises several types on a structure mismatch
    raise CheckpointError(f"cannot restore step {step} from {mngr.directory} ({e}); the "
                          "checkpoint belongs to another model: use a new workdir.") from e


def export_prior(model, params, config: TrainConfig, directory: str, *,
                 extra: dict | None = None, name: str | None = None):
  """Write a shipped prior: guided-diffusion safetensors plus a JSON card.

  Writes `<directory>/<config.name>.safetensors` (the upstream PyTorch state
  dict of `params`, via `jaxir.models.convert.to_torch`; loads with
  `jaxir.models.load(meta["model"], path, arch="adm")` or into guided-diffusion's
  `create_model(**meta["model"])`) and `<directory>/<config.name>.json`
  (`model`: the create_model kwargs; `train`: the TrainConfig; plus `extra`,
  e.g. steps, final loss, hardware).

  Args:
    model: the `ADMUNet`.
    params: its variables (ship the EMA params).
    config: the run's config.
    directory: output folder.
    extra: more JSON fields.
    name: file stem (default `config.name`).

  Returns:
    (safetensors_path, json_path).
  """
  from jaxir.models.convert import count_params, to_torch
  os.makedirs(directory, exist_ok=True)
  name = config.name if name is None else name
  st = os.path.join(directory, f"{name}.safetensors")
  to_torch(model, jax.device_get(params), st)
  meta = {"arch": "adm", "model": dict(config.model), "image_size": config.image_size,
          "channels": config.channels, "schedule": config.schedule,
          "num_timesteps": config.num_timesteps, "prediction": "eps",
          "num_params": count_params(params), "train": config.to_dict(), **(extra or {})}
  js = os.path.join(directory, f"{name}.json")
  with open(js, "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True, default=list)
  return st, js
