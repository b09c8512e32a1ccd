"""eps-prediction DDPM training of a diffusion U-Net, data parallel over all devices.

`train_and_evaluate(config, workdir)` runs (or resumes) a run in the style of
the Flax examples; its parts are public so tests and notebooks can drive them:
`create_train_state`, `make_train_step` (a pure, jitted
`train_step(state, batch, key) -> (state, metrics)`), `step_keys`,
`make_batch_sampler`, `sample_grid`, `save_grid`, `checkpoint_manager`,
`restore_or_init` and `export_prior`.

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
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.diffusion.ddim import ddim_sample
from jaxir.diffusion.respace import space_timesteps
from jaxir.diffusion.schedule import get_schedule
from jaxir.errors import CheckpointError, ConfigError
from jaxir.parallel import data_mesh
from jaxir.train import data as data_lib
from jaxir.train.configs import TrainConfig

__all__ = ["TrainState", "build_model", "make_apply_fn", "make_optimizer", "create_train_state",
           "diffusion_loss", "make_train_step", "make_eval_loss", "step_keys", "data_mesh",
           "load_data", "make_batch_sampler", "sample_grid", "save_grid", "checkpoint_manager",
           "restore_or_init", "export_prior", "train_and_evaluate"]


class TrainState(struct.PyTreeNode):
  """Everything a resumed run needs (all leaves are arrays, so orbax saves it whole).

  Attributes:
    step: int32 scalar, optimizer steps taken.
    params: model variables as `model.apply` takes them.
    ema_params: exponential moving average of `params`.
    opt_state: optax state.
    rng: uint32 key data of the run's base key (`jax.random.key_data`).
  """
  step: jnp.ndarray
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jnp.ndarray


def build_model(config: TrainConfig):
  """The Flax `ADMUNet` described by `config.model` (guided-diffusion create_model kwargs).

  With compute_dtype "bfloat16" the U-Net runs its convolutions and attention in
  bfloat16 and keeps group norms, embeddings and the head in float32.
  """
  from jaxir.models.adm import ADMUNet, adm_config
  dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  return ADMUNet(adm_config(**dict(config.model)), dtype=dtype)


def make_apply_fn(model) -> Callable:
  """`apply_fn(params, x, t) -> raw output` of a Flax module called as model(x, t).

  Equal modules give equal (hashable) functions, so jitted steps are reused.
  """
  from jaxir.priors.base import module_apply_fn
  return module_apply_fn(model)


def _lr_schedule(config: TrainConfig):
  w = max(config.warmup_steps, 1)
  if config.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(config.learning_rate, max(config.num_steps - w, 1))
  else:
    after = optax.constant_schedule(config.learning_rate)
  return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, w), after], [w])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """AdamW (linear warm-up to `learning_rate`, then constant or cosine), after
  global-norm clipping."""
  adamw = optax.adamw(_lr_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
                      weight_decay=config.weight_decay)
  if config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
  return adamw


def create_train_state(config: TrainConfig, model, key) -> TrainState:
  """Initial state: params from `model.init(key, x, t)`, EMA = params, fresh optimizer.

  Args:
    config: the run's config.
    model: a Flax module called as `model(x, t)` with x (N, H, W, C).
    key: `jax.random` key; split into the init key and the run's base key.
  """
  k_init, k_run = jax.random.split(key)
  s, c = config.image_size, config.channels
  params = model.init(k_init, jnp.zeros((1, s, s, c), jnp.float32), jnp.zeros((1,), jnp.int32))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree.map(jnp.copy, params),
                    opt_state=make_optimizer(config).init(params),
                    rng=jax.random.key_data(k_run))


def step_keys(state_rng, step: int):
  """(data_key, step_key) of step `step`, from the state's base key data."""
  k = jax.random.fold_in(jax.random.wrap_key_data(state_rng), step)
  return tuple(jax.random.split(k))


_JIT_CACHE: dict = {}


def _memo(kind: str, config: TrainConfig, mesh: Mesh, extra, build: Callable):
  """Reuse jitted functions across calls with equal (config, mesh, extra), so a
  resumed or repeated run in one process does not recompile."""
  try:
    key = (kind, config.to_json(), tuple(d.id for d in mesh.devices.flat), mesh.axis_names,
           extra)
    hash(key)
  except TypeError:  # an unhashable model: no caching
    return build()
  if key not in _JIT_CACHE:
    _JIT_CACHE[key] = build()
  return _JIT_CACHE[key]


def _cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                      tree)


def diffusion_loss(apply_fn: Callable, params, x0, key, alphas_cumprod,
                   compute_dtype=jnp.float32, weighting: str = "eps"):
  """The DDPM simple loss: mean squared error of the predicted eps.

  With `weighting="truncated_snr"` each example's eps-MSE is multiplied by
  max(1, (1 - abar_t) / abar_t), which makes it max(eps-MSE, x0-MSE) (x0 from
  the predicted eps); "eps" is the plain loss.

  Args:
    apply_fn: `apply_fn(params, x, t)`, output C or 2C channels (eps first).
    params: model variables.
    x0: (N, H, W, C) clean images in [-1, 1].
    key: `jax.random` key for t and eps.
    alphas_cumprod: (T,) float32.
    compute_dtype: dtype of the network evaluation (params and input cast to it).

  Returns:
    scalar float32 loss.
  """
  kt, kn = jax.random.split(key)
  n, c = x0.shape[0], x0.shape[-1]
  t = jax.random.randint(kt, (n,), 0, alphas_cumprod.shape[0])
  eps = jax.random.normal(kn, x0.shape, jnp.float32)
  a = alphas_cumprod[t].reshape(n, 1, 1, 1)
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  out = apply_fn(_cast(params, compute_dtype), x_t.astype(compute_dtype), t)
  per_example = jnp.mean((out[..., :c].astype(jnp.float32) - eps) ** 2, axis=(1, 2, 3))
  if weighting == "truncated_snr":
    per_example = per_example * jnp.maximum(1.0, (1.0 - a[:, 0, 0, 0]) / a[:, 0, 0, 0])
  elif weighting != "eps":
    raise ConfigError(f"weighting {weighting!r}; use 'eps' or 'truncated_snr'.")
  return jnp.mean(per_example)


def make_train_step(config: TrainConfig, apply_fn: Callable, mesh: Mesh | None = None,
                    donate: bool = True, cast_dtype=None) -> Callable:
  """The jitted `train_step(state, batch, key) -> (state, metrics)`.

  The batch is sharded along its first axis over the mesh's "data" axis; the
  state is replicated; gradients are averaged by the compiler (data parallel).

  Args:
    config: the run's config (optimizer, EMA decay, schedule, compute dtype).
    apply_fn: `apply_fn(params, x, t)`.
    mesh: device mesh (default: `data_mesh()`).
    donate: donate the input state's buffers (the caller must not reuse it).
    cast_dtype: dtype params and inputs are cast to before `apply_fn`; default
      bfloat16 if `config.compute_dtype` says so, else float32. Pass float32 for
      a model that handles bfloat16 itself (`build_model`'s ADMUNet).
  """
  mesh = data_mesh() if mesh is None else mesh
  return _memo("train_step", config, mesh, (apply_fn, donate, str(cast_dtype)),
               lambda: _make_train_step(config, apply_fn, mesh, donate, cast_dtype))


def _make_train_step(config, apply_fn, mesh, donate, cast_dtype):
  if config.batch_size % mesh.size:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {mesh.size} "
                      "devices; pick a multiple of the device count.")
  tx = make_optimizer(config)
  lr = _lr_schedule(config)
  abar = get_schedule(config.schedule, config.num_timesteps).alphas_cumprod
  dtype = cast_dtype
  if dtype is None:
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def train_step(state: TrainState, batch, key):
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(apply_fn, p, batch, key, abar, dtype,
                                 config.loss_weight))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(config.ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr(state.step)}
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  return jax.jit(train_step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,) if donate else ())


def make_eval_loss(config: TrainConfig, apply_fn: Callable, mesh: Mesh | None = None):
  """Jitted `eval_loss(params, batch, key) -> loss`: the plain eps loss (whatever
  `config.loss_weight` is, so runs compare), no update."""
  mesh = data_mesh() if mesh is None else mesh
  abar = get_schedule(config.schedule, config.num_timesteps).alphas_cumprod
  repl = NamedSharding(mesh, P())
  return jax.jit(lambda p, b, k: diffusion_loss(apply_fn, p, b, k, abar), out_shardings=repl)


def load_data(config: TrainConfig, arrays=None):
  """(train_data, eval_data) for `make_batch_sampler`; eval_data may be None.

  mnist32: (N, 32, 32, 3) arrays; natural: `ImageBank`s of the train and
  held-out photographs (held-out only when every source package is installed);
  array: `arrays` = (train, eval or None) as given.
  """
  if config.dataset == "mnist32":
    c = config.channels
    return data_lib.mnist32("train", channels=c), data_lib.mnist32("holdout", channels=c)
  if config.dataset == "natural":
    d = dict(config.data)
    src = d.get("sources")
    train = data_lib.image_bank(data_lib.natural_images(
        "train", include_gray=d.get("include_gray", False), sources=src))
    try:
      held = data_lib.image_bank(data_lib.natural_images("holdout", sources=src))
    except ConfigError:
      if src is None:
        raise
      held = None
    return train, held
  if arrays is None:
    raise ConfigError("dataset 'array' needs arrays=(train, eval) passed to train_and_evaluate.")
  return arrays


def make_batch_sampler(config: TrainConfig, mesh: Mesh | None = None) -> Callable:
  """Jitted `sample(data, key, batch_size) -> batch`, the batch sharded over "data"."""
  mesh = data_mesh() if mesh is None else mesh
  return _memo("sampler", config, mesh, None, lambda: _make_batch_sampler(config, mesh))


def _make_batch_sampler(config, mesh):
  shard = NamedSharding(mesh, P("data"))
  if config.dataset == "natural":
    d = dict(config.data)
    fn = lambda data, key, n: data_lib.sample_patches(
        key, data, n, d.get("patch_size", config.image_size), d.get("max_crop", 256))
  else:
    fn = lambda data, key, n: data_lib.sample_images(key, data, n)
  return jax.jit(fn, static_argnums=2, out_shardings=shard)


def sample_grid(apply_fn: Callable, params, key, shape, *, steps: int = 50,
                num_timesteps: int = 1000, schedule: str = "linear"):
  """Unconditional DDIM samples (eta 0, x0 clipped), float32 (N, H, W, C) in [-1, 1].

  Args:
    apply_fn, params: the model.
    key: key of the starting noise.
    shape: (N, H, W, C).
    steps: DDIM steps ("ddimN" respacing).
  """
  ts = space_timesteps(num_timesteps, f"ddim{steps}")
  x_T = jax.random.normal(key, shape, jnp.float32)
  return ddim_sample(lambda x, t: apply_fn(params, x, t), x_T, ts,
                     num_timesteps=num_timesteps, schedule=schedule)


def save_grid(images, path: str, nrow: int | None = None):
  """Write (N, H, W, C) images in [-1, 1] as one PNG grid (1-pixel white gaps)."""
  from PIL import Image
  x = np.asarray(images, np.float32)
  n, h, w, c = x.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  ncol = int(np.ceil(n / nrow))
  grid = np.ones((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), np.float32)
  for i in range(n):
    r, q = divmod(i, nrow)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i]
  u8 = np.round((np.clip(grid, -1, 1) + 1) * 127.5).astype(np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(u8[..., 0] if c == 1 else u8).save(path)


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
  init = _memo("init", config, mesh, model, lambda: jax.jit(
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
                                  "sample_every", "keep_checkpoints")}
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
                       mesh: Mesh | None = None) -> TrainState:
  """Train (or resume) until `num_steps` total steps or the time budget runs out.

  Files in `workdir`: config.json, checkpoints/ (orbax, each `checkpoint_every`
  steps and at the end), metrics.jsonl (train loss averaged over `log_every`
  steps, steps/s, eval loss of the EMA params on held-out data at fixed noise),
  samples/step_XXXXXXX.png (DDIM grids from the EMA params, fixed noise).

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
    mesh: device mesh (default: all devices).

  Returns:
    the final `TrainState`.
  """
  t_start = time.monotonic()
  mesh = data_mesh() if mesh is None else mesh
  model = build_model(config) if model is None else model
  apply_fn = make_apply_fn(model)
  num_steps = config.num_steps if num_steps is None else num_steps
  _check_workdir_config(workdir, config)
  repl = NamedSharding(mesh, P())
  train_data, eval_data = load_data(config, arrays)
  train_data = jax.device_put(train_data, repl)
  sampler = make_batch_sampler(config, mesh)
  own_dtype = getattr(model, "dtype", None) == jnp.bfloat16  # ADMUNet(dtype=bfloat16)
  train_step = make_train_step(config, apply_fn, mesh,
                               cast_dtype=jnp.float32 if own_dtype else None)
  mngr = checkpoint_manager(os.path.join(workdir, "checkpoints"), config)
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
    grid_fn = _memo("grid", config, mesh, model, lambda: jax.jit(lambda p: sample_grid(
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
    if out_of_time:
      break
  mngr.wait_until_finished()
  mngr.close()
  return state
