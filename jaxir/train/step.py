"""The training objective and the jitted, data-parallel train step.

Objective: t ~ U{0, ..., T-1}, eps ~ N(0, I), x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, loss = mean (eps_theta(x_t, t) - eps)^2 over the first C
output channels.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (Alg. 1).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.diffusion.schedule import get_schedule
from jaxir.errors import ConfigError
from jaxir.parallel import data_mesh, one_device_call
from jaxir.runtime import single_device_options
from jaxir.train.configs import TrainConfig
from jaxir.train.state import TrainState, lr_schedule, make_apply_fn, make_optimizer, memo_jit

__all__ = ["cast_tree", "diffusion_loss", "sample_timesteps", "make_train_step",
           "model_train_step", "make_eval_loss"]


def cast_tree(tree, dtype):
  """Floating leaves of `tree` cast to `dtype` (others unchanged)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                      tree)


def diffusion_loss(apply_fn: Callable, params, x0, key, alphas_cumprod,
                   compute_dtype=jnp.float32, weighting: str = "eps",
                   t_lognormal: float = 0.0):
  """The DDPM simple loss: mean squared error of the predicted eps.

  With `weighting="truncated_snr"` each example's eps-MSE is multiplied by
  max(1, (1 - abar_t) / abar_t), which makes it max(eps-MSE, x0-MSE) (x0 from
  the predicted eps); "eps" is the plain loss.

  t is uniform over the schedule; with `t_lognormal` = f > 0 each example
  instead, with probability f, takes the timestep nearest (in log sigma) to
  EDM's training noise level ln sigma ~ N(-1.2, 1.2^2) (Karras et al. 2022,
  sec. 5; sigma_t = sqrt((1 - abar_t) / abar_t), the noise of x_t / sqrt(abar_t)).

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
  t = sample_timesteps(kt, n, alphas_cumprod, t_lognormal)
  eps = jax.random.normal(kn, x0.shape, jnp.float32)
  a = alphas_cumprod[t].reshape(n, 1, 1, 1)
  x_t = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps
  out = apply_fn(cast_tree(params, compute_dtype), x_t.astype(compute_dtype), t)
  per_example = jnp.mean((out[..., :c].astype(jnp.float32) - eps) ** 2, axis=(1, 2, 3))
  if weighting == "truncated_snr":
    per_example = per_example * jnp.maximum(1.0, (1.0 - a[:, 0, 0, 0]) / a[:, 0, 0, 0])
  elif weighting != "eps":
    raise ConfigError(f"weighting {weighting!r}; use 'eps' or 'truncated_snr'.")
  return jnp.mean(per_example)


EDM_P_MEAN, EDM_P_STD = -1.2, 1.2
"""EDM's training noise distribution, ln sigma ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)."""


def sample_timesteps(key, n: int, alphas_cumprod, t_lognormal: float = 0.0):
  """(n,) int32 training timesteps: uniform, a fraction `t_lognormal` from EDM's law.

  Each example is uniform on [0, T) with probability 1 - t_lognormal, else the
  timestep whose sigma_t = sqrt((1 - abar_t) / abar_t) is nearest in log to
  sigma = exp(EDM_P_MEAN + EDM_P_STD * z), z ~ N(0, 1). With t_lognormal = 0 it
  draws exactly `jax.random.randint(key, (n,), 0, T)`.
  """
  T = alphas_cumprod.shape[0]
  if t_lognormal == 0.0:
    return jax.random.randint(key, (n,), 0, T)
  ku, kz, kb = jax.random.split(key, 3)
  uniform = jax.random.randint(ku, (n,), 0, T)
  log_sigma_t = 0.5 * (jnp.log1p(-alphas_cumprod) - jnp.log(alphas_cumprod))  # increasing
  log_sigma = EDM_P_MEAN + EDM_P_STD * jax.random.normal(kz, (n,))
  hi = jnp.clip(jnp.searchsorted(log_sigma_t, log_sigma), 1, T - 1)
  lo = hi - 1
  nearest = jnp.where(log_sigma - log_sigma_t[lo] < log_sigma_t[hi] - log_sigma, lo, hi)
  return jnp.where(jax.random.bernoulli(kb, t_lognormal, (n,)), nearest,
                   uniform).astype(jnp.int32)


def make_train_step(config: TrainConfig, apply_fn: Callable, mesh: Mesh | None = None,
                    donate: bool = True, cast_dtype=None) -> Callable:
  """The jitted `train_step(state, batch, key) -> (state, metrics)`.

  The batch is sharded along its first axis over the mesh's "data" axis; the
  state is replicated; gradients are averaged by the compiler (data parallel).
  On a one-device CPU mesh the step is compiled with
  `jaxir.runtime.single_device_options` (XLA's Eigen convolutions: 1.27-1.32x
  faster steps on one core of a 2-core Intel Xeon, docs/performance.md); when
  the process has other host devices it then runs through
  `jaxir.parallel.one_device_call` (alone, and returning finished arrays), since
  such programs are only trusted while no other host device works. A mesh of
  several devices gets XLA's defaults.

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
  return memo_jit("train_step", config, mesh, (apply_fn, donate, str(cast_dtype)),
               lambda: _make_train_step(config, apply_fn, mesh, donate, cast_dtype))


def model_train_step(config: TrainConfig, model, mesh: Mesh | None = None) -> Callable:
  """`make_train_step` for a Flax module `model(x, t)`, as `train_and_evaluate` runs it
  (a module that computes in bfloat16 itself gets float32 inputs)."""
  own_dtype = getattr(model, "dtype", None) == jnp.bfloat16  # ADMUNet(dtype=bfloat16)
  return make_train_step(config, make_apply_fn(model), mesh,
                         cast_dtype=jnp.float32 if own_dtype else None)


def _make_train_step(config, apply_fn, mesh, donate, cast_dtype):
  if config.batch_size % mesh.size:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the {mesh.size} "
                      "devices; pick a multiple of the device count.")
  tx = make_optimizer(config)
  lr = lr_schedule(config)
  abar = get_schedule(config.schedule, config.num_timesteps).alphas_cumprod
  dtype = cast_dtype
  if dtype is None:
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

  def train_step(state: TrainState, batch, key):
    loss, grads = jax.value_and_grad(
        lambda p: diffusion_loss(apply_fn, p, batch, key, abar, dtype,
                                 config.loss_weight, config.t_lognormal))(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    n = state.step.astype(jnp.float32)
    decay = jnp.minimum(config.ema_decay, (1.0 + n) / (10.0 + n))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr(state.step)}
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  options = _one_device_options(mesh)
  step = jax.jit(train_step, in_shardings=(repl, shard, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,) if donate else (), compiler_options=options or None)
  device = mesh.devices.flat[0]
  if not options or len(jax.devices(device.platform)) == 1:
    return step
  return lambda state, batch, key: one_device_call(device, step, state, batch, key)


def _one_device_options(mesh: Mesh) -> dict:
  """`single_device_options` for a one-device mesh, {} for a mesh of several."""
  if mesh.size != 1:
    return {}
  return single_device_options(mesh.devices.flat[0])


def make_eval_loss(config: TrainConfig, apply_fn: Callable, mesh: Mesh | None = None):
  """Jitted `eval_loss(params, batch, key) -> loss`: the plain eps loss (whatever
  `config.loss_weight` is, so runs compare), no update."""
  mesh = data_mesh() if mesh is None else mesh
  abar = get_schedule(config.schedule, config.num_timesteps).alphas_cumprod
  repl = NamedSharding(mesh, P())
  return jax.jit(lambda p, b, k: diffusion_loss(apply_fn, p, b, k, abar), out_shardings=repl)
