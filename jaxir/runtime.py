"""Settings jaxir applies to JAX when imported: the persistent compilation cache.

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
           "MIN_COMPILE_SECS", "MAX_CACHE_BYTES"]

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
