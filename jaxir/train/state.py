"""Train state, model and optimizer of a diffusion-prior training run.

`create_train_state(config, model, key)` builds the state (params, EMA params,
optimizer state, step, rng); `step_keys` gives the per-step keys (fold_in of the
step, so a resumed run draws what an uninterrupted one would).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jaxir import pytree
from jax.sharding import Mesh

from jaxir.train.configs import TrainConfig

__all__ = ["TrainState", "build_model", "make_apply_fn", "lr_schedule", "make_optimizer", "create_train_state", "step_keys", "memo_jit"]


class TrainState(pytree.PyTreeNode):
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


def lr_schedule(config: TrainConfig):
  w = max(config.warmup_steps, 1)
  if config.lr_schedule == "cosine":
    after = optax.cosine_decay_schedule(config.learning_rate, max(config.num_steps - w, 1))
  else:
    after = optax.constant_schedule(config.learning_rate)
  return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, w), after], [w])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """AdamW (linear warm-up to `learning_rate`, then constant or cosine), after
  global-norm clipping."""
  adamw = optax.adamw(lr_schedule(config), b1=config.adam_b1, b2=config.adam_b2,
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


def memo_jit(kind: str, config: TrainConfig, mesh: Mesh, extra, build: Callable):
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
