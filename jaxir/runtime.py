"""Settings jaxir applies to JAX when imported: CPU host devices, the compilation cache.

CPU devices (`cpu_settings`, applied at import by `apply_cpu_settings` unless JAX's
backends already run): on a CPU host jaxir makes one host device per usable core
(`jax_num_cpu_devices`), so `jaxir.parallel.batch_solver`, the command line, the
experiments and training split a batch over cores, which XLA's intra-op threads alone do
not use well. Measured on a 2-core AMD EPYC against PyTorch 2.13 on 2 threads, same weights
(`experiments/bench_unet.py`, 2026-11-30): U-Net forward of the shipped priors 1.22-1.34x
PyTorch's speed at batch 8 and 32 (0.57-0.68x on one device), a training step 1.4x faster
than on one device. Control:

* `JAXIR_CPU_SETTINGS=0` (or `off`) leaves JAX alone;
* a host device count already chosen (XLA_FLAGS' `--xla_force_host_platform_device_count`,
  `JAX_NUM_CPU_DEVICES`, or `jax_num_cpu_devices` set in code) is kept; on a GPU or TPU
  machine the count only touches the (unused) CPU backend.

One image on one device (`single_device_options`, used by `jaxir.parallel.batch_solver`
and the command line for a batch that runs on one device): XLA's YNNPACK convolutions keep
only about 1.4 of 2 cores busy there, and a batch-1 U-Net forward was slower than PyTorch's
(natural64 0.80x, 64x64 ADM 0.91x). Such programs are compiled with
`xla_cpu_experimental_ynn_fusion_type` set to `LIBRARY_FUSION_TYPE_REDUCE`, which puts the
convolutions on XLA's Eigen kernels: batch 1 then runs 1.2-1.5x PyTorch's speed (2-core AMD
EPYC, 2026-11-30: mnist32 1.52x, natural64 1.21x, ADM 1.18x) and a DCDP solve of one image
1.56x faster (5.28 -> 3.38 s), equal to XLA's default program to 4e-7.

The same option set in XLA_FLAGS (so also on programs that span devices) gave wrong,
run-to-run different results for a batch split over 2 host devices (jax 0.10.2,
2026-11-30: DCDP on natural64, two of four images off by up to 0.63; with XLA's default all
four equal the one-at-a-time solves to 4e-7), and in scratch runs that day one-device
programs with the option came back wrong (up to 0.39) while a program ran on the other
host device. On 2026-12-01 that last case did not reproduce: 18 one-image DCDP solves with
the option on device 0 while DCDP ran on device 1 (dispatched asynchronously or from two
threads, with the machine idle or loaded) all equal XLA's default to 5.4e-7. Until the
cause is known, jaxir applies the option only per program and only to one-device programs,
and runs those alone (`jaxir.parallel.one_device_call`: wait for the other host devices,
one process-wide lock, finished arrays). A process with a single host device (one usable
core, e.g. under `taskset -c 0`, and no device count of the user's) has no other device to
race with, so there `apply_cpu_settings` adds the option to XLA_FLAGS for every program
(`EIGEN_XLA_FLAG`): user code, sampling and training alike. One core of a 2-core Intel Xeon,
2026-12-03: shipped mnist32 forward 1.63x faster at batch 8, 1.22x at batch 100, equal at
batch 1; the training step 1.27-1.32x (docs/performance.md). Do not start JAX work on
another host device from another thread while such a solve runs. `JAXIR_EIGEN_CONV=0`
(or `JAXIR_CPU_SETTINGS=0`) turns the option off; `import jaxir` warns when XLA_FLAGS sets
it together with several host devices.

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
evicts the least recently used entries); without it JAX cannot bound the folder
and jaxir uses `xla-unbounded` beside it (`default_cache_dir` says why).
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
import re
import warnings
from pathlib import Path

import jax

__all__ = ["user_cache_dir", "default_cache_dir", "enable_compilation_cache", "compilation_cache_dir",
           "MIN_COMPILE_SECS", "MAX_CACHE_BYTES", "repair_access_times", "cpu_settings", "apply_cpu_settings",
           "UNSAFE_XLA_FLAG", "EIGEN_XLA_FLAG", "SINGLE_DEVICE_OPTIONS", "single_device_options"]

#: The XLA CPU option that gave wrong results across host devices (module docstring).
UNSAFE_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type"

#: What `apply_cpu_settings` adds to XLA_FLAGS in a process with one host device.
EIGEN_XLA_FLAG = f"{UNSAFE_XLA_FLAG}=reduce"

#: Per-program XLA options for a program on ONE CPU device (module docstring).
SINGLE_DEVICE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}

#: Programs compiling faster than this are not written to the cache (seconds).
MIN_COMPILE_SECS = 0.1
#: Size bound of the default cache folder (bytes; least recently used entries go first).
MAX_CACHE_BYTES = 2 * 2 ** 30


def _bounded() -> bool:
  """Whether JAX can bound the cache here (it needs the `filelock` package)."""
  try:
    import filelock  # noqa: F401
  except ImportError:
    return False
  return True


def user_cache_dir() -> Path:
  """jaxir's user cache folder, `$XDG_CACHE_HOME/jaxir` (or `~/.cache/jaxir`)."""
  base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
  return Path(base) / "jaxir"


def default_cache_dir() -> Path:
  """`$XDG_CACHE_HOME/jaxir/xla` (or `~/.cache/...`); `xla-unbounded` without `filelock`.

  Two folders, because a bounded cache needs an access-time file beside every entry and
  an unbounded writer (another environment without `filelock`) adds entries without one,
  after which JAX failed every write of the bounded cache with a warning.
  """
  return user_cache_dir() / ("xla" if _bounded() else "xla-unbounded")


def repair_access_times(folder: str | os.PathLike) -> int:
  """Give every cache entry in `folder` that lacks one an access-time file (oldest time).

  JAX's bounded cache reads `<key>-atime` for every `<key>-cache` before each write and
  fails the write if one is missing. Returns the number of files written.
  """
  folder, n = Path(folder), 0
  for entry in folder.glob("*-cache"):
    atime = folder / (entry.name[:-len("-cache")] + "-atime")
    if not atime.exists():
      try:
        atime.write_bytes((0).to_bytes(8, "little"))  # evicted first
        n += 1
      except OSError:
        pass
  return n


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
  if _bounded():  # JAX enforces the bound with `filelock`; without it, reads would warn
    repair_access_times(folder)
    jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
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


def cpu_settings(environ=None) -> dict:
  """What jaxir would set, given the environment.

  Returns:
    {"num_cpu_devices": the host device count to set, or None to leave JAX's choice}.
  """
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  cores = _usable_cores()
  user_count = ("xla_force_host_platform_device_count" in flags
                or environ.get("JAX_NUM_CPU_DEVICES"))
  return {"num_cpu_devices": cores if cores > 1 and not user_count else None}


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # private API moved: assume they may run
    return True


def _host_devices_in(flags: str) -> int:
  m = re.search(r"xla_force_host_platform_device_count=(\d+)", flags)
  return int(m.group(1)) if m else 1


def apply_cpu_settings(environ=os.environ) -> dict | None:
  """Apply `cpu_settings()` if JAX's backends have not started; returns what was set.

  None when nothing could or should be applied (backends running, or
  `JAXIR_CPU_SETTINGS=0`). Warns if XLA_FLAGS sets `UNSAFE_XLA_FLAG` (any value) with
  several host devices. With a single host device (one usable core and no count of the
  caller's), appends `EIGEN_XLA_FLAG` to `environ["XLA_FLAGS"]` unless XLA_FLAGS already
  sets that option or `JAXIR_EIGEN_CONV=0`; the result's "xla_flags" says whether it did.
  The variable stays set, so a child process inherits it: give a child that uses several
  host devices its own XLA_FLAGS.
  """
  if environ.get("JAXIR_CPU_SETTINGS", "").strip().lower() in ("0", "off", "false", "no"):
    return None
  if _backends_started():
    return None
  chosen = cpu_settings(environ)
  flags = environ.get("XLA_FLAGS", "")
  users_count = (jax.config.jax_num_cpu_devices > 0 or bool(environ.get("JAX_NUM_CPU_DEVICES"))
                 or "xla_force_host_platform_device_count" in flags)
  if jax.config.jax_num_cpu_devices > 0:  # the caller set a count in code: keep it
    chosen["num_cpu_devices"] = None
  if chosen["num_cpu_devices"] is not None:
    jax.config.update("jax_num_cpu_devices", chosen["num_cpu_devices"])
  devices = max(chosen["num_cpu_devices"] or 1, jax.config.jax_num_cpu_devices,
                _host_devices_in(flags))
  if UNSAFE_XLA_FLAG in flags and devices > 1:
    warnings.warn(f"XLA_FLAGS sets {UNSAFE_XLA_FLAG} with {devices} host devices: with "
                  "=reduce and =individual_dot XLA CPU gave wrong, run-to-run different "
                  "results for batches split over devices (jax 0.10.2). Drop the flag, or "
                  "use one device (JAXIR_CPU_SETTINGS=0).", RuntimeWarning, stacklevel=2)
  chosen["xla_flags"] = None
  one_device = _usable_cores() == 1 and not users_count
  if one_device and UNSAFE_XLA_FLAG not in flags and not _off(environ, "JAXIR_EIGEN_CONV"):
    environ["XLA_FLAGS"] = f"{flags} {EIGEN_XLA_FLAG}".strip()
    chosen["xla_flags"] = EIGEN_XLA_FLAG
  return chosen


def _off(environ, name: str) -> bool:
  return environ.get(name, "").strip().lower() in ("0", "off", "false", "no")


def single_device_options(device=None, environ=None) -> dict:
  """XLA compile options jaxir uses for a program that runs on one device.

  Args:
    device: the device the program runs on (default: JAX's first device).
    environ: mapping read for the switches (default: `os.environ`).

  Returns:
    `SINGLE_DEVICE_OPTIONS` on a CPU device, {} on other platforms, with
    `JAXIR_EIGEN_CONV=0` or `JAXIR_CPU_SETTINGS=0`, or when XLA_FLAGS already sets
    the option (the caller's choice is kept). Run a program compiled with them
    through `jaxir.parallel.one_device_call` (module docstring).
  """
  environ = os.environ if environ is None else environ
  if _off(environ, "JAXIR_EIGEN_CONV") or _off(environ, "JAXIR_CPU_SETTINGS"):
    return {}
  if UNSAFE_XLA_FLAG in environ.get("XLA_FLAGS", ""):
    return {}
  device = jax.devices()[0] if device is None else device
  return dict(SINGLE_DEVICE_OPTIONS) if device.platform == "cpu" else {}
