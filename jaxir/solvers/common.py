"""Small helpers shared by the solvers: one-image model calls, residuals, checks.

Solvers work on ONE image `(H, W, C)` and one measurement; batches come from
`jax.vmap`. The prior's network takes `(N, H, W, C)`, so these helpers add and
remove the batch axis of size one (under vmap it becomes the real batch).
"""
from __future__ import annotations

import dataclasses
import inspect
import sys
import types

import jax
import jax.numpy as jnp

from jaxir.checks import check_finite
from jaxir.errors import ConfigError, ShapeError

__all__ = ["model_single", "eps_single", "residual_norm", "check_measurement",
           "noise_like", "is_key", "callable_module", "preset"]


def preset(table, name: str, kind: str, **overrides):
  """The config `table[name]` with `overrides` replaced (each solver's `*_preset`).

  Args:
    table: the solver's presets, name -> frozen config dataclass.
    name: the preset's name.
    kind: the solver's name for the message (e.g. "DCDP").
    **overrides: config fields to replace; an unknown field raises TypeError.

  Raises:
    ConfigError: `name` is not in `table` (the message lists the names).
  """
  if name not in table:
    raise ConfigError(f"unknown {kind} preset {name!r}; choose from {sorted(table)}.")
  return dataclasses.replace(table[name], **overrides)


def model_single(prior, x, t):
  """Raw model output for one image x (H, W, C) at integer timestep t (scalar)."""
  t = jnp.reshape(jnp.asarray(t, jnp.int32), (1,))
  return prior.model(x[None], t)[0]


def eps_single(prior, x, t):
  """Predicted noise for one image (the first C channels of the raw output)."""
  out = model_single(prior, x, t)
  return out[..., : x.shape[-1]]


def residual_norm(operator, x, y):
  """Euclidean norm ||A(x) - y|| over all measurement entries (real scalar)."""
  r = operator.A(x) - y
  return jnp.sqrt(jnp.sum(jnp.real(r * jnp.conj(r))))


def check_measurement(y, operator, name: str = "y", *, prior=None):
  """Raise `ShapeError` unless y has the operator's output shape (one measurement) and the
  operator's images have the prior's channel count, and `NaNError` if a concrete y holds
  NaN or inf (under jit only the shapes are checked)."""
  shape = getattr(prior, "image_shape", None)
  if shape is not None and tuple(operator.in_shape)[-1] != shape[-1]:
    raise ShapeError(f"the operator takes {tuple(operator.in_shape)} images but the prior "
                     f"models {shape[-1]}-channel images {tuple(shape)}; build the operator "
                     f"for (H, W, {shape[-1]}) images (e.g. a grey prior takes grey images).")
  want = tuple(operator.out_shape)
  if tuple(jnp.shape(y)) != want:
    raise ShapeError(f"{name} has shape {tuple(jnp.shape(y))}; the operator maps "
                     f"{tuple(operator.in_shape)} images to {want}. Solvers take one "
                     "measurement: use jax.vmap over a batch.")
  return check_finite(y, f"the measurement {name}")


def is_key(a) -> bool:
  """True for a `jax.random` key (new-style typed key or legacy uint32 (2,))."""
  dt = jnp.asarray(a).dtype if not hasattr(a, "dtype") else a.dtype
  if jnp.issubdtype(dt, jax.dtypes.prng_key):
    return True
  return dt == jnp.uint32 and tuple(jnp.shape(a)) == (2,)


def noise_like(key_or_noise, x, name: str = "key_or_noise"):
  """A standard normal draw of x's shape: drawn from a key, or checked and returned."""
  if is_key(key_or_noise):
    return jax.random.normal(key_or_noise, x.shape, x.dtype)
  noise = jnp.asarray(key_or_noise)
  if noise.shape != x.shape:
    raise ShapeError(f"{name} has shape {noise.shape}; pass a jax.random key or a noise "
                     f"array of the image's shape {x.shape}.")
  if not jnp.issubdtype(noise.dtype, jnp.floating):
    raise ConfigError(f"{name} has dtype {noise.dtype}; pass a jax.random key or a float "
                      "noise array.")
  return noise.astype(x.dtype)


def callable_module(module_name: str, fn) -> None:
  """Make module `module_name` callable as `fn`, keeping its attributes.

  So `jaxir.solvers.dcdp(key, y, operator, prior, config)` runs the solver
  while `jaxir.solvers.dcdp.data_consistency` etc. stay reachable. Use
  `jaxir.solvers.dcdp.dcdp` where a plain function is needed.
  """
  module = sys.modules[module_name]

  class _SolverModule(types.ModuleType):
    __call__ = staticmethod(fn)
    __signature__ = inspect.signature(fn)
    __wrapped__ = fn

  module.__class__ = _SolverModule
