"""`jaxir bench`: time registered solvers from an installed jaxir, no clone needed.

The full benchmarks live outside the package (`experiments/bench_unet.py`:
the U-Net against PyTorch on the same weights; `experiments/bench_solvers.py`:
the issue's H100 targets) and need a clone, torch and guided-diffusion. This
module is the part that runs anywhere: for each registered solver x task x
batch size it compiles the same batched program `jaxir restore` runs
(`jaxir.cli.BatchRunner`), times it, and reports

* s / image and images / s (median of `repeats` runs after compilation),
* NFE (the solver's `info.nfe`) and the compile time,
* overhead = batch time / (network calls x time of one network call on one
  device's share of the batch): what is not the network (data consistency,
  loops). A call is a forward, or forward + backward (`jax.vjp`) when the
  solver back-propagates through the network (`SolveProfile.differentiated`).

The default prior is "random": the architecture of the shipped mnist32 prior
(3.16M parameters, 32x32, one channel) with random weights, since the time does
not depend on the weights.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError

__all__ = ["RANDOM_ARCH", "bench_prior", "run", "markdown", "environment",
           "full_scripts_note"]

#: guided-diffusion create_model arguments of the shipped mnist32 prior (checkpoints/mnist32.json).
RANDOM_ARCH = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,4",
                   attention_resolutions="8", num_heads=4, num_head_channels=-1,
                   use_scale_shift_norm=True, resblock_updown=True, learn_sigma=False,
                   in_channels=1)


def bench_prior(name: str = "random", checkpoint: str | None = None, size: int | None = None):
  """(prior, (H, W, C)) to time: "random" (`RANDOM_ARCH`), or a loadable prior."""
  from jaxir.cli import load_cli_prior, prior_sizes
  from jaxir.models.adm import ADMUNet, adm_config
  from jaxir.priors import model_prior
  from jaxir.tasks import prior_channels
  if name == "random":
    model = ADMUNet(adm_config(**RANDOM_ARCH))
    side = RANDOM_ARCH["image_size"] if size is None else int(size)
    params = model.init(jax.random.key(0),
                        jnp.zeros((1, side, side, RANDOM_ARCH["in_channels"])),
                        jnp.zeros((1,), jnp.int32))
    prior = model_prior(model, params)
  else:
    prior = load_cli_prior(name, checkpoint)
  _, native, _ = prior_sizes(prior)
  side = size if size is not None else (native[0] if native else 64)
  return prior, (int(side), int(side), prior_channels(prior))


def _median_time(fn, repeats: int) -> float:
  times = []
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def run(prior: str = "random", checkpoint: str | None = None, size: int | None = None,
        solvers=("dcdp", "dcdp-tweedie"), tasks=("sr4",), batches=(1, 4), repeats: int = 3,
        overrides=()) -> list[dict]:
  """Time each solver x task x batch; returns one dict per row (see the module doc).

  `overrides` (`KEY=VALUE`) go to every solver whose config has the field.
  """
  from jaxir.cli import BatchRunner, check_image_size
  from jaxir.progress import time_network, with_progress
  from jaxir.solvers.registry import get_solver, parse_overrides
  from jaxir.tasks import TASKS, simulate, stack_operators, task_names
  specs = [get_solver(s) for s in solvers]
  for t in tasks:
    if t not in TASKS:
      raise ConfigError(f"unknown task {t!r}; choose from {task_names()}.")
  p, shape = bench_prior(prior, checkpoint, size)
  check_image_size(shape, p, prior)
  changes = parse_overrides(overrides)
  fields = {s.name: {f.name for f in dataclasses.fields(s.config_cls)} for s in specs}
  unused = [k for k in changes if not any(k in f for f in fields.values())]
  if unused:
    raise ConfigError(f"--set {unused}: no solver among {list(solvers)} has such a field.")
  rows = []
  for spec in specs:
    own = {k: v for k, v in changes.items() if k in fields[spec.name]}  # each solver its own
    for task in tasks:
      cfg = spec.config(task, prior=None if prior == "random" else prior, overrides=own)
      runner = BatchRunner(spec.fn, cfg)
      for b in batches:
        key = jax.random.key(b)
        xs = jax.random.uniform(key, (b,) + shape, minval=-1.0, maxval=1.0)
        ops, ys = zip(*[simulate(task, jax.random.fold_in(key, i), xs[i]) for i in range(b)])
        spec.check_operator(ops[0])
        keys = jax.random.split(jax.random.fold_in(key, 7), b)
        batched, bprior, _, devices = runner.batch(keys, jnp.stack(ys), stack_operators(ops), p)
        _, profile = runner.trace(batched, with_progress(bprior))  # trace only: the profile
        t0 = time.perf_counter()
        compiled = runner.trace(batched, bprior)[0].lower().compile()
        compile_s = time.perf_counter() - t0
        out = compiled(*batched, bprior)
        nfe = int(np.asarray(out[1].nfe)[0])
        t_batch = _median_time(lambda c=compiled, a=batched, q=bprior: c(*a, q)[0], repeats)
        share = math.ceil(len(batched[1]) / devices)
        t_call = time_network(p, (profile.rows * share,) + shape,
                              differentiated=profile.differentiated, repeats=repeats)
        calls = math.ceil(nfe / profile.rows)
        rows.append(dict(solver=spec.name, task=task, batch=b, size=shape[0], nfe=nfe,
                         compile_s=round(compile_s, 3), s_per_image=t_batch / b,
                         images_per_s=b / t_batch, network_call_s=t_call,
                         network_call="fwd+bwd" if profile.differentiated else "fwd",
                         overhead=t_batch / (calls * t_call), devices=devices))
  return rows


def markdown(rows) -> str:
  """The rows as a markdown table."""
  head = ("| solver | task | batch | size | NFE | s/image | images/s | network call | overhead "
          "| compile s |")
  lines = [head, "|" + "---|" * 10]
  for r in rows:
    lines.append(f"| {r['solver']} | {r['task']} | {r['batch']} | {r['size']} | {r['nfe']} | "
                 f"{r['s_per_image']:.3f} | {r['images_per_s']:.2f} | "
                 f"{r['network_call_s'] * 1e3:.1f} ms {r['network_call']} | "
                 f"{r['overhead']:.2f} | {r['compile_s']:.1f} |")
  return "\n".join(lines)


def environment() -> dict:
  """Device, versions and XLA_FLAGS, for the JSON record."""
  return dict(device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform,
              device_count=jax.device_count(), jax=jax.__version__,
              python=platform.python_version(), xla_flags=os.environ.get("XLA_FLAGS", ""),
              cpu_count=os.cpu_count())


def full_scripts_note() -> str:
  """Where the full benchmark scripts are (a clone's experiments/ folder)."""
  exp = Path(__file__).resolve().parents[1] / "experiments"
  if (exp / "bench_solvers.py").is_file():
    return (f"Full benchmarks (PyTorch comparison, H100 targets): python {exp}/bench_unet.py, "
            f"python {exp}/bench_solvers.py")
  return ("Full benchmarks (PyTorch comparison, H100 targets): experiments/bench_unet.py and "
          "experiments/bench_solvers.py in a clone of the jaxir repository.")
