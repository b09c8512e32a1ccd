"""Data parallelism over all visible devices with JAX's own mesh and sharding.

A batch of images (and everything batched with it: keys, measurements,
per-image operators) is split along its first axis over a 1-D device mesh
with axis "data"; the prior and the config are replicated. The compiler then
runs each device's share of a `jax.vmap`-ed solver on that device.

  solve = batch_solver(jaxir.solvers.dcdp)          # all visible devices
  x, info = solve(keys, ys, ops, prior, config)     # keys (N,), ys (N, ...)

On a CPU host, `XLA_FLAGS=--xla_force_host_platform_device_count=K` makes K
host devices: a batch then runs K ways in parallel, which scales better than
XLA's intra-op threads (DCDP on mnist32, batch 8, 2-core CPU: 16.6 s on one
device, 10.5 s on two). `import jaxir` sets K to the usable cores unless the
caller already chose a count (`jaxir.runtime.cpu_settings`).
"""
from __future__ import annotations

import threading
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.errors import ShapeError
from jaxir.runtime import single_device_options

__all__ = ["data_mesh", "pad_batch", "shard_batch", "replicate", "batch_solver",
           "one_device_options", "one_device_call"]


def data_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis "data" over `devices` (default: all visible devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("data",))


def _batch_size(tree) -> int:
  sizes = {int(np.shape(a)[0]) if np.ndim(a) else -1 for a in jax.tree.leaves(tree)}
  if len(sizes) != 1 or -1 in sizes:
    raise ShapeError(f"batched inputs must all have the same leading (batch) axis; got leading "
                     f"sizes {sorted(sizes)} (-1: a scalar). Stack per-image inputs with "
                     "jnp.stack / jaxir.tasks.stack_operators.")
  return sizes.pop()


def pad_batch(tree, multiple: int):
  """Pad every leaf's first axis to a multiple of `multiple` by repeating the last item.

  Returns:
    (padded tree, original batch size n).
  """
  n = _batch_size(tree)
  pad = (-n) % multiple
  if pad == 0:
    return tree, n

  def one(a):
    return jnp.concatenate([a] + [a[-1:]] * pad, axis=0)

  return jax.tree.map(one, tree), n


def shard_batch(tree, mesh: Mesh | None = None):
  """Place every leaf with its first axis split over the mesh's "data" axis.

  The batch size must be a multiple of the number of devices (`pad_batch`).
  """
  mesh = data_mesh() if mesh is None else mesh
  n, d = _batch_size(tree), mesh.devices.size
  if n % d:
    raise ShapeError(f"batch of {n} does not split over {d} devices; pad it first "
                     f"(jaxir.parallel.pad_batch(tree, {d})).")
  return jax.device_put(tree, NamedSharding(mesh, P("data")))


def replicate(tree, mesh: Mesh | None = None):
  """Place every leaf whole on every device of the mesh."""
  mesh = data_mesh() if mesh is None else mesh
  return jax.device_put(tree, NamedSharding(mesh, P()))


# Held while a program compiled with `one_device_options` runs (`one_device_call`).
_RUN_LOCK = threading.RLock()


def _wait_for_other_devices(device) -> None:
  """Block until every live array on another device of `device`'s platform is ready."""
  for a in jax.live_arrays():
    try:
      if any(d != device and d.platform == device.platform for d in a.devices()):
        a.block_until_ready()
    except RuntimeError:  # deleted or donated meanwhile
      continue


def one_device_options(device) -> dict | None:
  """Compile options for a program that runs on `device` alone (None: XLA's defaults).

  `jaxir.runtime.single_device_options` on a CPU device; run such a program with
  `one_device_call`.
  """
  return single_device_options(device) or None


def one_device_call(device, fn, *args):
  """`fn(*args)` for a program compiled with `one_device_options(device)`, run alone.

  With several host devices it first waits for the live arrays on the other devices,
  runs under a process-wide lock and returns finished arrays (`jaxir.runtime`: such
  programs are only trusted while nothing runs on another host device). With one host
  device, or off the CPU, this is `fn(*args)`. An argument placed on any other device
  raises ValueError: the program would then span devices with one-device options, which
  returned wrong images (a DeqIR solve: 3.8 dB instead of 22.1 dB, 2026-12-03).
  """
  if device.platform != "cpu" or len(jax.devices(device.platform)) == 1:
    return fn(*args)
  for a in jax.tree.leaves(args):
    if isinstance(a, jax.Array) and a.devices() != {device}:
      # Such a program would span those devices with one-device options: the unsafe case
      # (wrong results, `jaxir.runtime`). A caller's bug, never the user's input.
      on = sorted(a.devices(), key=str)
      raise ValueError(f"one_device_call on {device} got an array on {on}; place every "
                       "argument on that device first (jax.device_put).")
  with _RUN_LOCK:
    _wait_for_other_devices(device)
    return jax.block_until_ready(fn(*args))


def batch_solver(solver: Callable, mesh: Mesh | None = None) -> Callable:
  """A batched, device-parallel version of a solver `solver(key, y, operator, prior, config)`.

  Returns `solve(keys, ys, operators, prior, config) -> (x, info)` with keys
  (N,), ys (N, ...), `operators` one operator per image stacked along a first
  axis (`jaxir.tasks.stack_operators`), the prior and `config` shared. The
  batch is padded to a multiple of the device count (a batch smaller than the
  mesh uses its first N devices), split over the mesh, solved by one jitted
  `jax.vmap` (compiled once per shape and config) and trimmed back to N. The
  prior is copied to every device on each call unless it already is
  (`replicate(prior, mesh)` once, for a loop over batches).

  A batch that runs on one CPU device (one image, or a one-device mesh) is
  compiled with `one_device_options` (XLA's Eigen convolutions, 1.2-1.5x faster at
  batch 1 here) and run by `one_device_call`: with several host devices that call
  returns finished arrays, not asynchronous ones. Otherwise this is
  `jax.jit(jax.vmap(...))` over the mesh.
  """
  mesh = data_mesh() if mesh is None else mesh
  vsolver = jax.vmap(solver, in_axes=(0, 0, 0, None, None))
  run = jax.jit(vsolver, static_argnums=4)
  options = one_device_options(mesh.devices.flat[0])
  run_one = jax.jit(vsolver, static_argnums=4, compiler_options=options) if options else run

  def solve(keys, ys, operators, prior, config):
    n = _batch_size((keys, ys, operators))
    m = mesh if n >= mesh.devices.size else data_mesh(list(mesh.devices.flat)[:n])
    batched, n = pad_batch((keys, ys, operators), m.devices.size)
    if m.devices.size > 1:
      batched = shard_batch(batched, m)
      prior = replicate(prior, m)
      x, info = run(*batched, prior, config)
    else:
      device = m.devices.flat[0]
      batched, prior = jax.device_put((batched, prior), device)
      x, info = one_device_call(device, run_one, *batched, prior, config)
    if x.shape[0] != n:
      x, info = jax.tree.map(lambda a: a[:n], (x, info))
    return x, info

  return solve
