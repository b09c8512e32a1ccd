"""Timing helpers shared by the benchmark scripts in `experiments/` (not part of jaxir).

Every timing excludes compilation: a function is lowered and compiled once
(`compile_s` reports that), run `warmup` times, then run `repeats` times with
`jax.block_until_ready`; the median wall-clock time is the result.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

__all__ = ["Timing", "time_jax", "time_callable", "time_interleaved", "environment", "header_lines",
           "markdown_table", "is_h100", "verdict", "fill_zero_leaves", "write_json", "cpu_cores",
           "add_run_args", "resolve_run_args", "set_torch_threads", "guided_unet"]


@dataclasses.dataclass
class Timing:
  """Wall-clock times of one benchmarked call, in seconds.

  Attributes:
    median: median over the timed repeats.
    min: fastest repeat.
    times: every timed repeat.
    compile_s: lowering plus compilation (0 for eager code); when ahead-of-time
      lowering failed, the first call's time (compilation plus one run).
    aot_error: why ahead-of-time lowering failed (None when it worked).
  """
  median: float
  min: float
  times: list
  compile_s: float = 0.0
  aot_error: str | None = None

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def _summary(times, compile_s=0.0) -> Timing:
  return Timing(statistics.median(times), min(times), list(times), compile_s)


def time_jax(fn: Callable, *args, repeats: int = 10, warmup: int = 1) -> tuple[Timing, Any]:
  """Compile `fn(*args)` with `jax.jit` once, then time it.

  Compilation is ahead of time (`lower(...).compile()`); if lowering fails
  (some pytrees do not accept jax's placeholder leaves) the first ordinary
  call is the compilation, and `Timing.aot_error` says why.

  Args:
    fn: a jit-able function (closures hold static configuration; arrays and
      pytrees go in `args` so they are not baked in as constants).
    *args: its arguments (device arrays).
    repeats: timed runs (>= 1).
    warmup: untimed runs after compilation.

  Returns:
    (timing, output of the last run).
  """
  import jax
  out, aot_error = None, None
  t0 = time.perf_counter()
  try:
    compiled = jax.jit(fn).lower(*args).compile()
  except Exception as e:  # noqa: BLE001  e.g. a pytree whose __post_init__ rejects ArgInfo leaves
    # Fall back to an ordinary jit call; a real error in fn raises again here.
    aot_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    compiled = jax.jit(fn)
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
  compile_s = time.perf_counter() - t0
  for _ in range(max(warmup, 0)):
    out = jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  tm = _summary(times, compile_s)
  tm.aot_error = aot_error
  return tm, out


def time_callable(fn: Callable[[], Any], repeats: int = 10, warmup: int = 1) -> tuple[Timing, Any]:
  """Time a zero-argument callable that returns when its work is done (e.g. eager torch on CPU)."""
  out = None
  for _ in range(max(warmup, 0)):
    out = fn()
  times = []
  for _ in range(max(repeats, 1)):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return _summary(times), out


def time_interleaved(fns: Sequence[Callable[[], Any]], repeats: int = 10,
                     warmup: int = 1) -> list[tuple[Timing, Any]]:
  """Time zero-argument callables in alternating rounds (a, b, a, b, ...).

  For side-by-side comparisons on a shared or throttled machine: a slow spell
  then hits every callable alike instead of whichever ran during it, so the
  ratio of medians is steadier than with back-to-back blocks. Each callable
  must return when its work is done (block on jax results inside it).
  """
  outs = [None] * len(fns)
  for _ in range(max(warmup, 0)):
    outs = [fn() for fn in fns]
  times = [[] for _ in fns]
  for _ in range(max(repeats, 1)):
    for i, fn in enumerate(fns):
      t0 = time.perf_counter()
      outs[i] = fn()
      times[i].append(time.perf_counter() - t0)
  return [(_summary(ts), out) for ts, out in zip(times, outs)]


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def cpu_cores() -> int:
  """CPU cores this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def environment(device=None) -> dict:
  """What a result depends on: device, versions, XLA_FLAGS, CPU."""
  import jax
  dev = device if device is not None else jax.devices()[0]
  return {
      "backend": dev.platform,
      "device_kind": dev.device_kind,
      "device_count": len(jax.devices(dev.platform)),
      "jax": jax.__version__,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu": _cpu_model(),
      "cpu_cores": cpu_cores(),
      "python": platform.python_version(),
      "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
  }


def header_lines(env: dict) -> list[str]:
  """Markdown lines labelling a run (device, versions, XLA_FLAGS)."""
  return [
      f"- device: {env['device_kind']} ({env['backend']}, {env['device_count']} visible)",
      f"- jax {env['jax']}, python {env['python']}, host CPU: {env['cpu']} "
      f"({env['cpu_cores']} cores, load average {env['load_avg_1min']})",
      f"- XLA_FLAGS: {env['xla_flags'] or '(unset)'}",
      f"- date: {env['time']}",
  ]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; floats are printed as given (format them first)."""
  cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def is_h100(device_kind: str) -> bool:
  """True for an NVIDIA H100 (the device the issue's targets are set for)."""
  return "h100" in device_kind.lower()


def verdict(ok: bool | None, judged: bool, device_kind: str) -> str:
  """'PASS' / 'FAIL' when the target is judged here, else why it is not."""
  if ok is None:
    return "not measured"
  if not judged:
    return f"not checked on {device_kind}"
  return "PASS" if ok else "FAIL"


def fill_zero_leaves(params, key, std: float = 0.02):
  """Replace all-zero parameter leaves (biases of a fresh init) by N(0, std^2) draws.

  Random-weight benchmarks then exercise every parameter, so comparisons
  between implementations also check the biases.
  """
  import jax
  import jax.numpy as jnp
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  new = [std * jax.random.normal(k, l.shape, l.dtype) if not bool(jnp.any(l != 0)) else l
         for k, l in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, new)


def write_json(path: str, obj: Any) -> None:
  """Write `obj` as indented JSON (creating parent folders)."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)


def add_run_args(ap, warmup_help: str = "untimed runs after compiling (default 2)") -> None:
  """Add the options every PyTorch-comparing benchmark shares to an argparse parser.

  --threads, --repeats, --warmup, --seed and --json; `--quick` is each script's
  own (its help says what it shrinks) and `resolve_run_args` applies it.
  """
  ap.add_argument("--threads", type=int, default=None,
                  help="torch CPU threads (default: the cores this process may use, as JAX)")
  ap.add_argument("--repeats", type=int, default=None, help="timed runs each (default 10)")
  ap.add_argument("--warmup", type=int, default=2, help=warmup_help)
  ap.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs")
  ap.add_argument("--json", default=None, help="also write the results to this JSON file")


def resolve_run_args(args):
  """Fill `--repeats` (2 with --quick, else 10) and cap `--warmup` at 1 with --quick."""
  if args.repeats is None:
    args.repeats = 2 if args.quick else 10
  if args.quick:
    args.warmup = min(args.warmup, 1)
  return args


def set_torch_threads(threads: int | None) -> int:
  """Give torch `threads` CPU threads (None: as many as JAX's CPU client uses); returns it."""
  import torch
  threads = threads or cpu_cores()
  torch.set_num_threads(threads)
  return threads


def guided_unet(model_kwargs: dict, state_dict, channels: int = 3):
  """guided-diffusion's `UNetModel` from `create_model(**model_kwargs)`, loaded strictly.

  Args:
    model_kwargs: `create_model`'s keyword arguments (an `in_channels` entry is
      dropped: `create_model` fixes 3 channels).
    state_dict: parameter name -> array (NumPy or JAX), PyTorch naming.
    channels: image channels; for c != 3 the first and last convolutions are
      replaced by c-channel `Conv2d`s, as `UNetModel(in_channels=c)` builds them.

  Returns:
    The torch module (in its default training mode; call `.eval()` for inference).
  """
  import warnings

  import numpy as np
  import torch
  with warnings.catch_warnings():  # guided-diffusion's torch.cuda.amp decorators
    warnings.simplefilter("ignore", FutureWarning)
    from guided_diffusion.script_util import create_model
  net = create_model(**{k: v for k, v in model_kwargs.items() if k != "in_channels"})
  if channels != 3:
    ch = net.input_blocks[0][0].out_channels
    net.input_blocks[0][0] = torch.nn.Conv2d(channels, ch, 3, padding=1)
    net.out[2] = torch.nn.Conv2d(ch, channels, 3, padding=1)
  net.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in
                       state_dict.items()}, strict=True)
  return net
