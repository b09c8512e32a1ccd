"""Progress of long solves, and their cost in time and memory before they start.

A solve is one jitted program: nothing comes back to Python until it ends. To
show progress anyway, `with_progress(prior)` wraps the prior's network so that
every evaluation calls `jax.debug.callback`, which advances the active `track`
bar by the images it evaluated. Every solver goes through `prior.apply_fn`, so
this needs no solver changes, and it is off unless a prior is wrapped (library
calls are untouched; the `jaxir` command wraps its prior unless `--quiet`).

  prior = with_progress(prior)
  with track(total=nfe, desc="dcdp"):
    x, info = jax.jit(solve)(key, y, op, prior)

What one tick is. Inside the (per-image) solver a network call on an (n, H, W,
C) batch is n evaluations of that image (DeqIR evaluates all T slots in one
call; its `info.nfe` counts T per call). Under `jax.vmap` over B images the
callback fires once per image (JAX unrolls a callback over the batch axis of
its operand, so a batch of B calls it B times), also when the batch is split
over devices; `track(scale=1/B)` turns that back into per-image evaluations.
The callback's operand is the network output, so it fires after the network
ran and is never hoisted out of a loop (a callback without operands inside a
differentiated `lax.scan` is loop-invariant and JAX runs it once).

Counting caveats: a network call that the solver rematerializes
(`jax.checkpoint` around the network, BIRD with `grad_through_unet=True`)
runs, and ticks, again in the backward pass; a `lax.cond` whose predicate is
batched under vmap runs both branches, and ticks for both. The bar then goes
past the solver's `info.nfe`; `track` raises its total to the count instead of
showing more than 100%.

The expected total comes from the traced program, not from a table per
solver: `profile_solve` reads the solver's `info.nfe` output from the jaxpr
and evaluates it when it depends on no input (a fixed schedule: DCDP, DPS,
DDNM, BIRD); it is None when it depends on the data (DeqIR's Anderson stops
when converged), and the bar then counts without a total.

References:
  JAX documentation, "External callbacks" (`jax.debug.callback` under vmap
  and jit); `jax.stages` (ahead-of-time lowering, `memory_analysis`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

__all__ = ["with_progress", "without_progress", "CountedApply", "Tracker", "track",
           "SolveProfile", "profile_solve", "constant_output", "memory_needed",
           "memory_available", "time_network", "format_seconds", "format_bytes"]

_LOCK = threading.Lock()
_ACTIVE: list[Tracker] = []      # bars that network evaluations advance
_RECORDS: list[_Record] = []     # trace-time records (profile_solve)


# ----------------------------------------------------------------- counting wrapper
def _is_zero(t) -> bool:
  return isinstance(t, SymbolicZero)


def _marked_call(inner: Callable, params, x, t):
  """`inner(params, x, t)` with a custom JVP that records, at trace time, that the
  network is differentiated (the JVP is `jax.jvp` of `inner` itself, so values and
  derivatives are unchanged; unperturbed inputs are not differentiated)."""

  def fn(params, x, t):
    return inner(params, x, t)

  f = jax.custom_jvp(fn)

  def rule(primals, tangents):
    for rec in _RECORDS:
      rec.differentiated = True
    params, x, t = primals
    tp, tx, _ = tangents
    p_zero = all(_is_zero(v) for v in jax.tree.leaves(tp, is_leaf=_is_zero))
    if p_zero:
      return jax.jvp(lambda x_: inner(params, x_, t), (x,), (tx,))
    tp = jax.tree.map(lambda v, p: jnp.zeros_like(p) if _is_zero(v) else v, tp, params,
                      is_leaf=_is_zero)
    if _is_zero(tx):
      return jax.jvp(lambda p_: inner(p_, x, t), (params,), (tp,))
    return jax.jvp(lambda p_, x_: inner(p_, x_, t), (params, x), (tp, tx))

  f.defjvp(rule, symbolic_zeros=True)
  return f(params, x, t)


def _tick(rows: int, _probe) -> None:
  with _LOCK:
    for tr in _ACTIVE:
      tr.add(rows)


@dataclasses.dataclass(frozen=True)
class CountedApply:
  """`apply_fn(params, x, t)` that reports each evaluation to the active `track` bars.

  Hashable and equal for equal `inner`, so jitted solves are reused across
  calls (and across bars: the callback looks the bars up when it fires).
  """
  inner: Callable

  def __call__(self, params, x, t):
    rows = int(np.shape(x)[0])
    for rec in _RECORDS:
      rec.calls.append(tuple(int(d) for d in np.shape(x)))
    out = _marked_call(self.inner, params, x, t)
    jax.debug.callback(functools.partial(_tick, rows), jnp.ravel(out)[0])
    return out


def with_progress(prior):
  """`prior` whose network evaluations advance the active `track` bars.

  Args:
    prior: a `jaxir.priors.Prior` (network or analytic).

  Returns:
    The same prior with `apply_fn` wrapped in `CountedApply` (already wrapped:
    unchanged). Values and gradients are identical; the jitted program gains
    one host callback per network call.
  """
  if isinstance(prior.apply_fn, CountedApply):
    return prior
  return prior.replace(apply_fn=CountedApply(prior.apply_fn))


def without_progress(prior):
  """The prior with the `with_progress` wrapper removed (unchanged if not wrapped)."""
  fn = prior.apply_fn
  return prior.replace(apply_fn=fn.inner) if isinstance(fn, CountedApply) else prior


# ----------------------------------------------------------------- the bar
class Tracker:
  """A tqdm bar advanced from `jax.debug.callback` (thread-safe).

  Attributes:
    bar: the `tqdm` bar.
    scale: per-image evaluations per reported row (1 / images per vmapped
      call, times the share of real images in a padded batch). Set it before
      each batch.
  """

  def __init__(self, bar, scale: float = 1.0):
    self.bar = bar
    self.scale = float(scale)
    self._done = 0.0

  @property
  def count(self) -> int:
    """Evaluations counted so far (rounded)."""
    return int(round(self._done))

  def add(self, rows: int) -> None:
    self._done += rows * self.scale
    n = int(self._done + 1e-6)
    delta = n - self.bar.n
    if delta > 0:
      if self.bar.total is not None and n > self.bar.total:
        self.bar.total = n  # recomputed / both-branch evaluations: see the module doc
      self.bar.update(delta)


@contextlib.contextmanager
def track(total: int | None = None, *, scale: float = 1.0, desc: str = "",
          disable: bool = False, file=None, unit: str = "NFE"):
  """A progress bar over network evaluations while the block runs.

  Args:
    total: expected evaluations (None: count without an estimate of the end).
    scale: see `Tracker.scale` (1 / batch size for a vmapped solve).
    desc: the bar's label.
    disable: no bar and no counting (`--quiet`).
    file: stream (default sys.stderr).
    unit: the unit shown.

  Yields:
    The `Tracker` (its `count`; None when disabled). Pending callbacks are
    waited for (`jax.effects_barrier`) before the bar closes.
  """
  if disable:
    yield None
    return
  from tqdm import tqdm
  bar = tqdm(total=total, desc=desc, unit=unit, file=file if file is not None else sys.stderr,
             dynamic_ncols=True, smoothing=0.1)
  tr = Tracker(bar, scale)
  with _LOCK:
    _ACTIVE.append(tr)
  try:
    yield tr
    jax.effects_barrier()
  finally:
    with _LOCK:
      _ACTIVE.remove(tr)
    bar.close()


# ----------------------------------------------------------------- profiling a solve
@dataclasses.dataclass
class _Record:
  calls: list = dataclasses.field(default_factory=list)
  differentiated: bool = False


class SolveProfile(NamedTuple):
  """What a traced solve will do, read before it runs.

  Attributes:
    nfe: network evaluations per image (the solver's `info.nfe` when it is
      fixed by the config; None when it depends on the data).
    calls: (n, H, W, C) of each network call site seen while tracing, per
      image (a call site inside a loop appears once).
    differentiated: whether the solver back-propagates through the network
      (DPS, BIRD's full gradient), so each evaluation also costs a backward.
  """
  nfe: int | None
  calls: tuple
  differentiated: bool

  @property
  def rows(self) -> int:
    """Images per network call (1, or T slots for DeqIR); 1 when nothing was seen."""
    return max((c[0] for c in self.calls), default=1)


@contextlib.contextmanager
def _recording():
  rec = _Record()
  _RECORDS.append(rec)
  try:
    yield rec
  finally:
    _RECORDS.remove(rec)


def _jaxpr_core():
  from jax.extend import core
  return core


def constant_output(closed_jaxpr, index: int):
  """The value of output `index` of a closed jaxpr when it depends on no input.

  Evaluates only the equations that output needs (cheap: a solver's `nfe`
  is a few scalar ops), so nothing of the solve itself runs.

  Returns:
    A NumPy array, or None when the output depends on an input or on an
    effectful equation.
  """
  core = _jaxpr_core()
  jaxpr = closed_jaxpr.jaxpr
  out = jaxpr.outvars[index]
  if isinstance(out, core.Literal):
    return np.asarray(out.val)
  consts = dict(zip(jaxpr.constvars, closed_jaxpr.consts))
  invars = set(jaxpr.invars)
  producer = {}
  for i, eqn in enumerate(jaxpr.eqns):
    for v in eqn.outvars:
      producer[v] = i
  needed, stack, seen = set(), [out], set()
  while stack:
    v = stack.pop()
    if isinstance(v, core.Literal) or v in consts or v in seen:
      continue
    seen.add(v)
    if v in invars or v not in producer:
      return None
    i = producer[v]
    if jaxpr.eqns[i].effects:
      return None
    needed.add(i)
    stack.extend(jaxpr.eqns[i].invars)
  env = dict(consts)

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  for i in sorted(needed):
    eqn = jaxpr.eqns[i]
    outs = eqn.primitive.bind(*[read(v) for v in eqn.invars], **eqn.params)
    outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return np.asarray(read(out))


def _nfe_index(out_info) -> int | None:
  leaves = jax.tree_util.tree_flatten_with_path(out_info)[0]
  for i, (path, _) in enumerate(leaves):
    if path and getattr(path[-1], "name", None) == "nfe":
      return i
  return None


def profile_solve(traceable: Callable, *args) -> tuple[Any, SolveProfile]:
  """Trace a solve (`jax.jit(...)` of it) and read its `SolveProfile`.

  Args:
    traceable: a `jax.jit`-wrapped solve returning (x, info) with `info.nfe`
      (per image; batched (B,) under vmap).
    *args: its arguments (static ones included), as for `traceable.trace`.

  Returns:
    (traced, profile): `traced.lower().compile()` compiles the same program,
    so profiling costs one trace, no extra compilation. The network calls and
    the differentiation flag are seen only through a `with_progress` prior.
  """
  with _recording() as rec:
    traced = traceable.trace(*args)
  nfe = None
  idx = _nfe_index(traced.out_info)
  if idx is not None:
    try:
      val = constant_output(traced.jaxpr, idx)
    except Exception:  # noqa: BLE001 - an unexpected primitive: no total, not an error
      val = None
    if val is not None and val.size and np.all(val == val.flat[0]):
      nfe = int(val.flat[0])
  return traced, SolveProfile(nfe, tuple(dict.fromkeys(rec.calls)), rec.differentiated)


# ----------------------------------------------------------------- time and memory
def memory_needed(compiled, devices: int = 1) -> int:
  """Bytes a compiled program needs while it runs (all devices of this host).

  Arguments + outputs + temporaries - aliased bytes, from XLA's
  `memory_analysis()` of the compiled program (per device), times `devices`
  (host devices of one CPU share its memory). 0 when the backend reports none.
  """
  ma = compiled.memory_analysis()
  if ma is None:
    return 0
  per = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
         - ma.alias_size_in_bytes + ma.generated_code_size_in_bytes)
  return int(max(per, 0)) * int(devices)


def memory_available(device=None) -> int | None:
  """Bytes free for a new program on `device` (default the first device).

  Accelerators: `bytes_limit - bytes_in_use` of `device.memory_stats()`. CPU:
  `MemAvailable` of /proc/meminfo (free plus reclaimable cache), else free
  pages from `os.sysconf`. None when unknown.
  """
  device = jax.devices()[0] if device is None else device
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return None


def time_network(prior, shape: tuple, *, differentiated: bool = False, repeats: int = 1
                 ) -> float:
  """Seconds of one network call on an (n, H, W, C) batch, compiled beforehand.

  With `differentiated`, the call is forward plus backward (`jax.vjp` with
  respect to x), as in a solver that back-propagates through the network.
  The median of `repeats` timed runs after one untimed run.
  """
  inner = without_progress(prior)
  x = jnp.zeros(shape, jnp.float32)
  t = jnp.full((shape[0],), inner.schedule.num_timesteps // 2, jnp.int32)
  if differentiated:
    def f(p, x, t):
      out, vjp = jax.vjp(lambda x_: p.model(x_, t), x)
      return vjp(out)[0]
  else:
    def f(p, x, t):
      return p.model(x, t)
  fn = jax.jit(f).lower(inner, x, t).compile()
  jax.block_until_ready(fn(inner, x, t))
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(inner, x, t))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def format_seconds(s: float) -> str:
  """'42 s', '3.5 min', '2.1 h'."""
  if s < 90:
    return f"{s:.0f} s"
  if s < 90 * 60:
    return f"{s / 60:.1f} min"
  return f"{s / 3600:.1f} h"


def format_bytes(n: float) -> str:
  """'512 MB', '3.2 GB' (powers of 1024)."""
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if n < 1024 or unit == "TB":
      return f"{n:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TB"
