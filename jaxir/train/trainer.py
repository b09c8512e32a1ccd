"""The training loop: `train_and_evaluate(config, workdir)` runs (or resumes) a run.

eps-prediction DDPM training of a diffusion U-Net, data parallel over all
devices, in the style of the Flax examples. Its parts live in one module each
and are public so tests and notebooks can drive them: `state` (model,
optimizer, `create_train_state`, `step_keys`), `step` (the loss and the pure,
jitted `train_step(state, batch, key) -> (state, metrics)`), `batches`
(`make_batch_sampler`), `grids` (`sample_grid`, `save_grid`) and `checkpoints`
(`checkpoint_manager`, `restore_or_init`, `export_prior`); this module
re-exports them.

Objective: t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, loss = mean (eps_theta(x_t, t) - eps)^2 over the first C
output channels (the configs use 3 output channels: no learned sigma).
Randomness: the step-n keys are `fold_in(rng, n)`, so a resumed run draws the
same batches and noise as an uninterrupted one.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (Alg. 1).
  Nichol & Dhariwal, "Improved DDPM", ICML 2021 (openai/guided-diffusion training).
  google/flax `examples/mnist/train.py` (train_and_evaluate layout).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.errors import CheckpointError
from jaxir.parallel import data_mesh
from jaxir.train import data as data_lib
from jaxir.train.configs import TrainConfig
from jaxir.train.batches import load_data, make_batch_sampler
from jaxir.train.checkpoints import checkpoint_manager, export_prior, restore_or_init
from jaxir.train.grids import sample_grid, save_grid
from jaxir.train.state import (TrainState, build_model, create_train_state, make_apply_fn,
                               make_optimizer, memo_jit, step_keys)
from jaxir.train.placement import AUTO_MIN_STEPS, choose_placement
from jaxir.train.step import diffusion_loss, make_eval_loss, make_train_step, model_train_step


__all__ = ["TrainState", "build_model", "make_apply_fn", "make_optimizer", "create_train_state",
           "diffusion_loss", "make_train_step", "make_eval_loss", "step_keys", "data_mesh",
           "load_data", "make_batch_sampler", "sample_grid", "save_grid", "checkpoint_manager",
           "restore_or_init", "export_prior", "train_and_evaluate"]



def _trim_metrics(path: str, step: int) -> float:
  """Drop records past `step` (logged after the last checkpoint); return their time."""
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    recs = [json.loads(line) for line in f if line.strip()]
  recs = [r for r in recs if r["step"] <= step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in recs)
  return float(recs[-1].get("train_time_s", 0.0)) if recs else 0.0


def _check_workdir_config(workdir: str, config: TrainConfig):
  path = os.path.join(workdir, "config.json")
  fixed = lambda d: {k: v for k, v in d.items()
                     if k not in ("num_steps", "log_every", "eval_every", "checkpoint_every",
                                  "sample_every", "keep_checkpoints", "snapshot_every")}
  new = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if fixed(old) != fixed(new):
      diff = sorted(k for k in set(old) | set(new) if fixed(old).get(k) != fixed(new).get(k))
      raise CheckpointError(f"{workdir} holds a run with a different config (fields {diff}); "
                            "use a new --workdir or the same config.")
  os.makedirs(workdir, exist_ok=True)
  with open(path, "w") as f:
    f.write(config.to_json())


def train_and_evaluate(config: TrainConfig, workdir: str, *, model=None,
                       num_steps: int | None = None, time_budget_s: float | None = None,
                       callback: Callable[[int, dict], None] | None = None, arrays=None,
                       mesh: Mesh | None = None, placement: str = "auto") -> TrainState:
  """Train (or resume) until `num_steps` total steps or the time budget runs out.

  Files in `workdir`: config.json, checkpoints/ (orbax, each `checkpoint_every`
  steps and at the end), metrics.jsonl (train loss averaged over `log_every`
  steps, steps/s, eval loss of the EMA params on held-out data at fixed noise),
  samples/step_XXXXXXX.png (DDIM grids from the EMA params, fixed noise),
  snapshots/<name>_XXXXXXX.safetensors (EMA exports, if `config.snapshot_every`).

  Args:
    config: the run's config.
    workdir: run directory; an existing run there is resumed.
    model: Flax module `model(x, t)` (default: `build_model(config)`).
    num_steps: total steps to reach (default `config.num_steps`).
    time_budget_s: wall-clock budget of this call; checkpoints and returns when spent.
    callback: `callback(step, record)` after every step, `record` the metrics dict
      at log steps and None otherwise (progress bars); a truthy return stops the
      run after checkpointing (e.g. on a caught SIGINT).
    arrays: (train, eval) images for dataset "array".
    mesh: device mesh (default: chosen by `placement`).
    placement: without `mesh`: "split" (the batch over all devices), "one" (one
      device, XLA's Eigen convolutions on a CPU) or "auto" (`choose_placement`: on a
      CPU host with several devices, a run of at least `AUTO_MIN_STEPS` steps times
      both first and keeps the faster; a shorter one splits). The first metrics
      record of the call gives the choice ("placement", "placement_ms").

  Returns:
    the final `TrainState`.
  """
  t_start = time.monotonic()
  model = build_model(config) if model is None else model
  apply_fn = make_apply_fn(model)
  num_steps = config.num_steps if num_steps is None else num_steps
  _check_workdir_config(workdir, config)
  train_data, eval_data = load_data(config, arrays)
  mngr = checkpoint_manager(os.path.join(workdir, "checkpoints"), config)
  chosen = None
  if mesh is None:
    short = num_steps - (mngr.latest_step() or 0) < AUTO_MIN_STEPS
    chosen = choose_placement(config, model, train_data, placement, steps=0 if short else 4)
    mesh = chosen.mesh
  repl = NamedSharding(mesh, P())
  train_data = jax.device_put(train_data, repl)
  sampler = make_batch_sampler(config, mesh)
  train_step = model_train_step(config, model, mesh)
  state = restore_or_init(mngr, config, model, mesh)
  step = int(state.step)
  base = jax.random.key(config.seed)
  k_eval, k_grid = jax.random.fold_in(base, 1), jax.random.fold_in(base, 2)
  eval_fn = eval_batch = None
  if config.eval_every and eval_data is not None:
    eval_fn = make_eval_loss(config, apply_fn, mesh)
    if isinstance(eval_data, data_lib.ImageBank):
      eval_batch = sampler(jax.device_put(eval_data, repl), jax.random.fold_in(base, 3),
                           config.eval_count)
    else:
      eval_batch = jnp.asarray(eval_data[:config.eval_count])
  grid_fn = None
  if config.sample_every:
    s = config.image_size
    grid_fn = memo_jit("grid", config, mesh, model, lambda: jax.jit(lambda p: sample_grid(
        make_apply_fn(model), p, k_grid, (config.sample_count, s, s, config.channels),
        steps=config.sample_steps, num_timesteps=config.num_timesteps,
        schedule=config.schedule)))
  log_path = os.path.join(workdir, "metrics.jsonl")
  prior_time = _trim_metrics(log_path, step)
  losses, t_log, steps_log = [], time.monotonic(), 0

  def record(rec):
    with open(log_path, "a") as f:
      f.write(json.dumps(rec) + "\n")

  while step < num_steps:
    k_data, k_step = step_keys(state.rng, step)
    batch = sampler(train_data, k_data, config.batch_size)
    state, metrics = train_step(state, batch, k_step)
    step += 1
    losses.append(metrics["loss"])
    steps_log += 1
    last = step == num_steps
    out_of_time = time_budget_s is not None and time.monotonic() - t_start > time_budget_s
    rec = None
    if step % config.log_every == 0 or last or out_of_time:
      now = time.monotonic()
      rec = {"step": step, "loss": float(np.mean(jax.device_get(losses))),
             "grad_norm": float(metrics["grad_norm"]), "lr": float(metrics["lr"]),
             "steps_per_sec": steps_log / max(now - t_log, 1e-9),
             "train_time_s": prior_time + now - t_start}
      losses, t_log, steps_log = [], now, 0
      if chosen is not None:  # the first record of this call says where it ran
        rec["placement"] = chosen.name
        if chosen.ms:
          rec["placement_ms"] = chosen.ms
        chosen = None
      if eval_fn is not None and (step % config.eval_every == 0 or last):
        rec["eval_loss"] = float(eval_fn(state.ema_params, eval_batch, k_eval))
      record(rec)
    if callback is not None and callback(step, rec):
      out_of_time = True
    if grid_fn is not None and (step % config.sample_every == 0 or last):
      save_grid(grid_fn(state.ema_params),
                os.path.join(workdir, "samples", f"step_{step:07d}.png"))
    if step % config.checkpoint_every == 0 or last or out_of_time:
      mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    if config.snapshot_every and step % config.snapshot_every == 0:
      export_prior(model, state.ema_params, config, os.path.join(workdir, "snapshots"),
                   name=f"{config.name}_{step:07d}", extra={"steps": step})
    if out_of_time:
      break
  mngr.wait_until_finished()
  mngr.close()
  return state

