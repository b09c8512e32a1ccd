"""One resumable experiment runner: a TOML file per table, results written as they come.

    jaxir experiment experiments/configs/dcdp_mnist32.toml            # or
    python experiments/run.py experiments/configs/dcdp_mnist32.toml --set images.count=4

A config names the prior, the image set, the tasks (operator and noise), the
solvers (registry solvers of `jaxir.solvers.registry` and the classical rows of
`jaxir.classical`, with presets and overrides), seeds and batch size:

    title = "DCDP vs DPS, mnist32"
    out = "experiments/results/dcdp_mnist32"   # default output folder (--out overrides)
    seeds = [0]                  # every image is restored once per seed
    batch = 8                    # images per solver call (rounded up to the device count)
    metrics = ["psnr", "ssim", "lpips"]
    figure_images = 4            # rows of each task's figure
    distributed = false          # true: jax.distributed.initialize() first (multi-host)

    [prior]
    name = "mnist32"             # a shipped prior, or a named public config with checkpoint
    # checkpoint = "ffhq_10m.pt" # a public checkpoint file (converted when loaded)
    # analytic = "smooth_gaussian"   # instead of name: an exact Gaussian prior (tests)
    # image_shape = [32, 32, 1]; length = 3.0; std = 0.5; mean = 0.0

    [images]
    source = "heldout"           # heldout | train | folder | prior
    count = 8
    # dataset = "mnist32"        # heldout/train: mnist32 | natural64 (default: the prior's)
    # size = 64                  # natural64 patch side / folder images resized to it
    # path = "data/ffhq256"      # folder

    [[tasks]]
    name = "sr4"                 # a jaxir.tasks task or a BIRD protocol task (BIRD_TASKS)
    # sigma_y = 0.05             # noise std on [-1, 1] (default: the task's)
    # label = "sr4"              # the row name (to run one task at two noise levels)

    [[solvers]]
    name = "dcdp"                # registry solver or classical method (measurement: y itself,
                                 # bicubic, wiener, tv, bm3d)
    # label = "dcdp"             # the row name
    # preset = "sr4"             # a named preset (default: the solver's preset for the task)
    # overrides = { K = 5 }      # config fields, every task
    # task_overrides = { sr4 = { K = 8 } }
    # tasks = ["sr4"]            # only these task labels
    # grid = { mu = [0, 0.1] }   # one row per combination, labelled "dcdp[mu=0]", ...

Output folder:

* `results.jsonl`: one line per (task, solver, image, seed), appended and
  flushed (fsync) as soon as its batch is done: metrics, NFE, seconds, the
  solver's per-image info scalars, the L1 error of an estimated kernel against
  the true one (`kernel_error`, BIRD's blind tasks), and the hash of the
  setting that made it.
* `restored/<task>/<solver>/<image>_s<seed>.png` and
  `inputs/<task>/<image>_s<seed>_measurement.png` (and `_truth.png`): the
  pictures of the figures (8-bit).
* `manifest.json`: the setup (prior, image set, metrics) and each (task, solver)
  row's resolved config with their hashes; `config.json`: the effective config.
* `table.md`, `table.csv` (mean and standard deviation over images and seeds of
  PSNR, SSIM, LPIPS, the kernel error where there is one; NFE; seconds per
  image; images per second) and
  `figure_<task>.png` (rows: images; columns: measurement, each method,
  ground truth).

Resuming: rerunning the same command reads `results.jsonl` and skips every
(task, solver, image, seed) already there; a line cut off by a kill is dropped.
More images, seeds, tasks or solvers extend a folder. A changed setup (prior,
its weights' fingerprint `weights_id`, image set, metrics) or a row whose resolved
config changed is refused with the difference named: give the row a new `label`, or
use a new folder. (Folders written before 2026-12-01 carry no fingerprint and are
taken as made with the current weights; their row hashes, made without it, are
upgraded in place on the first resume.)

Keys: the measurement of image i in task T with seed s uses the key
fold_in(fold_in(fold_in(key(s), crc32(T)), i), 0) (operator draws and noise;
the same for every solver), the solver fold_in(..., 1), so a result does not
depend on the batch size, the device count or which other rows run.

Devices: each batch is padded to a multiple of the visible devices and split
over a 1-D mesh (`jaxir.parallel`); the prior is replicated once. On one host
with CPUs only, `import jaxir` made one host device per core (`jaxir.runtime`). A
row whose partitioned program fails in XLA (seen on CPU host devices: XLA's FFT
rejects the layout of some vmapped FFTs once split) finishes on one device; the
table names such rows. On several hosts (GPU/TPU), start the same command on
every host with `distributed = true` (or `--distributed`);
`jax.distributed.initialize()` then finds the cluster (SLURM, Open MPI,
Kubernetes, Cloud TPU) or takes `--coordinator HOST:PORT --num-processes N
--process-id I`:

    # on host 0 and on host 1 (of two):
    jaxir experiment CONFIG --distributed --coordinator host0:1234 --num-processes 2 \
        --process-id 0
    jaxir experiment CONFIG --distributed --coordinator host0:1234 --num-processes 2 \
        --process-id 1

Every process builds the same inputs (process 0's list of finished results is
broadcast), each batch is split over all hosts' devices, the results are
gathered, and process 0 alone writes the output folder (on its host). The
multi-host path is written to JAX's multi-controller rules but has only been
run as one process here; the single-process multi-device path is tested with
CPU host devices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import sys
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from jaxir.errors import ConfigError

__all__ = ["ProtocolTask", "BIRD_TASKS", "PriorSpec", "ImageSpec", "TaskSpec", "SolverEntry",
           "ExperimentConfig", "parse_config", "load_config", "apply_sets", "load_prior_spec",
           "load_images", "simulate_task", "Row", "plan_rows", "resolve_config", "ResultStore",
           "run_experiment", "summarize", "write_report", "progress_printer", "main"]

METRICS = ("psnr", "ssim", "lpips")
SOURCES = ("heldout", "train", "folder", "prior")
DATASETS = ("mnist32", "natural64")
ANALYTIC = ("smooth_gaussian",)
_IMAGE_KEY = 1234  # key of the natural64 patches and analytic samples (as quality_table.py)


# --------------------------------------------------------------- BIRD protocol tasks

@dataclasses.dataclass(frozen=True)
class ProtocolTask:
  """A task of BIRD's protocol: its degradations and its noise (`bird_noise`).

  Attributes:
    name: registry name.
    description: one line.
    like: the `jaxir.tasks` task whose presets other solvers and classical rows use.
    bird_preset: the `BIRD_PRESETS` entry BIRD uses (the official config).
    sigma_y: typical noise std on [-1, 1] (BIRD's noise grows with brightness),
      given to noise-aware presets.
  """
  name: str
  description: str
  like: str
  bird_preset: str
  sigma_y: float


#: BIRD's tasks (hamadichihaoui/BIRD configs; `experiments/bird_table.py`): kernels of
#: k = 41/256 of the side (at least 7), blur / SR / inpainting noise u (1 + 0.096 g) + 0.01 n
#: on [0, 1] (std ~0.1 on [-1, 1]), denoising 0.32 / 0.03 (std ~0.3).
BIRD_TASKS: dict[str, ProtocolTask] = {t.name: t for t in [
    ProtocolTask("blind_gauss", "blind Gaussian deblur (std k/6), MLP kernel estimate",
                 "gaussian_deblur", "blind_deblur", 0.1),
    ProtocolTask("blind_motion", "blind motion deblur (intensity 0.5), MLP kernel estimate",
                 "motion_deblur", "blind_deblur", 0.1),
    ProtocolTask("known_gauss", "Gaussian deblur (std k/6) with the kernel known, zero padding",
                 "gaussian_deblur", "blind_deblur", 0.1),
    ProtocolTask("blind_sr4", "blind x4 SR: unknown Gaussian kernel (std k/8), decimation",
                 "sr4", "blind_deblur", 0.1),
    ProtocolTask("bird_sr8", "x8 SR by 8x8 average pooling", "sr8", "sr8", 0.1),
    ProtocolTask("bird_denoise", "denoising of speckle and white noise", "denoise", "denoise",
                 0.3),
    ProtocolTask("bird_inpaint", "inpainting of a centred 80/256 box", "box_inpaint", "inpaint",
                 0.1),
]}


def _odd(v) -> int:
  return max(1, int(round(v)) // 2 * 2 + 1)


def _bird_ksize(shape) -> int:
  return _odd(max(7.0, 41 * min(shape[:2]) / 256))


def true_kernel(name: str, key, shape):
  """(k, k) the true blur kernel of task `name` for an image of `shape` simulated with `key`
  (as `simulate_task` draws it), or None for tasks without one."""
  import jax
  from jaxir.operators.kernels import gaussian_kernel, motion_kernel
  ksize = _bird_ksize(shape)
  if name == "blind_motion":
    return motion_kernel(jax.random.split(key, 3)[0], ksize, 0.5)
  if name in ("blind_gauss", "known_gauss"):
    return gaussian_kernel(ksize, ksize / 6.0)
  if name == "blind_sr4":
    return gaussian_kernel(ksize, ksize / 8.0)
  return None


def _bird_task(name: str, key, x):
  """(degradation, y) of a BIRD protocol task for one image x (H, W, C)."""
  import jax
  import jax.numpy as jnp
  from jaxir.operators.blind import BlindBlur, BlindSR, BlurDecimate, NonBlind, mlp_kernel
  from jaxir.operators.blur import Blur
  from jaxir.operators.denoise import Identity
  from jaxir.operators.inpaint import Inpaint
  from jaxir.operators.noise import bird_noise
  from jaxir.operators.superres import AvgPoolSR
  shape = tuple(x.shape)
  ksize = _bird_ksize(shape)
  kt = true_kernel(name, key, shape)
  _, k_code, k_noise = jax.random.split(key, 3)
  if name in ("blind_gauss", "blind_motion", "known_gauss"):
    y = bird_noise(k_noise, Blur(shape, kt, "zeros").A(x))
    if name == "known_gauss":
      return NonBlind(Blur(shape, kt, "zeros")), y
    return BlindBlur(shape, mlp_kernel(k_code, ksize)), y
  if name == "blind_sr4":
    return BlindSR(shape, mlp_kernel(k_code, ksize), 4), \
        bird_noise(k_noise, BlurDecimate(shape, kt, 4).A(x))
  if name == "bird_sr8":
    op = AvgPoolSR(shape, scale=8)
    return NonBlind(op), bird_noise(k_noise, op.A(x))
  if name == "bird_denoise":  # official utils.generate_noisy_image, clipped
    return NonBlind(Identity(shape)), jnp.clip(bird_noise(k_noise, x, speckle=0.32, sigma=0.03),
                                                -1.0, 1.0)
  if name == "bird_inpaint":  # official generate_noisy_image_and_mask: a centred 80/256 box
    side = min(shape[:2])
    b = _odd(80 * side / 256) - 1
    mask = np.ones(shape[:2], np.float32)
    lo, hi = (side - b) // 2, (side + b) // 2
    mask[lo:hi, lo:hi] = 0.0
    op = Inpaint(shape, mask)
    return NonBlind(op), op.A(bird_noise(k_noise, x))
  raise ConfigError(f"unknown BIRD task {name!r}; choose from {sorted(BIRD_TASKS)}.")


def simulate_task(name: str, key, x, sigma_y: float | None = None):
  """(operator or degradation, y) of task `name` (`jaxir.tasks` or `BIRD_TASKS`) for one image."""
  from jaxir.tasks import TASKS, simulate
  if name in TASKS:
    return simulate(name, key, x, sigma_y)
  return _bird_task(name, key, x)


def _all_tasks() -> list[str]:
  from jaxir.tasks import TASKS
  return sorted(TASKS) + sorted(BIRD_TASKS)


# ---------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class PriorSpec:
  """The prior of an experiment (`[prior]`).

  Attributes:
    name: a shipped prior ("mnist32", "natural64") or a named public config
      ("ffhq256_dps", "imagenet256_uncond", "celebahq256_ddpm") with `checkpoint`.
    checkpoint: a checkpoint file or converted folder (public weights), or None.
    arch: "adm" or "ddpm" for a checkpoint given by upstream arguments (rare).
    analytic: instead of `name`, an exact analytic prior: "smooth_gaussian"
      (a Gaussian field, covariance std^2 exp(-d^2 / (2 length^2)) between
      pixels d apart, channels independent; tests and toy tables).
    image_shape: (H, W, C) of the analytic prior.
    length: correlation length of the analytic prior, pixels.
    std: standard deviation of the analytic prior per pixel.
    mean: its mean value.
  """
  name: str | None = None
  checkpoint: str | None = None
  arch: str | None = None
  analytic: str | None = None
  image_shape: tuple | None = None
  length: float = 3.0
  std: float = 0.5
  mean: float = 0.0


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """The image set (`[images]`).

  Attributes:
    source: "heldout" (never trained on: the mnist32 held-out digits or
      natural64 patches of the held-out photographs), "train" (training images,
      for tuning), "folder" (every image file in `path`, sorted by name) or
      "prior" (samples of the analytic prior).
    count: images used (at most).
    dataset: for heldout/train, "mnist32" or "natural64" (default: the prior's name).
    size: natural64 patch side (default 64), or the side folder images are
      centre-cropped and resized to (default: as they are).
    path: the folder for source "folder".
  """
  source: str = "heldout"
  count: int = 8
  dataset: str | None = None
  size: int | None = None
  path: str | None = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task (`[[tasks]]`): name, noise and the row label."""
  name: str
  label: str
  sigma_y: float | None = None


@dataclasses.dataclass(frozen=True)
class SolverEntry:
  """One method row (`[[solvers]]`), after grid expansion.

  Attributes:
    name: a registry solver or a classical method.
    label: the row name (unique).
    preset: a named preset of the solver (used as is, then overrides), or None
      for the solver's preset for each task.
    overrides: ((field, value), ...) applied for every task.
    task_overrides: ((task label, ((field, value), ...)), ...).
    tasks: task labels this row runs on (None: all).
  """
  name: str
  label: str
  preset: str | None = None
  overrides: tuple = ()
  task_overrides: tuple = ()
  tasks: tuple | None = None

  def overrides_for(self, task_label: str) -> dict:
    """The overrides for one task: `overrides`, then that task's `task_overrides`."""
    out = dict(self.overrides)
    out.update(dict(dict(self.task_overrides).get(task_label, ())))
    return out


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """A parsed, validated experiment config (see the module docstring for the TOML keys)."""
  title: str
  prior: PriorSpec
  images: ImageSpec
  tasks: tuple
  solvers: tuple
  seeds: tuple = (0,)
  batch: int = 8
  out: str | None = None
  distributed: bool = False
  metrics: tuple = METRICS
  figure_images: int = 4

  def to_dict(self) -> dict:
    """A JSON-able dict of the config (as written to `config.json`)."""
    return json.loads(json.dumps(dataclasses.asdict(self), default=list))


_TOP = {"title", "out", "seeds", "batch", "distributed", "metrics", "figure_images", "prior",
        "images", "tasks", "solvers"}
_PRIOR = {f.name for f in dataclasses.fields(PriorSpec)}
_IMAGES = {f.name for f in dataclasses.fields(ImageSpec)}
_TASK = {"name", "label", "sigma_y"}
_SOLVER = {"name", "label", "preset", "overrides", "task_overrides", "tasks", "grid"}


def _check_keys(table, allowed, where):
  if not isinstance(table, dict):
    raise ConfigError(f"{where} must be a table (TOML [section] / {{...}}); got "
                      f"{type(table).__name__}.")
  bad = sorted(set(table) - set(allowed))
  if bad:
    raise ConfigError(f"{where}: unknown key {bad[0]!r}; allowed keys: {sorted(allowed)}.")


def _typed(value, types, where, what):
  types = types if isinstance(types, tuple) else (types,)
  if isinstance(value, bool) and bool not in types:
    raise ConfigError(f"{where} must be {what}; got {value!r}.")
  if not isinstance(value, types):
    raise ConfigError(f"{where} must be {what}; got {value!r}.")
  return value


def _opt(table, key, types, where, what, default=None):
  v = table.get(key, default)
  return v if v is None or v is default else _typed(v, types, f"{where}.{key}", what)


def _solver_names() -> list[str]:
  from jaxir import classical
  from jaxir.solvers.registry import solver_names
  return solver_names() + classical.method_names()


def _spec(name: str):
  """The registry `SolverSpec` or classical `ClassicalSpec` of a method name."""
  from jaxir import classical
  from jaxir.solvers.registry import SOLVERS
  if name in SOLVERS:
    return SOLVERS[name]
  if name in classical.CLASSICAL:
    return classical.CLASSICAL[name]
  raise ConfigError(f"unknown solver {name!r}; choose from {_solver_names()}.")


def _scalar_items(table, where) -> tuple:
  _typed(table, dict, where, "a table of FIELD = value")
  for k, v in table.items():
    if isinstance(v, (dict, list)):
      raise ConfigError(f"{where}.{k} must be a number, string or boolean; got {v!r}.")
  return tuple(sorted(table.items()))


def _parse_prior(t) -> PriorSpec:
  _check_keys(t, _PRIOR, "[prior]")
  w = "prior"
  name = _opt(t, "name", str, w, "a prior name")
  analytic = _opt(t, "analytic", str, w, "one of " + str(list(ANALYTIC)))
  if (name is None) == (analytic is None):
    raise ConfigError("[prior] needs exactly one of name (a shipped prior or named public "
                      f"config) or analytic ({list(ANALYTIC)}).")
  if analytic is not None and analytic not in ANALYTIC:
    raise ConfigError(f"prior.analytic = {analytic!r}; allowed values: {list(ANALYTIC)}.")
  shape = t.get("image_shape")
  if analytic is not None:
    if not (isinstance(shape, list) and len(shape) == 3 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
      raise ConfigError(f"prior.image_shape must be [H, W, C] (positive integers) for an "
                        f"analytic prior; got {shape!r}.")
    shape = tuple(shape)
  elif shape is not None:
    raise ConfigError("prior.image_shape is only for an analytic prior; a network prior "
                      "takes the images' shape.")
  num = (int, float)
  spec = PriorSpec(name=name, checkpoint=_opt(t, "checkpoint", str, w, "a path"),
                   arch=_opt(t, "arch", str, w, "'adm' or 'ddpm'"), analytic=analytic,
                   image_shape=shape,
                   length=float(_opt(t, "length", num, w, "a number > 0", 3.0)),
                   std=float(_opt(t, "std", num, w, "a number > 0", 0.5)),
                   mean=float(_opt(t, "mean", num, w, "a number", 0.0)))
  if spec.arch not in (None, "adm", "ddpm"):
    raise ConfigError(f"prior.arch = {spec.arch!r}; allowed values: ['adm', 'ddpm'].")
  if not (spec.length > 0 and spec.std > 0):
    raise ConfigError(f"prior.length and prior.std must be > 0; got {spec.length}, {spec.std}.")
  if spec.checkpoint == "":
    spec = dataclasses.replace(spec, checkpoint=None)
  return spec


def _parse_images(t, prior: PriorSpec) -> ImageSpec:
  _check_keys(t, _IMAGES, "[images]")
  w = "images"
  source = _opt(t, "source", str, w, f"one of {list(SOURCES)}", "heldout")
  if source not in SOURCES:
    raise ConfigError(f"images.source = {source!r}; allowed values: {list(SOURCES)}.")
  count = _opt(t, "count", int, w, "a positive integer", 8)
  if count < 1:
    raise ConfigError(f"images.count must be >= 1; got {count}.")
  size = _opt(t, "size", int, w, "a positive integer (pixels)")
  if size is not None and size < 8:
    raise ConfigError(f"images.size must be >= 8 pixels; got {size}.")
  dataset = _opt(t, "dataset", str, w, f"one of {list(DATASETS)}")
  path = _opt(t, "path", str, w, "a folder path")
  if source in ("heldout", "train"):
    dataset = dataset or next((d for d in DATASETS if (prior.name or "").startswith(d)), None)
    if dataset not in DATASETS:
      raise ConfigError(f"images.source = {source!r} needs images.dataset, one of "
                        f"{list(DATASETS)} (it defaults to the prior's name only for the "
                        "shipped priors); or use source = 'folder' with a path.")
    if dataset == "mnist32" and size not in (None, 32):
      raise ConfigError(f"images.size = {size}: the mnist32 digits are 32x32; remove size.")
  if source == "folder" and not path:
    raise ConfigError("images.source = 'folder' needs images.path (a folder of image files).")
  if source == "prior" and prior.analytic is None:
    raise ConfigError("images.source = 'prior' draws samples of an analytic prior; set "
                      "prior.analytic, or use heldout / train / folder images.")
  return ImageSpec(source=source, count=count, dataset=dataset, size=size, path=path)


def _parse_tasks(items) -> tuple:
  if not isinstance(items, list) or not items:
    raise ConfigError("the config needs at least one [[tasks]] entry (name = one of "
                      f"{_all_tasks()}).")
  out, seen = [], set()
  for k, t in enumerate(items):
    where = f"tasks[{k}]"
    _check_keys(t, _TASK, where)
    name = t.get("name")
    if name not in _all_tasks():
      raise ConfigError(f"{where}.name = {name!r}; allowed values: {_all_tasks()}.")
    label = _opt(t, "label", str, where, "a string", name)
    sigma = _opt(t, "sigma_y", (int, float), where, "a number >= 0")
    if sigma is not None and sigma < 0:
      raise ConfigError(f"{where}.sigma_y must be >= 0; got {sigma}.")
    if sigma is not None and name in BIRD_TASKS:
      raise ConfigError(f"{where}.sigma_y: BIRD task {name!r} uses BIRD's own noise model; "
                        "remove sigma_y.")
    if label in seen:
      raise ConfigError(f"{where}: task label {label!r} appears twice; give one a label.")
    seen.add(label)
    out.append(TaskSpec(name=name, label=label, sigma_y=None if sigma is None else float(sigma)))
  return tuple(out)


def _parse_solvers(items, task_labels) -> tuple:
  if not isinstance(items, list) or not items:
    raise ConfigError(f"the config needs at least one [[solvers]] entry (name = one of "
                      f"{_solver_names()}).")
  out, seen = [], set()
  for k, t in enumerate(items):
    where = f"solvers[{k}]"
    _check_keys(t, _SOLVER, where)
    name = t.get("name")
    if name not in _solver_names():
      raise ConfigError(f"{where}.name = {name!r}; allowed values: {_solver_names()}.")
    spec = _spec(name)
    label = _opt(t, "label", str, where, "a string", name)
    preset = _opt(t, "preset", str, where, "a preset name")
    if preset is not None and preset not in spec.presets:
      raise ConfigError(f"{where}.preset = {preset!r}; {name} presets: {sorted(spec.presets)}.")
    overrides = _scalar_items(t.get("overrides", {}), f"{where}.overrides")
    tov = t.get("task_overrides", {})
    _typed(tov, dict, f"{where}.task_overrides", "a table of task label = {FIELD = value}")
    for lab in tov:
      if lab not in task_labels:
        raise ConfigError(f"{where}.task_overrides: {lab!r} is not a task label; labels: "
                          f"{sorted(task_labels)}.")
    task_over = tuple(sorted((lab, _scalar_items(v, f"{where}.task_overrides.{lab}"))
                             for lab, v in tov.items()))
    tasks = t.get("tasks")
    if tasks is not None:
      if not isinstance(tasks, list) or any(x not in task_labels for x in tasks):
        raise ConfigError(f"{where}.tasks must list task labels from {sorted(task_labels)}; "
                          f"got {tasks!r}.")
      tasks = tuple(tasks)
    grid = t.get("grid", {})
    _typed(grid, dict, f"{where}.grid", "a table of FIELD = [values]")
    for g, vals in grid.items():
      if not isinstance(vals, list) or not vals:
        raise ConfigError(f"{where}.grid.{g} must be a non-empty list of values; got {vals!r}.")
    combos = list(itertools.product(*grid.values())) if grid else [()]
    for combo in combos:
      extra = dict(zip(grid, combo))
      lab = label if not extra else label + "[" + ",".join(f"{a}={b}" for a, b in
                                                           extra.items()) + "]"
      if lab in seen:
        raise ConfigError(f"{where}: row label {lab!r} appears twice; give one a label.")
      seen.add(lab)
      over = tuple(sorted({**dict(overrides), **extra}.items()))
      entry = SolverEntry(name=name, label=lab, preset=preset, overrides=over,
                          task_overrides=task_over, tasks=tasks)
      # Field names and values are checked now, on the first task it runs.
      first = next(tk for tk in task_labels if tasks is None or tk in tasks)
      _check_fields(spec, entry.overrides_for(first), where)
      out.append(entry)
  return tuple(out)


def _check_fields(spec, overrides: dict, where: str):
  fields = {f.name for f in dataclasses.fields(spec.config_cls)}
  for k in overrides:
    if k not in fields:
      raise ConfigError(f"{where}: {spec.config_cls.__name__} has no field {k!r}; fields: "
                        f"{sorted(fields)}.")


def parse_config(raw: dict) -> ExperimentConfig:
  """Validate a config dict (as read from TOML); `ConfigError` names the bad key."""
  _check_keys(raw, _TOP, "config")
  for need in ("prior", "images", "tasks", "solvers"):
    if need not in raw:
      raise ConfigError(f"the config has no {need!r} section; see `jaxir.experiment` for the "
                        "format.")
  prior = _parse_prior(raw["prior"])
  images = _parse_images(raw["images"], prior)
  tasks = _parse_tasks(raw["tasks"])
  solvers = _parse_solvers(raw["solvers"], [t.label for t in tasks])
  seeds = raw.get("seeds", [0])
  if not (isinstance(seeds, list) and seeds and all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)) \
      or len(set(seeds)) != len(seeds):
    raise ConfigError(f"seeds must be a non-empty list of distinct integers >= 0; got {seeds!r}.")
  batch = _typed(raw.get("batch", 8), int, "batch", "a positive integer")
  if batch < 1:
    raise ConfigError(f"batch must be >= 1; got {batch}.")
  metrics = raw.get("metrics", list(METRICS))
  if not (isinstance(metrics, list) and metrics and all(m in METRICS for m in metrics)):
    raise ConfigError(f"metrics must be a non-empty list from {list(METRICS)}; got {metrics!r}.")
  fig = _typed(raw.get("figure_images", 4), int, "figure_images", "an integer >= 0")
  if fig < 0:
    raise ConfigError(f"figure_images must be >= 0; got {fig}.")
  return ExperimentConfig(
      title=_typed(raw.get("title", "experiment"), str, "title", "a string"),
      prior=prior, images=images, tasks=tasks, solvers=solvers, seeds=tuple(seeds),
      batch=batch, out=_opt(raw, "out", str, "config", "a folder path"),
      distributed=_typed(raw.get("distributed", False), bool, "distributed", "true or false"),
      metrics=tuple(m for m in METRICS if m in metrics), figure_images=fig)


def _parse_value(text: str):
  try:
    return tomllib.loads(f"v = {text}")["v"]
  except tomllib.TOMLDecodeError:
    return text


def apply_sets(raw: dict, sets) -> dict:
  """Apply `KEY=VALUE` settings to a raw config dict (a copy).

  KEY is dotted: "batch", "images.count", "prior.checkpoint",
  "solvers.<label>.overrides.K", "tasks.<label>.sigma_y" (an entry of
  tasks/solvers is found by its label, else its name). VALUE is a TOML value
  (3, 0.1, true, [0, 1], "text"); a bare word is a string.
  """
  raw = json.loads(json.dumps(raw))
  for item in sets or ():
    if "=" not in item:
      raise ConfigError(f"--set takes KEY=VALUE; got {item!r}.")
    key, value = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
      raise ConfigError(f"--set {item!r}: empty key.")
    node = raw
    i = 0
    while i < len(parts) - 1:
      p = parts[i]
      if p in ("tasks", "solvers") and node is raw:
        entries = raw.get(p, [])
        match = [e for e in entries if e.get("label", e.get("name")) == parts[i + 1]]
        if not match:
          have = [e.get("label", e.get("name")) for e in entries]
          raise ConfigError(f"--set {item!r}: no {p} entry labelled {parts[i + 1]!r}; "
                            f"entries: {have}.")
        node = match[0]
        i += 2
        continue
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a table.")
      i += 1
    if i != len(parts) - 1:
      raise ConfigError(f"--set {item!r}: name a key inside the {parts[-1]} entry.")
    node[parts[-1]] = _parse_value(value.strip())
  return raw


def load_config(path, sets=()) -> ExperimentConfig:
  """Read and validate a TOML experiment config, with optional `KEY=VALUE` settings."""
  path = Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {str(path)!r} does not exist; see experiments/configs/.")
  try:
    raw = tomllib.loads(path.read_text())
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(f"{path}: not valid TOML ({e}).") from e
  return parse_config(apply_sets(raw, sets))


# ------------------------------------------------------------------- prior and images

def load_prior_spec(spec: PriorSpec):
  """The `Prior` of a `PriorSpec` (a network loaded by `load_prior`, or an analytic one)."""
  if spec.analytic == "smooth_gaussian":
    from jaxir.priors.analytic import gaussian_prior
    H, W, C = spec.image_shape
    # The squared-exponential kernel is separable, K = K_H kron K_W (channels independent:
    # kron I_C, pixels in (H, W, C) row-major order), so its eigenbasis is the Kronecker
    # product of two small ones; a 1e-4 floor keeps it well conditioned.
    def axis(n):
      d = np.arange(n, dtype=np.float64)
      lam, v = np.linalg.eigh(np.exp(-(d[:, None] - d[None]) ** 2 / (2 * spec.length ** 2)))
      return np.maximum(lam, 0.0), v
    (lh, vh), (lw, vw) = axis(H), axis(W)
    lam = spec.std ** 2 * np.kron(np.kron(lh, lw), np.ones(C)) + 1e-4
    vec = np.kron(np.kron(vh, vw), np.eye(C))
    return gaussian_prior(np.full((H, W, C), spec.mean, np.float32), eigvals=lam, eigvecs=vec)
  from jaxir.priors import load_prior
  return load_prior(spec.name, spec.checkpoint, arch=spec.arch)


def _natural_patches(split: str, count: int, side: int, seed: int) -> np.ndarray:
  import jax
  from jaxir.train import data
  bank = data.image_bank(data.natural_images(split))
  return np.stack([np.asarray(data.sample_patches(jax.random.fold_in(jax.random.key(seed), i),
                                                  bank, 1, side, 256, augment=False)[0])
                   for i in range(count)])


def load_images(spec: ImageSpec, prior=None, channels: int = 3):
  """The image set: ((N, H, W, C) float32 in [-1, 1], N image ids).

  Image i is the same whatever `count` (per-index draws), so a folder grows.
  mnist32 held-out: the first `count` of `MNIST_HOLDOUT`; mnist32 train: a fixed
  permutation (RandomState(1)) of the training digits; natural64: patch i drawn
  with key fold_in(key(1234), i) (held-out) or fold_in(key(4321), i) (train)
  from the held-out / training photographs, no augmentation; a folder: its
  image files sorted by name; "prior": analytic samples with fold_in(key(1234), i).
  """
  from jaxir import io
  if spec.source == "prior":
    import jax
    from jaxir.priors.analytic import sample_prior
    xs = np.stack([np.asarray(sample_prior(jax.random.fold_in(jax.random.key(_IMAGE_KEY), i),
                                           prior, 1)[0]) for i in range(spec.count)])
    return np.clip(xs, -1.0, 1.0).astype(np.float32), [f"sample{i:04d}" for i in range(spec.count)]
  if spec.source == "folder":
    files = io.list_images(spec.path)[:spec.count]
    xs = io.read_folder(spec.path, spec.size, channels=channels, limit=spec.count)
    return xs, [f.stem for f in files]
  from jaxir.train import data
  if spec.dataset == "mnist32":
    if spec.source == "heldout":
      xs = data.mnist32("holdout", channels=channels)[:spec.count]
      ids = [f"holdout{int(i):04d}" for i in data.MNIST_HOLDOUT[:len(xs)]]
    else:
      train = data.mnist32("train", channels=channels)
      idx = np.random.RandomState(1).permutation(len(train))[:spec.count]
      xs, ids = train[idx], [f"train{int(i):04d}" for i in idx]
    return np.asarray(xs, np.float32), ids
  side = spec.size or 64
  split, seed = ("holdout", _IMAGE_KEY) if spec.source == "heldout" else ("train", 4321)
  xs = io.to_channels(_natural_patches(split, spec.count, side, seed), channels)
  return np.asarray(xs, np.float32), [f"{spec.source}{i:04d}" for i in range(spec.count)]


# ----------------------------------------------------------------------------- plan

class Row(NamedTuple):
  """One (task, method) row of the table, resolved.

  Attributes:
    task: the `TaskSpec`.
    solver: the `SolverEntry`.
    spec: its registry `SolverSpec` or classical `ClassicalSpec`.
    config: the resolved config.
    hash: hash of the setup, the task and the config (results carry it).
  """
  task: TaskSpec
  solver: SolverEntry
  spec: Any
  config: Any
  hash: str


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_id(path: Path) -> str:
  """sha256 (16 hex digits) of a file's size and first 64 MiB: weights change, it changes."""
  h = hashlib.sha256(str(path.stat().st_size).encode())
  with open(path, "rb") as f:
    h.update(f.read(64 << 20))
  return h.hexdigest()[:16]


def weights_id(prior: PriorSpec) -> str | None:
  """A fingerprint of the weights a prior spec loads (None: analytic, or not found).

  A shipped prior's `.safetensors` in `jaxir.models.checkpoint_dir()` (so
  `JAXIR_CHECKPOINTS` counts), or the `checkpoint` file or folder (its files'
  fingerprints, by name). Part of an experiment's setup, so a results folder made with
  other weights under the same prior name is refused instead of silently resumed.
  """
  from jaxir.models import SHIPPED, checkpoint_dir
  if prior.analytic is not None:
    return None
  if prior.checkpoint is not None:
    path = Path(prior.checkpoint).expanduser()
    if path.is_dir():
      files = sorted(q for q in path.rglob("*") if q.is_file())
      return _hash({str(q.relative_to(path)): _file_id(q) for q in files})
    return _file_id(path) if path.is_file() else None
  if prior.name in SHIPPED:
    path = checkpoint_dir() / f"{prior.name}.safetensors"
    return _file_id(path) if path.is_file() else None
  return None


def _setup(config: ExperimentConfig) -> dict:
  images = dataclasses.asdict(config.images)
  images.pop("count")
  prior = dict(dataclasses.asdict(config.prior), weights=weights_id(config.prior))
  return json.loads(json.dumps({"prior": prior, "images": images,
                               "metrics": list(config.metrics)}))  # as read back from JSON


def _like(task: TaskSpec):
  """(registry task whose presets apply, noise std) for a task."""
  from jaxir.tasks import TASKS
  if task.name in TASKS:
    return task.name, (TASKS[task.name].sigma_y if task.sigma_y is None else task.sigma_y)
  bt = BIRD_TASKS[task.name]
  return bt.like, bt.sigma_y


def resolve_config(spec, entry: SolverEntry, task: TaskSpec, prior_name: str | None):
  """The config a row runs: a named preset, BIRD's for its tasks, else the task's preset."""
  from jaxir.solvers.registry import apply_overrides
  over = entry.overrides_for(task.label)
  if entry.preset is not None:
    return apply_overrides(spec.presets[entry.preset], over)
  if entry.name == "bird" and task.name in BIRD_TASKS:
    return apply_overrides(spec.presets[BIRD_TASKS[task.name].bird_preset], over)
  like, sigma = _like(task)
  return spec.config(like, sigma_y=sigma, prior=prior_name, overrides=over)


def _applies(entry: SolverEntry, spec, operator) -> str | None:
  """None if the method runs on this operator, else why not."""
  from jaxir import classical
  from jaxir.operators.blind import BlindDegradation, NonBlind
  if isinstance(spec, classical.ClassicalSpec):
    if not spec.available():
      return f"optional package `{spec.needs}` not installed: pip install {spec.needs}"
    return None if spec.supports(operator) else f"does not apply to {_op_name(operator)}"
  if isinstance(operator, BlindDegradation) and entry.name != "bird":
    if not isinstance(operator, NonBlind):
      return "a blind task (only bird estimates the degradation)"
    operator = operator.op
  return None if spec.supports(operator) else f"needs {spec.requires} operators, not " \
      f"{_op_name(operator)}"


def _op_name(op) -> str:
  from jaxir.operators.blind import NonBlind
  return type(op.op if isinstance(op, NonBlind) else op).__name__


def _for_solver(entry: SolverEntry, spec, operator):
  """The operator a method receives: `NonBlind` unwrapped for all but bird and classical."""
  from jaxir import classical
  from jaxir.operators.blind import NonBlind
  if isinstance(operator, NonBlind) and entry.name != "bird" \
      and not isinstance(spec, classical.ClassicalSpec):
    return operator.op
  return operator


def plan_rows(config: ExperimentConfig, image_shape) -> tuple[list, list]:
  """(rows, skipped): the (task, method) rows that run; (task, method, reason) of the rest."""
  import jax
  import jax.numpy as jnp
  setup_hash = _hash(_setup(config))
  prior_name = config.prior.name
  rows, skipped = [], []
  from jaxir.tasks import TASKS, make_operator
  for task in config.tasks:
    if task.name in TASKS:
      op = make_operator(task.name, jax.random.key(0), tuple(image_shape))
    else:
      op, _ = _bird_task(task.name, jax.random.key(0), jnp.zeros(image_shape, jnp.float32))
    for entry in config.solvers:
      if entry.tasks is not None and task.label not in entry.tasks:
        continue
      spec = _spec(entry.name)
      why = _applies(entry, spec, op)
      if why is not None:
        skipped.append((task.label, entry.label, why))
        continue
      cfg = resolve_config(spec, entry, task, prior_name)
      h = _hash({"setup": setup_hash, "task": dataclasses.asdict(task), "solver": entry.name,
                 "config": repr(cfg)})
      rows.append(Row(task, entry, spec, cfg, h))
  return rows, skipped


# ----------------------------------------------------------------------------- store

def _key(task: str, solver: str, image: str, seed: int) -> str:
  return f"{task}|{solver}|{image}|{seed}"


class ResultStore:
  """The output folder: manifest, `results.jsonl`, pictures (process 0 writes).

  Args:
    out: the folder.
    writer: whether this process writes (False on processes other than 0).
  """

  def __init__(self, out, writer: bool = True):
    self.out = Path(out)
    self.writer = writer
    self.results = self.out / "results.jsonl"
    self.manifest = self.out / "manifest.json"
    self.records: dict[str, dict] = {}
    self.dropped_partial = False
    self._upgraded = False

  def read(self) -> dict:
    """Read `results.jsonl` into `records` (a cut-off last line is dropped and cut away)."""
    self.records = {}
    if not self.results.exists():
      return self.records
    data = self.results.read_bytes()
    good = 0
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
      last = k == len(lines) - 1
      if not line.strip():
        good += len(line) + (0 if last else 1)
        continue
      try:
        rec = json.loads(line)
        if last:
          raise ValueError("no newline: cut off")
      except ValueError:
        if last or all(not rest.strip() for rest in lines[k + 1:]):
          self.dropped_partial = True
          break
        raise ConfigError(f"{self.results}: line {k + 1} is not valid JSON (a corrupted file); "
                          "delete that line or use a new folder.") from None
      self.records[_key(rec["task"], rec["solver"], rec["image"], rec["seed"])] = rec
      good += len(line) + 1
    if self.dropped_partial and self.writer:
      with open(self.results, "r+b") as f:
        f.truncate(good)
    return self.records

  def check(self, setup: dict, rows: list):
    """Refuse a folder made with another setup or with other configs for the same rows."""
    pairs = {f"{r.task.label}/{r.solver.label}": {
        "hash": r.hash, "task": dataclasses.asdict(r.task), "solver": r.solver.name,
        "config": repr(r.config)} for r in rows}
    old = None
    if self.manifest.exists():
      old = json.loads(self.manifest.read_text())
    elif self.results.exists() and self.results.stat().st_size:
      raise ConfigError(f"{self.out} holds results.jsonl but no manifest.json, so its setting "
                        "is unknown; use a new --out folder.")
    if old is not None:
      if "weights" not in old["setup"]["prior"]:  # folders written before weights were recorded
        old["setup"]["prior"]["weights"] = setup["prior"]["weights"]
        self._upgrade(old, setup, pairs)
      if old["setup"] != setup:
        a, b = _flat(old["setup"]), _flat(setup)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(f"{self.out} holds results of another setup (changed: "
                          f"{', '.join(diff) or 'setup'}); results must not mix. Use a new "
                          "--out folder (or delete this one).")
      for name, p in pairs.items():
        before = old["pairs"].get(name)
        if before is not None and before["hash"] != p["hash"]:
          raise ConfigError(f"{self.out}: row {name} was run with another config "
                            f"({before['config']}) than now ({p['config']}); results must not "
                            "mix. Give the solver a new label, or use a new --out folder.")
      merged = dict(old["pairs"])
    else:
      merged = {}
    for rec in self.records.values():
      p = pairs.get(f"{rec['task']}/{rec['solver']}")
      if p is not None and rec.get("row_hash") != p["hash"]:
        raise ConfigError(f"{self.results}: a result of {rec['task']}/{rec['solver']} carries "
                          "another config hash than its row; use a new --out folder.")
    merged.update(pairs)
    if self.writer:
      if self._upgraded:  # only once every check passed
        self._rewrite_results()
        self._upgraded = False
      self.out.mkdir(parents=True, exist_ok=True)
      _write_json(self.manifest, {"version": 1, "setup": setup, "setup_hash": _hash(setup),
                                  "pairs": merged})

  def _upgrade(self, old: dict, setup: dict, pairs: dict):
    """A folder from before the weights' fingerprint: its rows were hashed without it. Map
    those hashes to the current ones (same task, solver and config) in the old manifest and
    in the records, and rewrite `results.jsonl` with them (atomically), so that the folder
    resumes as if made now, with the current weights (as documented)."""
    legacy = json.loads(json.dumps(setup))
    legacy["prior"].pop("weights", None)
    lh = _hash(legacy)
    remap = {_hash({"setup": lh, "task": p["task"], "solver": p["solver"],
                    "config": p["config"]}): p["hash"] for p in pairs.values()}
    for before in old["pairs"].values():
      before["hash"] = remap.get(before["hash"], before["hash"])
    for rec in self.records.values():
      if rec.get("row_hash") in remap:
        rec["row_hash"] = remap[rec["row_hash"]]
        self._upgraded = True

  def _rewrite_results(self):
    """Write `records` back to `results.jsonl` atomically (after `_upgrade`)."""
    tmp = self.results.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
      f.write("".join(json.dumps(r) + "\n" for r in self.records.values()))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.results)

  def append(self, records: list):
    """Append result lines and flush them to disk."""
    for rec in records:
      self.records[_key(rec["task"], rec["solver"], rec["image"], rec["seed"])] = rec
    if not self.writer:
      return
    with open(self.results, "a") as f:
      for rec in records:
        f.write(json.dumps(rec) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def restored_path(self, task, solver, image, seed) -> Path:
    return self.out / "restored" / _safe(task) / _safe(solver) / f"{_safe(image)}_s{seed}.png"

  def input_path(self, task, image, seed, kind) -> Path:
    return self.out / "inputs" / _safe(task) / f"{_safe(image)}_s{seed}_{kind}.png"


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _safe(name: str) -> str:
  return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in str(name))


def _write_json(path: Path, obj):
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, default=str))
  os.replace(tmp, path)


def _write_png(path: Path, x):
  from jaxir import io
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.stem + ".tmp.png")
  io.write_image(tmp, np.nan_to_num(np.asarray(x, np.float32)))
  os.replace(tmp, path)


# ------------------------------------------------------------------------------ run

def _broadcast_json(obj):
  """Process 0's value of a JSON-able object, on every process (multi-host)."""
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  n = int(multihost_utils.broadcast_one_to_all(np.asarray(data.size, np.int64)))
  buf = np.zeros(n, np.uint8)
  buf[:min(n, data.size)] = data[:n]
  buf = multihost_utils.broadcast_one_to_all(buf)
  return json.loads(bytes(np.asarray(buf, np.uint8)).decode())


def _image_key(seed: int, task_label: str, index: int, purpose: int):
  """fold_in(fold_in(fold_in(key(seed), crc32(task)), index), purpose): 0 measurement, 1 solver."""
  import jax
  k = jax.random.fold_in(jax.random.key(seed), zlib.crc32(task_label.encode()))
  return jax.random.fold_in(jax.random.fold_in(k, index), purpose)


def _gather(tree):
  import jax
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def _info_scalars(info, j: int) -> dict:
  """Per-image scalar fields of a solver's info NamedTuple, JSON-able."""
  out = {}
  fields = info._asdict() if hasattr(info, "_asdict") else {}
  for name, a in fields.items():
    if a is None:
      continue
    a = np.asarray(a)
    if a.ndim != 1 or np.iscomplexobj(a):
      continue
    v = a[j]
    out[name] = bool(v) if a.dtype == bool else (int(v) if np.issubdtype(a.dtype, np.integer)
                                                 else float(v))
  return out


def _image_metrics(names, x_hat, x_true, lp) -> dict:
  import jax.numpy as jnp
  from jaxir import io, metrics
  u, v = io.to_unit(jnp.asarray(x_hat)), io.to_unit(jnp.asarray(x_true))
  out = {}
  if "psnr" in names:
    out["psnr"] = np.asarray(metrics.psnr(u, v))
  if "ssim" in names:
    out["ssim"] = np.asarray(metrics.ssim(u, v))
  if "lpips" in names:
    out["lpips"] = np.asarray(metrics.lpips_apply(lp, jnp.asarray(x_hat), jnp.asarray(x_true)))
  return out


def run_experiment(config: ExperimentConfig, out=None, *,
                   progress: Callable[[dict], None] | None = None) -> list[dict]:
  """Run (or resume) an experiment; returns the table rows (`summarize`).

  Args:
    config: the parsed config.
    out: output folder (default `config.out`).
    progress: called with an event dict after each step ("start", "row",
      "compiled", "batch", "done"); the library prints nothing.
  """
  import jax
  import jax.numpy as jnp
  from jaxir import io, metrics
  from jaxir.operators.blind import NonBlind
  from jaxir.parallel import data_mesh, pad_batch, replicate, shard_batch
  from jaxir.tasks import prior_channels, stack_operators

  out = out or config.out
  if not out:
    raise ConfigError("no output folder: set out = '...' in the config or pass --out DIR.")
  emit = progress or (lambda event: None)
  writer = jax.process_index() == 0
  store = ResultStore(out, writer)
  prior = load_prior_spec(config.prior)
  xs, ids = load_images(config.images, prior, prior_channels(prior))
  if "lpips" in config.metrics and min(xs.shape[1:3]) < 31:
    raise ConfigError(f"LPIPS needs images of at least 31x31 pixels; these are "
                      f"{xs.shape[1]}x{xs.shape[2]}. Remove 'lpips' from metrics.")
  rows, skipped = plan_rows(config, xs.shape[1:])
  store.read()
  if jax.process_count() > 1:  # every process must plan the same batches: process 0's view
    store.records = _broadcast_json(store.records)
  store.check(_setup(config), rows)
  if writer:
    _write_json(store.out / "config.json", config.to_dict())
  mesh = data_mesh()
  ndev = mesh.devices.size
  prior_in = replicate(prior, mesh) if ndev > 1 else prior
  lp = metrics.lpips_params() if "lpips" in config.metrics else None
  devices = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  emit({"event": "start", "out": str(store.out), "rows": len(rows), "skipped": skipped,
        "images": len(ids), "devices": devices, "done": len(store.records),
        "dropped_partial": store.dropped_partial})
  cache = {}

  def measure(task, i, s):
    """(operator, y) of image i with seed s in a task (cached per task)."""
    if (task.label, i, s) not in cache:
      cache[(task.label, i, s)] = simulate_task(task.name, _image_key(s, task.label, i, 0),
                                                jnp.asarray(xs[i]), task.sigma_y)
    return cache[(task.label, i, s)]

  def solve_row(row, todo, mesh, prior_in):
    """Restore `todo` [(image, seed)] of one row in batches over `mesh`; append results."""
    task, entry = row.task, row.solver
    ndev = mesh.devices.size
    devices = f"{ndev} x {jax.devices()[0].device_kind}"
    size = -(-min(config.batch, len(todo)) // ndev) * ndev
    run = jax.jit(jax.vmap(row.spec.fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
    compiled, compile_s = None, 0.0
    for start in range(0, len(todo), size):
      chunk = todo[start:start + size]
      ops, ys = zip(*[measure(task, i, s) for i, s in chunk])
      ops = [_for_solver(entry, row.spec, op) for op in ops]
      skeys = jnp.stack([_image_key(s, task.label, i, 1) for i, s in chunk])
      batch, n = pad_batch((skeys, jnp.stack(ys), stack_operators(ops)), size)
      if ndev > 1:
        batch = shard_batch(batch, mesh)
      if compiled is None:
        t0 = time.perf_counter()
        compiled = run.lower(*batch, prior_in, row.config).compile()
        compile_s = time.perf_counter() - t0
        emit({"event": "compiled", "task": task.label, "solver": entry.label,
              "seconds": compile_s})
      t0 = time.perf_counter()
      x_hat, info = jax.block_until_ready(compiled(*batch, prior_in))
      seconds = time.perf_counter() - t0
      x_hat, info = _gather((x_hat, info))
      x_hat = np.clip(np.asarray(x_hat)[:n], -1.0, 1.0)
      vals = _image_metrics(config.metrics, x_hat, np.stack([xs[i] for i, _ in chunk]), lp)
      kernel = getattr(info, "kernel", None)
      if kernel is not None and not isinstance(ops[0], NonBlind):  # an estimate: its error
        kts = [true_kernel(task.name, _image_key(s, task.label, i, 0), xs.shape[1:])
               for i, s in chunk]
        if kts[0] is not None and np.shape(kernel)[1:] == np.shape(kts[0]):
          vals["kernel_error"] = np.array([np.abs(np.asarray(kernel[j]) - np.asarray(k)).sum()
                                           for j, k in enumerate(kts)])
      records = []
      for j, (i, s) in enumerate(chunk):
        if writer:
          _write_png(store.restored_path(task.label, entry.label, ids[i], s), x_hat[j])
          meas = store.input_path(task.label, ids[i], s, "measurement")
          if not meas.exists():
            _write_png(meas, io.measurement_picture(ys[j], tuple(xs.shape[1:])))
            _write_png(store.input_path(task.label, ids[i], s, "truth"), xs[i])
        rec = {"task": task.label, "solver": entry.label, "image": ids[i], "index": i,
               "seed": s}
        rec.update({m: float(v[j]) for m, v in vals.items()})
        rec.update(_info_scalars(info, j))
        rec.update({"finite": bool(np.all(np.isfinite(x_hat[j]))), "seconds": seconds / n,
                    "batch": n, "batch_seconds": seconds, "compile_seconds": compile_s,
                    "devices": devices, "row_hash": row.hash, "time": time.time()})
        records.append(rec)
      store.append(records)
      emit({"event": "batch", "task": task.label, "solver": entry.label, "images": n,
            "seconds": seconds, "done": start + n, "todo": len(todo),
            "psnr": float(np.mean(vals["psnr"])) if "psnr" in vals else None})

  def remaining(row):
    return [(i, s) for s in config.seeds for i in range(len(ids))
            if _key(row.task.label, row.solver.label, ids[i], s) not in store.records]

  for row in rows:
    cache = {k: v for k, v in cache.items() if k[0] == row.task.label}  # one task at a time
    todo = remaining(row)
    emit({"event": "row", "task": row.task.label, "solver": row.solver.label,
          "todo": len(todo), "total": len(ids) * len(config.seeds)})
    if not todo:
      continue
    try:
      solve_row(row, todo, mesh, prior_in)
    except jax.errors.JaxRuntimeError as e:
      if ndev == 1 or jax.process_count() > 1:
        raise
      # An XLA failure of the partitioned program (seen: XLA CPU's FFT thunk rejects the
      # layout SPMD gives some FFTs): finish the row on one device, and say so.
      emit({"event": "fallback", "task": row.task.label, "solver": row.solver.label,
            "devices": ndev, "error": str(e).strip().splitlines()[0][:300]})
      solve_row(row, remaining(row), data_mesh(jax.devices()[:1]), prior)
  table = summarize(config, store, rows)
  if writer:
    write_report(config, store, rows, skipped, table)
  emit({"event": "done", "out": str(store.out), "table": table})
  return table


# --------------------------------------------------------------------------- report

def summarize(config: ExperimentConfig, store: ResultStore, rows: list) -> list[dict]:
  """One dict per row: n, mean and std of each metric, NFE, s/img, img/s, compile s.

  Only results of the current plan count (this config's images and seeds).
  Spread is the standard deviation over images and seeds (ddof 0).
  """
  out = []
  for row in rows:
    recs = [r for r in store.records.values()
            if r.get("task") == row.task.label and r.get("solver") == row.solver.label
            and r.get("seed") in config.seeds and r.get("index", 1 << 30) < config.images.count]
    d = {"task": row.task.label, "method": row.solver.label, "solver": row.solver.name,
         "n": len(recs), "planned": config.images.count * len(config.seeds)}
    for m in config.metrics:
      v = np.array([r[m] for r in recs if m in r], np.float64)
      d[f"{m}_mean"] = float(np.mean(v)) if v.size else float("nan")
      d[f"{m}_std"] = float(np.std(v)) if v.size else float("nan")
    ke = np.array([r["kernel_error"] for r in recs if "kernel_error" in r], np.float64)
    d["kernel_error_mean"] = float(np.mean(ke)) if ke.size else float("nan")
    d["kernel_error_std"] = float(np.std(ke)) if ke.size else float("nan")
    nfe = [r["nfe"] for r in recs if "nfe" in r]
    d["nfe"] = float(np.mean(nfe)) if nfe else float("nan")
    sec = np.array([r["seconds"] for r in recs], np.float64)
    d["sec_per_image"] = float(np.mean(sec)) if sec.size else float("nan")
    d["images_per_sec"] = float(sec.size / np.sum(sec)) if sec.size and np.sum(sec) > 0 \
        else float("nan")
    comp = [r["compile_seconds"] for r in recs if "compile_seconds" in r]
    d["compile_s"] = float(np.max(comp)) if comp else float("nan")
    d["devices"] = sorted({r.get("devices", "?") for r in recs})
    out.append(d)
  return out


def _fmt(mean, std, digits) -> str:
  if not math.isfinite(mean):
    return "-"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _describe(config: ExperimentConfig) -> str:
  p, im = config.prior, config.images
  prior = p.name + (f" ({p.checkpoint})" if p.checkpoint else " (shipped)") if p.name else \
      f"analytic {p.analytic} {list(p.image_shape)}"
  where = {"heldout": f"held-out {im.dataset}", "train": f"training {im.dataset}",
           "folder": f"folder {im.path}", "prior": "prior samples"}[im.source]
  return f"prior {prior}; {im.count} {where} images; seeds {list(config.seeds)}"


def write_report(config: ExperimentConfig, store: ResultStore, rows: list, skipped: list,
                 table: list[dict] | None = None):
  """Write `table.md`, `table.csv` and one `figure_<task>.png` per task into the folder."""
  table = summarize(config, store, rows) if table is None else table
  cols = [("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 3), ("LPIPS", "lpips", 3)]
  cols = [c for c in cols if c[1] in config.metrics]
  if any(math.isfinite(r["kernel_error_mean"]) for r in table):
    cols.append(("kernel err (L1)", "kernel_error", 3))
  devices = sorted({d for r in table for d in r["devices"]})
  lines = [f"# {config.title}", "",
           f"{_describe(config)}; devices: {', '.join(devices) or '-'}. Metrics: mean ± std "
           "over images and seeds (PSNR/SSIM on [0, 1], LPIPS AlexNet); s/img: a batch's solve "
           "time over its images, compilation excluded (column compile s); img/s: images over "
           f"their total solve time; batch {config.batch}." +
           (" kernel err: sum over taps of |estimated - true kernel| (0 to 2; the blind "
            "rows)." if any(c[1] == "kernel_error" for c in cols) else ""), "",
           "| task | method | n | " + " | ".join(c[0] for c in cols) +
           " | NFE | s/img | img/s | compile s |",
           "|---" * (len(cols) + 7) + "|"]
  for r in table:
    nfe = "-" if not math.isfinite(r["nfe"]) else f"{r['nfe']:.0f}"
    n = f"{r['n']}" if r["n"] == r["planned"] else f"{r['n']}/{r['planned']}"
    lines.append(f"| {r['task']} | {r['method']} | {n} | " + " | ".join(
        _fmt(r[f"{c[1]}_mean"], r[f"{c[1]}_std"], c[2]) for c in cols) +
        f" | {nfe} | {_num(r['sec_per_image'], 3)} | {_num(r['images_per_sec'], 2)} | "
        f"{_num(r['compile_s'], 1)} |")
  if skipped:
    lines += ["", "Not run: " + "; ".join(_skip_notes(skipped)) + "."]
  if len(devices) > 1:  # a row that failed partitioned finished on one device
    common = max(devices, key=lambda d: sum(d in r["devices"] for r in table))
    odd = [r for r in table if r["devices"] and r["devices"] != [common]]
    lines += ["", f"Devices: {common}, except " + "; ".join(
        f"{r['task']}/{r['method']}: {', '.join(r['devices'])}" for r in odd) + "."]
  missing = [r for r in table if r["n"] < r["planned"]]
  if missing:
    lines += ["", "Incomplete rows (n/planned): rerun the same command to finish them."]
  store.out.mkdir(parents=True, exist_ok=True)
  (store.out / "table.md").write_text("\n".join(lines) + "\n")
  keys = ["task", "method", "solver", "n"] + [f"{c[1]}_{s}" for c in cols for s in
                                               ("mean", "std")] + \
      ["nfe", "sec_per_image", "images_per_sec", "compile_s"]
  csv = [",".join(keys)] + [",".join(_csv(r[k]) for k in keys) for r in table]
  (store.out / "table.csv").write_text("\n".join(csv) + "\n")
  _write_figures(config, store, rows)


def _skip_notes(skipped) -> list[str]:
  """'method on task, task (why)' per (method, reason), in first-seen order."""
  groups: dict = {}
  for task, method, why in skipped:
    groups.setdefault((method, why), []).append(task)
  return [f"{m} on {', '.join(ts)} ({why})" for (m, why), ts in groups.items()]


def _num(v, digits) -> str:
  return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def _csv(v) -> str:
  if isinstance(v, float):
    return "" if not math.isfinite(v) else f"{v:.6g}"
  s = str(v)
  return f'"{s}"' if "," in s else s


def _read_png(path: Path):
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def _write_figures(config: ExperimentConfig, store: ResultStore, rows: list):
  """figure_<task>.png: rows of images (first seed), columns measurement, methods, truth."""
  from PIL import Image
  from jaxir import io
  if config.figure_images == 0:
    return
  seed = config.seeds[0]
  for task in config.tasks:
    methods = [r.solver.label for r in rows if r.task.label == task.label
               and r.solver.name != "measurement"]  # already the first column
    recs = sorted((r for r in store.records.values()
                   if r.get("task") == task.label and r.get("seed") == seed
                   and r.get("index", 1 << 30) < config.images.count),
                  key=lambda r: r["index"])
    images = list(dict.fromkeys(r["image"] for r in recs))[:config.figure_images]
    strips = []
    for k, image in enumerate(images):
      paths = [store.input_path(task.label, image, seed, "measurement")] + \
          [store.restored_path(task.label, m, image, seed) for m in methods] + \
          [store.input_path(task.label, image, seed, "truth")]
      tiles = []
      for p in paths:
        tiles.append(_read_png(p) if p.exists() else None)
      shape = next(t.shape for t in tiles if t is not None)
      tiles = [t if t is not None else np.full(shape, 255, np.uint8) for t in tiles]
      scale = max(1, 96 // shape[0])
      tiles = [np.repeat(np.repeat(t, scale, 0), scale, 1) for t in tiles]
      labels = ["measurement"] + methods + ["ground truth"] if k == 0 else None
      strips.append(io.side_by_side(tiles, labels))
    if strips:
      width = max(s.shape[1] for s in strips)
      strips = [np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                for s in strips]
      Image.fromarray(np.concatenate(strips, axis=0)).save(
          store.out / f"figure_{_safe(task.label)}.png")


# ------------------------------------------------------------------------------ CLI

def progress_printer(quiet: bool = False) -> Callable[[dict], None]:
  """A `run_experiment` progress callback printing one line per step (only the table if quiet)."""
  def show(ev):
    if quiet and ev["event"] != "done":
      return
    e = ev["event"]
    if e == "start":
      extra = "; a cut-off last line was dropped" if ev["dropped_partial"] else ""
      print(f"{ev['rows']} rows, {ev['images']} images, {ev['done']} results already in "
            f"{ev['out']}{extra}; devices: {ev['devices']}", flush=True)
      for note in _skip_notes(ev["skipped"]):
        print(f"  not run: {note}", flush=True)
    elif e == "row" and ev["todo"]:
      print(f"[{ev['task']} / {ev['solver']}] {ev['todo']} of {ev['total']} to do", flush=True)
    elif e == "fallback":
      print(f"  failed on {ev['devices']} devices ({ev['error']}); finishing the row on one "
            "device", flush=True)
    elif e == "compiled":
      print(f"  compiled in {ev['seconds']:.1f} s", flush=True)
    elif e == "batch":
      ps = "" if ev["psnr"] is None else f", PSNR {ev['psnr']:.2f}"
      print(f"  {ev['done']}/{ev['todo']}: {ev['seconds'] / ev['images']:.3f} s/img{ps}",
            flush=True)
    elif e == "done":
      print((Path(ev["out"]) / "table.md").read_text() if (Path(ev["out"]) / "table.md").exists()
            else "", flush=True)
  return show


def main(argv=None) -> int:
  """`jaxir experiment CONFIG [--out DIR] [--set KEY=VALUE ...]`: run or resume a table."""
  import argparse
  ap = argparse.ArgumentParser(prog="jaxir experiment",
                               description="Run or resume an experiment table from a TOML config.")
  ap.add_argument("config", help="TOML config (see experiments/configs/)")
  ap.add_argument("--out", default=None, help="output folder (default: the config's out)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="change a config value, e.g. images.count=3, solvers.dcdp.overrides.K=5")
  ap.add_argument("--report-only", action="store_true",
                  help="only rewrite table.md, table.csv and the figures from the results")
  ap.add_argument("--distributed", action="store_true",
                  help="call jax.distributed.initialize() first (multi-host; as distributed=true)")
  ap.add_argument("--coordinator", default=None, help="multi-host: coordinator HOST:PORT")
  ap.add_argument("--num-processes", type=int, default=None, help="multi-host: process count")
  ap.add_argument("--process-id", type=int, default=None, help="multi-host: this process")
  ap.add_argument("--quiet", action="store_true", help="print only the final table")
  args = ap.parse_args(argv)
  from jaxir.errors import JaxirError
  try:
    config = load_config(args.config, args.set)
    if args.distributed or config.distributed:
      import jax
      jax.distributed.initialize(coordinator_address=args.coordinator,
                                 num_processes=args.num_processes, process_id=args.process_id)
    if args.report_only:
      store = ResultStore(args.out or config.out, writer=False)  # reads; checks; no writes
      store.read()
      shape = config.prior.image_shape or _report_shape(config, store)
      rows, skipped = plan_rows(config, shape)
      store.check(_setup(config), rows)  # the results must come from this config
      write_report(config, store, rows, skipped)
      print((store.out / "table.md").read_text())
      return 0
    run_experiment(config, args.out, progress=progress_printer(args.quiet))
  except JaxirError as e:
    print(f"jaxir experiment: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted: finished results are kept; rerun the same command to resume.",
          file=sys.stderr)
    return 130
  return 0


def _report_shape(config, store) -> tuple:
  """The image shape of a finished folder (from a stored ground truth), for `--report-only`."""
  truths = sorted((store.out / "inputs").glob("*/*_truth.png"))
  if not truths:
    raise ConfigError(f"{store.out} has no results yet; run the experiment first.")
  from PIL import Image
  with Image.open(truths[0]) as im:
    c = 1 if im.mode == "L" else 3
    return (im.size[1], im.size[0], c)
