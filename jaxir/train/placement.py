"""Where the training step runs on a CPU host: split over every host device, or on one.

"split": the batch is divided over all host devices (data parallel, XLA's default
convolutions). "one": the whole batch on the first device, compiled with XLA's
Eigen convolutions (`jaxir.runtime.single_device_options`; the other host devices
stay idle and XLA's intra-op threads use every core). Which is faster depends on
the CPU and the model: on a 2-core Intel Xeon "one" was 1.07x (mnist32_wide, batch
32) and 1.14x (natural64, batch 16) faster, on a 2-core AMD EPYC "split" was 1.13x
faster (mnist32, batch 32; docs/performance.md). So "auto" times a few steps of
each and keeps the faster.

  placement = choose_placement(config, model, train_data)   # "auto"
  state = ...; step = model_train_step(config, model, placement.mesh)
"""
from __future__ import annotations

import time
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.errors import ConfigError
from jaxir.parallel import data_mesh
from jaxir.runtime import single_device_options
from jaxir.train.batches import make_batch_sampler
from jaxir.train.configs import TrainConfig
from jaxir.train.state import create_train_state, step_keys
from jaxir.train.step import model_train_step

__all__ = ["PLACEMENTS", "AUTO_MIN_STEPS", "Placement", "placement_mesh", "choose_placement"]

PLACEMENTS = ("auto", "split", "one")
# `train_and_evaluate` times the two placements only for runs of at least this many
# steps (the timing compiles both steps: 30-40 s for the shipped configs on 2 cores).
AUTO_MIN_STEPS = 300


class Placement(NamedTuple):
  """The chosen placement.

  Attributes:
    name: "split" or "one".
    mesh: its device mesh.
    ms: fastest of the timed steps of each placement, milliseconds ({} when not timed).
    seconds: wall-clock seconds spent choosing (compiling and timing).
  """
  name: str
  mesh: Mesh
  ms: dict
  seconds: float


def placement_mesh(name: str, devices=None) -> Mesh:
  """The mesh of placement "split" (all `devices`) or "one" (the first)."""
  devices = list(jax.devices() if devices is None else devices)
  if name == "split":
    return data_mesh(devices)
  if name == "one":
    return data_mesh(devices[:1])
  raise ConfigError(f"unknown placement {name!r}; choose 'split' or 'one' ('auto' chooses).")


def choose_placement(config: TrainConfig, model, train_data, placement: str = "auto", *,
                     devices=None, steps: int = 4, key=None) -> Placement:
  """Pick where `config`'s train step runs; "auto" times both placements.

  "auto" is "split" off the CPU, with a single device, or when the Eigen options are
  switched off (`JAXIR_EIGEN_CONV=0`, `JAXIR_CPU_SETTINGS=0`, or XLA_FLAGS sets the
  option); "one" when the batch does not divide over the devices; "split" when
  `steps` is 0; otherwise both steps are compiled and `steps` steps of each timed,
  interleaved (the fastest counts), on a throwaway state initialized from `key` and
  batches drawn from `train_data`.

  Args:
    config: the run's config.
    model: the Flax module (as `build_model(config)`).
    train_data: the training images on the host (as `load_data(config)[0]`).
    placement: "auto", "split" or "one".
    devices: candidate devices (default: `jax.devices()`).
    steps: timed steps per placement ("auto"; 0: do not time).
    key: key of the throwaway state (default `jax.random.key(config.seed)`).
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"unknown placement {placement!r}; choose one of {PLACEMENTS}.")
  devices = list(jax.devices() if devices is None else devices)
  if placement != "auto":
    return Placement(placement, placement_mesh(placement, devices), {}, 0.0)
  if len(devices) == 1 or devices[0].platform != "cpu" or not single_device_options(devices[0]):
    return Placement("split", placement_mesh("split", devices), {}, 0.0)
  if config.batch_size % len(devices):
    return Placement("one", placement_mesh("one", devices), {}, 0.0)
  if steps <= 0:
    return Placement("split", placement_mesh("split", devices), {}, 0.0)
  t0 = time.perf_counter()
  key = jax.random.key(config.seed) if key is None else key
  runs = {name: _Run(config, model, train_data, placement_mesh(name, devices), key)
          for name in ("split", "one")}
  for run in runs.values():
    run()  # compiles
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      times[name].append(run())
  # The fastest step, not the median: a burst of other work on the host inflates
  # single steps, and only the undisturbed speed says which placement is better.
  ms = {name: 1e3 * float(np.min(v)) for name, v in times.items()}
  best = min(ms, key=ms.get)
  mesh = runs[best].mesh
  del runs
  return Placement(best, mesh, ms, time.perf_counter() - t0)


class _Run:
  """A throwaway training loop on one mesh; each call runs one step, returns its seconds."""

  def __init__(self, config, model, train_data, mesh, key):
    repl = NamedSharding(mesh, P())
    self.config, self.mesh, self.i = config, mesh, 0
    self.state = jax.jit(lambda k: create_train_state(config, model, k),
                         out_shardings=repl)(key)
    self.data = jax.device_put(train_data, repl)
    self.sampler = make_batch_sampler(config, mesh)
    self.step = model_train_step(config, model, mesh)

  def __call__(self) -> float:
    t0 = time.perf_counter()
    k_data, k_step = step_keys(self.state.rng, self.i)
    batch = self.sampler(self.data, k_data, self.config.batch_size)
    self.state, metrics = self.step(self.state, batch, k_step)
    jax.block_until_ready((self.state, metrics))
    self.i += 1
    return time.perf_counter() - t0
