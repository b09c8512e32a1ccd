"""Settings jaxir applies to JAX when imported: CPU devices and flags, the compilation cache.

CPU settings (`cpu_settings`, applied at import by `apply_cpu_settings` unless JAX's
backends already run). On a CPU host jaxir makes one host device per usable core
(`jax_num_cpu_devices`), so `jaxir.parallel.batch_solver`, the command line and the
experiments split a batch over cores, and for solving adds
`--xla_cpu_experimental_ynn_fusion_type=reduce` to XLA_FLAGS (YNNPACK for reductions
only, convolutions on XLA's Eigen kernels, which keep every core busy). Measured on a
2-core AMD EPYC against PyTorch 2.13 on 2 threads, same weights (`experiments/bench_unet.py
--shipped`, 2026-11-30): with both settings the U-Net forward of both shipped priors and of a
64x64 ADM is at least PyTorch's speed at batch 1, 8 and 32 (0.99-1.40x); with XLA's defaults
on one device it is 0.57-0.79x at batch 8 and 32. Training (`experiments/train_prior.py`)
uses `use="train"`: the host devices without the flag, which made the mnist32 step 6%
slower. Control:

* `JAXIR_CPU_SETTINGS=0` (or `off`) leaves JAX and XLA_FLAGS alone; `=train` or `=solve`
  picks the use (default solve);
* a host device count already set (XLA_FLAGS' `--xla_force_host_platform_device_count`, or
  `jax_num_cpu_devices` / `JAX_NUM_CPU_DEVICES`) and a YNN fusion type already in XLA_FLAGS
  are kept; on a GPU or TPU machine the flags only touch the (unused) CPU backend.

A first `jaxir demo` spends most of its time compiling; with JAX's persistent
compilation cache the compiled programs are stored on disk and a second run
(and the test suite) loads them instead. jaxir turns it on at import, in a user
cache folder, unless

* the environment sets `JAXIR_COMPILATION_CACHE=0` (off), or a folder in
  `JAXIR_COMPILATION_CACHE` (used instead of the default), or
* JAX already has a cache folder (`jax_compilation_cache_dir`, e.g. from
  `JAX_COMPILATION_CACHE_DIR`): the caller's choice is kept.

The default folder is `$XDG_CACHE_HOME/jaxir/xla` (`~/.cache/jaxir/xla`),
kept below `MAX_CACHE_BYTES` where the `filelock` package is installed (JAX
evicts the least recently used entries; without it JAX cannot bound the folder).
Programs that took at least `MIN_COMPILE_SECS` to compile are stored: writing an
entry costs time too, and caching every program (about 2,300 in `tests/test_cli.py`)
made a first run twice as slow, while 0.1 s keeps the few that matter (a second
`jaxir demo` on one core of a 2-core AMD EPYC: 13.5 s first run, 6.3 s second;
2026-11-30).

Programs with host callbacks are never cached by JAX: the command line's
progress bar is one, so it shows the bar only on long solves
(`jaxir.cli.PROGRESS_MIN_CALLS`).

References:
  JAX docs, "Persistent compilation cache".
"""
from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["default_cache_dir", "enable_compilation_cache", "compilation_cache_dir",
           "MIN_COMPILE_SECS", "MAX_CACHE_BYTES", "cpu_settings", "apply_cpu_settings",
           "SOLVE_XLA_FLAG"]

#: The XLA CPU flag jaxir adds for solving (not for training); see the module docstring.
SOLVE_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=reduce"
_USES = ("solve", "train")

#: Programs compiling faster than this are not written to the cache (seconds).
MIN_COMPILE_SECS = 0.1
#: Size bound of the default cache folder (bytes; least recently used entries go first).
MAX_CACHE_BYTES = 2 * 2 ** 30


def default_cache_dir() -> Path:
  """`$XDG_CACHE_HOME/jaxir/xla`, or `~/.cache/jaxir/xla`."""
  base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return Path(base) / "jaxir" / "xla"


def compilation_cache_dir() -> str | None:
  """The folder JAX's persistent compilation cache uses now (None: off)."""
  return jax.config.jax_compilation_cache_dir or None


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_secs: float = MIN_COMPILE_SECS) -> str:
  """Turn JAX's persistent compilation cache on in `path` (default `default_cache_dir()`).

  Returns the folder used.
  """
  folder = Path(path) if path is not None else default_cache_dir()
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  try:  # JAX enforces the bound with `filelock`; without it, reads would warn: leave unbounded
    import filelock  # noqa: F401
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
  except ImportError:
    pass
  return str(folder)


def _apply_defaults(environ=os.environ) -> str | None:
  """The import-time rule described in the module docstring."""
  setting = environ.get("JAXIR_COMPILATION_CACHE", "").strip()
  if setting.lower() in ("0", "off", "false", "no"):
    return None
  if compilation_cache_dir():
    return compilation_cache_dir()
  try:
    return enable_compilation_cache(setting or None)
  except OSError:  # read-only home etc.: run without the cache rather than fail
    return None


def _usable_cores() -> int:
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu_settings(use: str = "solve", environ=None) -> dict:
  """What jaxir would set for `use` ("solve" or "train"), given the environment.

  Returns:
    {"num_cpu_devices": int or None (leave JAX's count), "xla_flags": the new XLA_FLAGS
    string or None (leave it)}.
  """
  if use not in _USES:
    raise ValueError(f"use must be one of {_USES}, got {use!r}")
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  cores = _usable_cores()
  devices = None
  user_count = ("xla_force_host_platform_device_count" in flags
                or environ.get("JAX_NUM_CPU_DEVICES"))
  if cores > 1 and not user_count:
    devices = cores
  new_flags = None
  if use == "solve" and "ynn_fusion_type" not in flags:
    new_flags = f"{flags} {SOLVE_XLA_FLAG}".strip()
  return {"num_cpu_devices": devices, "xla_flags": new_flags}


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # private API moved: assume they may run
    return True


def apply_cpu_settings(use: str | None = None, environ=os.environ) -> dict | None:
  """Apply `cpu_settings(use)` if JAX's backends have not started; returns what was set.

  `use` None reads `JAXIR_CPU_SETTINGS` (solve | train | 0/off; default solve). Returns
  None when nothing could or should be applied (backends running, or switched off).
  """
  if use is None:
    use = environ.get("JAXIR_CPU_SETTINGS", "").strip().lower() or "solve"
    if use in ("0", "off", "false", "no"):
      return None
  if _backends_started():
    return None
  chosen = cpu_settings(use, environ)
  if jax.config.jax_num_cpu_devices > 0:  # the caller set a count in code: keep it
    chosen["num_cpu_devices"] = None
  if chosen["num_cpu_devices"] is not None:
    jax.config.update("jax_num_cpu_devices", chosen["num_cpu_devices"])
  if chosen["xla_flags"] is not None:
    environ["XLA_FLAGS"] = chosen["xla_flags"]
  return chosen
