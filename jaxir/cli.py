"""The `jaxir` command: restore images with a diffusion prior, convert checkpoints, time solvers.

  jaxir demo                                  # a shipped held-out image, shipped prior
  jaxir restore photo.png --task sr4 --prior natural64 --out results/
  jaxir restore folder/ --task gaussian_deblur --solver dps --batch 8
  jaxir restore low_res.png --task sr4 --measured --prior natural64
  jaxir tasks                                 # tasks, solvers and their presets
  jaxir convert ffhq_10m.pt ffhq256/ --config ffhq256_dps   # a public PyTorch checkpoint
  jaxir bench --solvers dcdp,dps              # seconds per image, NFE, overhead
  jaxir experiment configs/table.json         # the experiment runner (jaxir.experiment)

By default the input is a clean image: jaxir simulates the measurement
y = A(x) + sigma_y * n with the task's operator (the papers' protocol), restores
it, and reports PSNR / SSIM / LPIPS against the input. With `--measured` the
input *is* the measurement (a noisy, blurred or low-resolution picture; for
`colorize` a grey picture).

Inputs are read with the prior's channel count (1 for a grey prior, 3 for RGB;
the shipped mnist32 takes 1, natural64 3): a colour input
given to a grey prior is converted to grey with the standard luma weights
(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), and a grey input given to an RGB
prior is replicated to three channels. A grey prior writes grey PNGs.

While a long solve runs, a bar counts network evaluations (NFE) with the time
left (`jaxir.progress`; off with `--quiet`). Short solves (`PROGRESS_MIN_CALLS`)
run without it, so that their compiled program goes into JAX's persistent
compilation cache and a second run skips compiling. Before the first solve the compiled
program's memory is compared with the memory available, and a solve that will
not fit is refused (`ResourceError`, suggesting `--size`); on images much larger
than the prior was trained on the expected time is printed first.

Outputs in --out: `<name>_restored.png`, `<name>_measurement.png`,
`<name>_compare.png` (side by side) and `metrics.json`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
import textwrap
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "assets" / "examples"
DEMO = dict(image="mnist32_heldout_0012.png", prior="mnist32", task="sr4", solver="dcdp")
#: Images whose area exceeds this multiple of the prior's training size get a time estimate.
LARGE_AREA_RATIO = 4.0
#: Solves expected to take fewer network evaluations than this (NFE x images x image area
#: relative to the prior's training size; about 10 s with mnist32 on a 2-core CPU) run without
#: the progress bar: JAX does not write programs with host callbacks (the bar's) to its
#: persistent compilation cache, and a short solve gains more from the cache than from a bar.
PROGRESS_MIN_CALLS = 1000
#: A solve is refused when its compiled program needs more than this share of free memory.
MEMORY_SHARE = 0.9
#: On CPU a run's resident memory grew 2.2-2.7x XLA's `memory_analysis` of the compiled
#: solve (natural64, DCDP-Tweedie at 128/256/512 px and DPS at 384 px, 2-core CPU,
#: 2026-11-30: scratch memory outside XLA's buffer assignment), so the estimate is scaled.
CPU_MEMORY_FACTOR = 3.0


def solver_config(solver: str, task_name: str, overrides=(), prior: str | None = None,
                  sigma_y: float | None = None):
  """The (function, config) of a registered solver for a task, with `KEY=VALUE` overrides.

  See `jaxir.solvers.registry.SolverSpec.config`: the solver's preset for the
  task (DCDP: the one tuned for `prior`, "<prior>/<task>", when there is one),
  moved to the noise level `sigma_y` (default: the task's); overrides last.
  """
  from jaxir.solvers.registry import get_solver
  spec = get_solver(solver)
  return spec.fn, spec.config(task_name, sigma_y=sigma_y, prior=prior, overrides=overrides)


# ------------------------------------------------------------------ registries in help texts
def preset_name(spec, task: str) -> str:
  """The name of the preset solver `spec` starts from on `task` (for help texts)."""
  if task in spec.task_presets:
    return spec.task_presets[task]
  try:
    cfg = spec.config(task)
  except Exception:  # noqa: BLE001 - a help text never fails on a solver's config
    cfg = None
  for name, preset in spec.presets.items():
    if preset == cfg:
      return name
  return "default"


def registry_text(tasks: bool = True, solvers: bool = True, priors: bool = True) -> str:
  """Help text listing the registered tasks, solvers (with presets) and priors."""
  from jaxir.models.configs import NAMED_CONFIGS
  from jaxir.models.shipped import SHIPPED
  from jaxir.solvers.registry import SOLVERS
  from jaxir.tasks import TASKS
  lines = []
  if tasks:
    lines.append("tasks (--task; sigma_y: the default --sigma-y):")
    lines += [f"  {t.name:<16}sigma_y {t.sigma_y:<5.2f} {t.description}" for t in TASKS.values()]
  if solvers:
    lines.append("solvers (--solver; operator they need; presets; `jaxir tasks` for the preset "
                 "of each task):")
    for s in SOLVERS.values():
      lines.append(f"  {s.name:<16}{s.requires:<7} {s.description}")
      lines += textwrap.wrap(", ".join(s.presets), 96, initial_indent=" " * 18 + "presets: ",
                             subsequent_indent=" " * 27)
  if priors:
    lines.append("priors (--prior): shipped with jaxir: " + ", ".join(SHIPPED))
    lines.append("  public checkpoints (--prior NAME --checkpoint FILE, or a folder written by "
                 "`jaxir convert`):")
    lines += [f"  {c.name:<20}{c.arch:<5} {c.source}" for c in NAMED_CONFIGS.values()]
  return "\n".join(lines)


def _public_checkpoints_hint() -> str:
  from jaxir.models.configs import NAMED_CONFIGS
  names = ", ".join(f"{c.name} ({c.source})" for c in NAMED_CONFIGS.values())
  return (f"Public checkpoints: {names}. Download one, then pass --prior NAME --checkpoint FILE "
          "(converted on the fly, no pickled code run), or convert it once with `jaxir convert "
          "FILE DIR --config NAME` and pass --checkpoint DIR.")


# ------------------------------------------------------------------ prior, sizes, inputs
def load_cli_prior(name: str, checkpoint: str | None):
  """The prior of `--prior NAME [--checkpoint PATH]`, with errors that say where weights are."""
  from jaxir.errors import CheckpointError
  from jaxir.models.configs import NAMED_CONFIGS, shipped_names
  from jaxir.priors import load_prior
  if checkpoint is not None and not Path(checkpoint).exists():
    raise CheckpointError(f"checkpoint {checkpoint!r} does not exist. "
                          + _public_checkpoints_hint())
  if checkpoint is None and name not in shipped_names():
    if name in NAMED_CONFIGS:
      raise CheckpointError(f"--prior {name} has no shipped weights: pass --checkpoint FILE. "
                            + _public_checkpoints_hint())
    raise CheckpointError(f"unknown prior {name!r}; shipped priors: {shipped_names()}. "
                          + _public_checkpoints_hint())
  return load_prior(name, checkpoint)


def prior_sizes(prior) -> tuple[int, tuple | None, tuple | None]:
  """(multiple, trained (H, W), exact shape) of the images a prior takes.

  A U-Net with L levels downsamples L - 1 times, so height and width must be
  multiples of 2**(L - 1); its config gives the training size. An analytic
  prior (`image_shape` set) takes exactly its shape. Unknown: (1, None, None).
  """
  from jaxir.progress import without_progress
  prior = without_progress(prior)
  if prior.image_shape is not None:
    return 1, tuple(prior.image_shape[:2]), tuple(prior.image_shape)
  config = getattr(getattr(prior.apply_fn, "module", None), "config", None)
  mult = getattr(config, "channel_mult", getattr(config, "ch_mult", None))
  native = getattr(config, "image_size", getattr(config, "resolution", None))
  multiple = 2 ** (len(mult) - 1) if mult else 1
  return multiple, ((int(native),) * 2 if native else None), None


def check_image_size(shape: tuple, prior, prior_name: str) -> None:
  """Raise `ShapeError` (with the sizes it takes and a `--size`) if `prior` can't take `shape`."""
  from jaxir.errors import ShapeError
  multiple, native, exact = prior_sizes(prior)
  H, W = shape[:2]
  trained = f" (trained at {native[0]}x{native[1]})" if native else ""
  if exact is not None and tuple(shape) != exact:
    raise ShapeError(f"the image the prior sees is {H}x{W}x{shape[2]}; the prior {prior_name!r} "
                     f"takes exactly {exact[0]}x{exact[1]}x{exact[2]}: pass --size {exact[0]}.")
  if H % multiple or W % multiple:
    side = max(multiple, min(H, W) // multiple * multiple)
    ok = ", ".join(str(multiple * k) for k in range(1, 5))
    raise ShapeError(f"the image the prior sees is {H}x{W}; the prior {prior_name!r} takes "
                     f"heights and widths that are multiples of {multiple} ({ok}, ...)"
                     f"{trained}: pass --size {side} to centre-crop and resize the input.")


def _measured_operator(task_name: str, y_shape, args):
  """The operator when the input is the measurement itself.

  `y_shape` is (H, W, C) of the input read with the prior's channel count C
  (for "colorize" the image has C channels and the measurement one).
  """
  import jax

  from jaxir.errors import ConfigError
  from jaxir.tasks import make_operator
  H, W, C = y_shape
  if task_name in ("sr4", "sr8", "sr4_avgpool"):
    s = 8 if task_name == "sr8" else 4
    return make_operator(task_name, jax.random.key(0), (H * s, W * s, C))
  if task_name in ("denoise", "gaussian_deblur", "colorize"):
    return make_operator(task_name, jax.random.key(0), (H, W, C))
  if task_name in ("box_inpaint", "random_inpaint"):
    if args.mask is None:
      raise ConfigError(f"--measured {task_name} needs --mask MASK.png (white = observed).")
    from jaxir.io import read_image
    from jaxir.operators import Inpaint
    m = (read_image(args.mask, size=(H, W))[..., :1] > 0).astype("float32")
    return Inpaint((H, W, C), m)
  raise ConfigError(f"--measured is not supported for {task_name!r}: its operator has unknown "
                    "parameters (kernel, phase). Pass the clean image instead, or build the "
                    "operator in Python and call the solver directly.")


def read_measured_grey(path, size):
  """A measured colorization input: one channel, refused if the picture has colour.

  A grey file, or an RGB file whose three channels are equal (within two 8-bit
  levels on 99% of the pixels: JPEG chroma noise), is read as (H, W, 1). A
  colour picture is not a colorization measurement (the operator's output is
  one channel): `ShapeError` says to drop `--measured` or pass a grey picture.
  """
  import numpy as np

  from jaxir import io
  from jaxir.errors import ShapeError
  im = io.read_image(path, size=size, channels=3)
  if float(np.quantile(np.ptp(im, axis=-1), 0.99)) > 4.5 / 255:
    raise ShapeError(f"{str(path)!r} is a colour picture, but the measurement of --task colorize "
                     "is a grey image (one channel). Drop --measured to simulate the grey "
                     "measurement from this colour image, or pass a grey picture.")
  return im[..., :1]


def _check_operator(spec, op, task: str):
  """`spec.check_operator(op)`, naming the tasks the solver can run if it can't."""
  from jaxir.errors import ConfigError
  if spec.supports(op):
    return
  import jax

  from jaxir.tasks import TASKS, make_operator
  ok = [t for t in TASKS
        if spec.supports(make_operator(t, jax.random.key(0), (16, 16, 3)))]
  try:
    spec.check_operator(op)
  except ConfigError as e:
    raise ConfigError(f"{e} Task {task!r} uses {type(op).__name__}; tasks solver "
                      f"{spec.name!r} can run: {ok}.") from None


# ------------------------------------------------------------------ the batched solve
class BatchRunner:
  """A registered solver over a batch, compiled ahead of time so it can be profiled first.

  Same program as `jaxir.parallel.batch_solver` (one jitted `jax.vmap`, the
  batch padded to and split over the devices), but traced and compiled
  explicitly: `prepare` returns the `SolveProfile` (NFE, network calls) and
  the compiled program's memory before anything runs. Compiled once per
  batch shape.
  """

  def __init__(self, fn, config):
    import jax

    from jaxir.parallel import data_mesh
    self.config = config
    self.run = jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
    self.mesh = data_mesh()
    self.device = self.mesh.devices.flat[0]
    self.cache = {}

  def batch(self, keys, ys, ops, prior):
    """(args, prior, n, devices): the batch padded and placed, and its true size n."""
    import jax

    from jaxir.parallel import data_mesh, pad_batch, replicate, shard_batch
    n = len(keys)
    m = self.mesh if n >= self.mesh.devices.size else data_mesh(list(self.mesh.devices.flat)[:n])
    batched, n = pad_batch((keys, ys, ops), m.devices.size)
    if m.devices.size > 1:
      batched = shard_batch(batched, m)
      prior = replicate(prior, m)
    else:  # the one-device program must not see the prior's copies on other devices
      batched, prior = jax.device_put((batched, prior), m.devices.flat[0])
    return batched, prior, n, m.devices.size

  def signature(self, batched, devices):
    import jax
    return devices, tuple((a.shape, str(a.dtype)) for a in jax.tree.leaves(batched))

  def trace(self, batched, prior):
    """(traced, profile) of the batched solve (`jaxir.progress.profile_solve`)."""
    from jaxir.progress import profile_solve
    return profile_solve(self.run, *batched, prior, self.config)


def _area_ratio(shape, prior) -> float:
  """Image area over the prior's training area (1 when unknown)."""
  _, native, _ = prior_sizes(prior)
  return 1.0 if native is None else shape[0] * shape[1] / (native[0] * native[1])


def wants_progress_bar(profile, n_images: int, shape, prior) -> bool:
  """Whether a solve is long enough for a progress bar (see `PROGRESS_MIN_CALLS`)."""
  if profile.nfe is None:  # stops on convergence: length unknown
    return True
  return profile.nfe * n_images * max(_area_ratio(shape, prior), 1.0) >= PROGRESS_MIN_CALLS


def _available_and_needed(compiled, devices):
  import jax

  from jaxir.progress import memory_available, memory_needed
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    need = memory_needed(compiled, devices) * CPU_MEMORY_FACTOR
  else:
    need = memory_needed(compiled)
  return memory_available(dev), need


def _size_hint(shape, prior, factor: float) -> int:
  """A square --size about `factor` times the current side, on the prior's size grid."""
  multiple = prior_sizes(prior)[0]
  return max(multiple, int(min(shape[:2]) * factor) // multiple * multiple)


def _large_image_note(args, prior, shape, profile, n_images, n_per_device):
  """The expected time on an image much larger than the prior's training size, or None."""
  from jaxir.progress import format_seconds, time_network
  _, native, _ = prior_sizes(prior)
  if native is None:
    return None
  ratio = _area_ratio(shape, prior)
  if ratio < LARGE_AREA_RATIO:
    return None
  rows = profile.rows
  t_call = time_network(prior, (rows * n_per_device,) + tuple(shape),
                        differentiated=profile.differentiated)
  kind = "forward and backward" if profile.differentiated else "forward"
  head = (f"jaxir: the images are {shape[0]}x{shape[1]}, {ratio:.0f}x the area of the "
          f"{native[0]}x{native[1]} images the prior {args.prior!r} was trained on. ")
  batches = math.ceil(n_images / args.batch)
  if profile.nfe is not None:
    calls = math.ceil(profile.nfe / rows)
    total = calls * t_call * batches
    body = (f"Expected time: about {format_seconds(total)} ({profile.nfe} network evaluations "
            f"per image, {t_call:.2f} s per {kind} call on a batch of {n_per_device}"
            f"{'' if batches == 1 else f', {batches} batches'}). ")
  else:
    body = (f"Each network call ({kind}) takes about {t_call:.2f} s; the solver stops when "
            "converged, so the total is not known in advance. ")
  return head + body + (f"Pass --size {native[0]} to restore at the prior's size "
                        "(centre-crop and resize).")


def restore(args) -> dict:
  """Run `jaxir restore`; returns the metrics record."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from jaxir import io, metrics, progress
  from jaxir.errors import ConfigError, ResourceError
  from jaxir.parallel import one_device_call, one_device_options, replicate
  from jaxir.solvers.registry import get_solver
  from jaxir.tasks import TASKS, prior_channels, simulate, stack_operators, task_names

  if args.task not in TASKS:
    raise ConfigError(f"unknown task {args.task!r}; choose from {task_names()} "
                      "(`jaxir tasks` lists them with their presets).")
  spec = get_solver(args.solver)
  task = TASKS[args.task]
  sigma_y = task.sigma_y if args.sigma_y is None else args.sigma_y
  fn, cfg = solver_config(args.solver, args.task, args.set or (), prior=args.prior,
                          sigma_y=sigma_y)
  prior = load_cli_prior(args.prior, args.checkpoint)
  channels = prior_channels(prior)  # inputs are converted to it (luma / replication)
  src = Path(args.input)
  paths = io.list_images(src) if src.is_dir() else [src]
  if not paths:
    raise ConfigError(f"folder {str(src)!r} holds no images ({', '.join(io.IMAGE_SUFFIXES)}).")
  if args.limit:
    paths = paths[:args.limit]
  size = args.size
  if size is None and args.prior == "mnist32" and args.checkpoint is None and not args.measured:
    size = 32
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  lp = metrics.lpips_params() if not args.measured else None

  if not args.quiet:
    prior = progress.with_progress(prior)  # network evaluations advance the bar
  runner = BatchRunner(fn, cfg)
  if jax.device_count() > 1:
    prior = replicate(prior)  # once, not per batch
  root = jax.random.key(args.seed)
  records, t_solve = [], 0.0
  batches = [paths[i:i + args.batch] for i in range(0, len(paths), args.batch)]
  with contextlib.ExitStack() as stack:
    tracker, first = None, True
    for bi, batch in enumerate(batches):
      if args.measured and args.task == "colorize":
        imgs = [read_measured_grey(p, size) for p in batch]
      else:
        imgs = [io.read_image(p, size=size, channels=channels) for p in batch]
      if len({im.shape for im in imgs}) > 1:
        raise ConfigError("images in a folder differ in size: pass --size N to centre-crop and "
                          "resize them all to N x N.")
      idx = [bi * args.batch + j for j in range(len(batch))]
      keys = [jax.random.fold_in(root, i) for i in idx]
      if args.measured:
        if args.task == "colorize":
          ops = [_measured_operator(args.task, im.shape[:2] + (channels,), args) for im in imgs]
        else:
          ops = [_measured_operator(args.task, im.shape, args) for im in imgs]
        ys = [jnp.asarray(im) for im in imgs]
        xs = None
        check_image_size(tuple(ops[0].in_shape), prior, args.prior)
      else:
        check_image_size(imgs[0].shape, prior, args.prior)
        xs = [jnp.asarray(im) for im in imgs]
        ops, ys = zip(*[simulate(args.task, jax.random.fold_in(k, 1), x, sigma_y)
                        for k, x in zip(keys, xs)])
      _check_operator(spec, ops[0], args.task)
      skeys = jnp.stack([jax.random.fold_in(k, 3) for k in keys])
      t0 = time.perf_counter()
      batched, bprior, n, devices = runner.batch(skeys, jnp.stack(ys), stack_operators(ops),
                                                 prior)
      sig = runner.signature(batched, devices)
      if sig not in runner.cache:
        shape = tuple(ops[0].in_shape)
        # Traced without the bar's callbacks first (a cacheable program; the NFE is read off
        # it); again with them (which also records the network calls) for a long solve, or
        # for the time estimate of a large image.
        traced, profile = runner.trace(batched, progress.without_progress(bprior))
        bar = not args.quiet and wants_progress_bar(profile, len(paths), shape, prior)
        large = not args.quiet and first and _area_ratio(shape, prior) >= LARGE_AREA_RATIO
        if bar or large:
          traced_bar, profile = runner.trace(batched, bprior)
          traced = traced_bar if bar else traced
        note = None if not large else _large_image_note(
            args, prior, shape, profile, len(paths), math.ceil(len(batched[1]) / devices))
        if note:
          print(note, file=sys.stderr, flush=True)
        # One device: the library's one-device compile options (jaxir.parallel).
        options = one_device_options(runner.device) if devices == 1 else None
        compiled = traced.lower().compile(compiler_options=options)
        avail, need = _available_and_needed(compiled, devices)
        if avail is not None and need > MEMORY_SHARE * avail and not args.force:
          fit = _size_hint(shape, prior, math.sqrt(MEMORY_SHARE * avail / need))
          more = " or --batch 1" if len(batched[1]) > 1 else ""
          raise ResourceError(
              f"the solve will not fit in memory: {args.solver} on {len(batched[1])} "
              f"{shape[0]}x{shape[1]} image(s) needs about {progress.format_bytes(need)} "
              f"(from XLA's memory analysis of the compiled program), "
              f"{progress.format_bytes(avail)} are free. Pass --size {fit} to restore "
              f"smaller images{more} (--force runs it anyway).")
        if options:
          compiled = functools.partial(one_device_call, runner.device, compiled)
        runner.cache[sig] = (compiled, profile, bar)
      compiled, profile, bar = runner.cache[sig]
      if first:
        total = None if profile.nfe is None else profile.nfe * len(paths)
        desc = f"{args.solver} {args.task}" + (f" ({len(paths)} images)" if len(paths) > 1
                                               else "")
        tracker = stack.enter_context(progress.track(total, desc=desc, disable=not bar))
        first = False
      if tracker is not None:
        tracker.scale = n / len(batched[1])  # padding copies tick too
      x_hat, info = compiled(*batched, bprior if bar else progress.without_progress(bprior))
      x_hat = jax.block_until_ready(x_hat)
      if bi == len(batches) - 1:
        stack.close()  # the bar ends with the last solve, not after the metrics
      if x_hat.shape[0] != n:
        x_hat, info = jax.tree.map(lambda a, n=n: a[:n], (x_hat, info))
      t_solve += time.perf_counter() - t0
      if bool(np.any(np.asarray(getattr(info, "diverged", False)))):
        raise FloatingPointError(_diverged_message(cfg))
      if not bool(jnp.all(jnp.isfinite(x_hat))):
        raise FloatingPointError("the solver produced NaN/inf: lower the step size (--set "
                                 "lr=... or --set scale=...) or check the input.")
      x_hat = jnp.asarray(np.clip(jax.device_get(x_hat), -1, 1))  # off the mesh, on one device
      for j, p in enumerate(batch):
        records.append(_write_outputs(args, out, p, ops[j], ys[j], x_hat[j],
                                      None if xs is None else xs[j], info, j, sigma_y, lp))
  summary = {"images": len(records), "seconds": round(t_solve, 3),
             "seconds_per_image_incl_compile": round(t_solve / max(len(records), 1), 3),
             "config": {"solver": args.solver, **dataclasses.asdict(cfg)}, "records": records}
  for k in ("psnr", "ssim", "lpips"):
    vals = [r[k] for r in records if k in r]
    if vals:
      summary[k] = float(np.mean(vals))
  with open(out / "metrics.json", "w") as f:
    json.dump(summary, f, indent=2, default=str)
  if not args.quiet:
    _print_summary(summary, out)
  return summary


def _diverged_message(cfg) -> str:
  from jaxir.solvers.dcdp import stable_mu
  from jaxir.solvers.deqir import DeqIRConfig
  if isinstance(cfg, DeqIRConfig):
    return ("DeqIR's fixed-point solve diverged (its residual became NaN/inf), so the result is "
            "not a restoration: use the triangular Anderson (--set triangular=true) or plain "
            "Picard iteration (--set solver=picard).")
  limit = stable_mu(cfg) if hasattr(cfg, "lr_size") else math.inf
  hint = f" (mu below {limit:.3g} is stable at this lr)" if math.isfinite(limit) else ""
  return ("DCDP's data-consistency phase diverged (its data residual grew): the step lr or "
          "the proximal weight mu is too large for this operator; lower them with --set "
          f"mu=... or --set lr=...{hint}.")


def _write_outputs(args, out, p, op, y, x_hat, x, info, j, sigma_y, lp) -> dict:
  import numpy as np

  from jaxir import io, metrics
  stem = p.stem
  io.write_image(out / f"{stem}_restored.png", x_hat)
  meas = io.measurement_picture(y, op.in_shape)
  io.write_image(out / f"{stem}_measurement.png", meas)
  rec = {"image": str(p), "task": args.task, "solver": args.solver, "prior": args.prior,
         "sigma_y": sigma_y, "nfe": int(np.asarray(info.nfe)[j])}
  if x is not None:
    gt, xh = x[None], x_hat[None]
    rec["psnr"] = float(metrics.psnr(io.to_unit(xh), io.to_unit(gt))[0])
    rec["ssim"] = float(metrics.ssim(io.to_unit(xh), io.to_unit(gt))[0])
    rec["lpips"] = float(metrics.lpips_apply(lp, xh, gt)[0])
    pics, labels = [x, meas, x_hat], ["ground truth", "measurement", args.solver]
  else:
    pics, labels = [meas, x_hat], ["measurement", args.solver]
  scale = max(1, 128 // op.in_shape[0])
  pics = [np.repeat(np.repeat(np.asarray(q), scale, 0), scale, 1) for q in pics]
  io.write_image(out / f"{stem}_compare.png", io.side_by_side(pics, labels))
  return rec


def _print_summary(summary, out):
  recs = summary["records"]
  cols = [c for c in ("psnr", "ssim", "lpips", "nfe") if c in recs[0]]
  print(f"{'image':<40}" + "".join(f"{c:>9}" for c in cols))
  for r in recs[:20]:
    print(f"{Path(r['image']).name:<40}" + "".join(
        f"{r[c]:>9.3f}" if isinstance(r[c], float) else f"{r[c]:>9}" for c in cols))
  if len(recs) > 20:
    print(f"... {len(recs) - 20} more in metrics.json")
  if "psnr" in summary:
    print(f"{'mean':<40}" + "".join(f"{summary[c]:>9.3f}" for c in cols if c in summary))
  print(f"{summary['images']} image(s) in {summary['seconds']:.1f} s (including compilation); "
        f"results in {out}/")


# ------------------------------------------------------------------ other commands
def _tasks(args) -> int:
  from jaxir.solvers.registry import SOLVERS
  from jaxir.tasks import TASKS
  names = list(SOLVERS)
  supported = _support_table(SOLVERS, TASKS)
  cells = {(s.name, t): preset_name(s, t) if supported[(s.name, t)] else "-"
           for s in SOLVERS.values() for t in TASKS}
  w = max(len(v) for v in [*names, *cells.values()]) + 2
  print(f"{'task':<16}{'sigma_y':>8}  description")
  for t in TASKS.values():
    print(f"{t.name:<16}{t.sigma_y:>8.2f}  {t.description}")
  print("\npreset each solver starts from, per task ('-': the solver can't run the task's "
        "operator):")
  print(f"{'task':<16}" + "".join(f"{n:<{w}}" for n in names))
  for t in TASKS:
    print(f"{t:<16}" + "".join(f"{cells[(n, t)]:<{w}}" for n in names))
  print()
  print(registry_text(tasks=False))
  return 0


def _support_table(solvers, tasks) -> dict:
  import jax

  from jaxir.tasks import make_operator
  ops = {t: make_operator(t, jax.random.key(0), (16, 16, 3)) for t in tasks}
  return {(s.name, t): s.supports(ops[t]) for s in solvers.values() for t in tasks}


def _parse_convert_config(text: str):
  import os

  from jaxir.errors import ConfigError
  from jaxir.models.configs import NAMED_CONFIGS
  if text in NAMED_CONFIGS:
    return text
  try:
    if os.path.isfile(text):
      with open(text) as f:
        return json.load(f)
    if text.lstrip().startswith("{"):
      return json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"--config {text!r} is not valid JSON: {e}.") from None
  raise ConfigError(f"--config {text!r} is neither a named config {sorted(NAMED_CONFIGS)}, a "
                    "JSON file, nor a JSON object of the upstream model arguments.")


def _convert(args) -> int:
  from jaxir.models.configs import get_config
  from jaxir.models.convert import count_params, from_torch, save_converted
  config = _parse_convert_config(args.config)
  upstream = dict(get_config(config).upstream) if isinstance(config, str) else config
  model, params = from_torch(args.src, args.arch, config, select=args.select)
  path = save_converted(args.dst, model, params, upstream=upstream)
  if not args.quiet:
    name = config if isinstance(config, str) else "NAME"
    print(f"wrote {path} ({count_params(params):,} parameters). Use it with: jaxir restore "
          f"IMAGE --prior {name} --checkpoint {path}")
  return 0


def _bench(args) -> int:
  from jaxir import bench
  rows = bench.run(prior=args.prior, checkpoint=args.checkpoint, size=args.size,
                   solvers=args.solvers, tasks=args.tasks, batches=args.batches,
                   repeats=args.repeats, overrides=args.set or ())
  print(bench.markdown(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"environment": bench.environment(), "rows": rows}, f, indent=2)
  print(bench.full_scripts_note())
  return 0


def _experiment(args) -> int:
  import importlib

  from jaxir.errors import ConfigError
  try:
    experiment = importlib.import_module("jaxir.experiment")
  except ModuleNotFoundError as e:
    if e.name not in ("jaxir.experiment", None):
      raise
    raise ConfigError("`jaxir experiment` needs the experiment runner jaxir/experiment.py, "
                      "which this installation of jaxir does not have yet; update jaxir, or "
                      "run the scripts in the repository's experiments/ folder.") from None
  return int(experiment.main([args.config, *args.rest]) or 0)


# ------------------------------------------------------------------ parser
def _split(text: str) -> list[str]:
  return [v.strip() for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
  return [int(v) for v in _split(text)]


def _add_restore_args(ap, demo: bool = False):
  d = DEMO if demo else {}
  ap.add_argument("--task", default=d.get("task", "sr4"), help="a task below (default sr4)")
  ap.add_argument("--solver", default=d.get("solver", "dcdp"),
                  help="a registered solver below (default dcdp)")
  ap.add_argument("--prior", default=d.get("prior", "natural64"),
                  help="shipped prior or a public checkpoint's name with --checkpoint; inputs "
                       "are converted to its channel count (default natural64)")
  ap.add_argument("--checkpoint", default=None,
                  help="checkpoint file (.pt/.safetensors/.npz) or a `jaxir convert` folder")
  ap.add_argument("--sigma-y", type=float, default=None, help="measurement noise (task default)")
  ap.add_argument("--seed", type=int, default=0, help="seed of all random draws")
  ap.add_argument("--size", type=int, default=None,
                  help="centre-crop and resize inputs to N x N (mnist32 default: 32)")
  ap.add_argument("--batch", type=int, default=8, help="images solved together (vmap)")
  ap.add_argument("--limit", type=int, default=None, help="at most this many images")
  ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                  help="override a solver config field, e.g. --set K=20 --set tau=50")
  ap.add_argument("--out", default="jaxir-demo" if demo else "jaxir-out", help="output folder")
  ap.add_argument("--force", action="store_true",
                  help="run even when the memory estimate says the solve will not fit")
  ap.add_argument("--quiet", action="store_true",
                  help="no progress bar, no time estimate, no summary table")


def build_parser() -> argparse.ArgumentParser:
  """The `jaxir` argument parser (help texts read the registries)."""
  from jaxir.models.configs import NAMED_CONFIGS
  raw = argparse.RawDescriptionHelpFormatter
  ap = argparse.ArgumentParser(prog="jaxir", description=__doc__.split("\n")[0],
                               epilog=registry_text(), formatter_class=raw)
  sub = ap.add_subparsers(dest="command", required=True)
  r = sub.add_parser("restore", help="restore an image or a folder of images",
                     description="Restore an image or a folder of images.",
                     epilog=registry_text(), formatter_class=raw)
  r.add_argument("input", help="image file or folder; read with the prior's channel count "
                 "(colour to grey with the luma weights 0.299/0.587/0.114 for a grey prior, "
                 "grey replicated to RGB for an RGB prior)")
  r.add_argument("--measured", action="store_true",
                 help="the input is the measurement (default: a clean image to degrade); for "
                      "colorize a grey picture")
  r.add_argument("--mask", default=None, help="with --measured inpainting: mask PNG, white = seen")
  _add_restore_args(r)
  d = sub.add_parser("demo", help="restore a shipped held-out example with a shipped prior",
                     description="Restore a shipped held-out example with a shipped prior.",
                     epilog=registry_text(), formatter_class=raw)
  d.add_argument("--image", default=DEMO["image"],
                 help=f"a file name in {EXAMPLES} (default {DEMO['image']})")
  _add_restore_args(d, demo=True)
  sub.add_parser("tasks", help="list the tasks, solvers and the preset of each pair",
                 epilog=registry_text(), formatter_class=raw)
  c = sub.add_parser("convert", help="convert a PyTorch diffusion U-Net checkpoint",
                     description=textwrap.fill(
                         "Convert a PyTorch checkpoint (guided-diffusion ADM or "
                     "ermongroup DDPM: .pt/.pth/.ckpt, .safetensors, .npz) into a folder that "
                     "--checkpoint reads (orbax parameters and config.json). Pickled code in "
                     "the checkpoint is never run: only tensors and containers are read.", 88),
                     epilog=registry_text(tasks=False, solvers=False), formatter_class=raw)
  c.add_argument("src", help="the PyTorch checkpoint file")
  c.add_argument("dst", help="output folder")
  c.add_argument("--config", required=True,
                 help=f"named config {sorted(NAMED_CONFIGS)}, a JSON file or a JSON object of "
                      "the upstream arguments (guided-diffusion create_model arguments; "
                      "ermongroup config.model fields plus resolution)")
  c.add_argument("--arch", choices=["adm", "ddpm"], default=None,
                 help="network family (default: the named config's, else adm)")
  c.add_argument("--select", default=None, help="key of the state dict inside a container")
  c.add_argument("--quiet", action="store_true")
  b = sub.add_parser("bench", help="time registered solvers: s/image, NFE, overhead",
                     description=textwrap.fill(
                         "Time registered solvers on a prior: seconds per image, "
                     "images per second, NFE, compile time and the overhead over the U-Net "
                     "(batch time / (network calls x one call)). Runs from an installed "
                     "jaxir; the full benchmark scripts (PyTorch comparison, H100 targets) "
                     "are experiments/bench_unet.py and bench_solvers.py in a clone.", 88),
                     epilog=registry_text(), formatter_class=raw)
  b.add_argument("--prior", default="random",
                 help="'random' (the shipped mnist32's architecture, random weights: timing "
                      "does not depend on the weights), a shipped prior, or a named config with "
                      "--checkpoint (default random)")
  b.add_argument("--checkpoint", default=None)
  b.add_argument("--size", type=int, default=None, help="image side (default: the prior's)")
  b.add_argument("--solvers", type=_split, default=["dcdp", "dcdp-tweedie"],
                 help="comma-separated registered solvers (default dcdp,dcdp-tweedie)")
  b.add_argument("--tasks", type=_split, default=["sr4"], help="comma-separated (default sr4)")
  b.add_argument("--batches", type=_ints, default=[1, 4], help="batch sizes (default 1,4)")
  b.add_argument("--repeats", type=int, default=3, help="timed runs, median (default 3)")
  b.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="override a config field of the solvers that have it (e.g. --set K=5)")
  b.add_argument("--json", default=None, help="also write the rows to this JSON file")
  e = sub.add_parser("experiment", help="run an experiment config (jaxir.experiment)",
                     description=textwrap.fill(
                         "Run the experiment runner (jaxir.experiment.main) on a "
                     "config file; arguments after CONFIG go to the runner.", 88),
                     epilog=registry_text(), formatter_class=raw)
  e.add_argument("config", help="the experiment's config file")
  e.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the runner")
  return ap


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)

  # `import jaxir` already made one host device per core and chose the XLA CPU flags for
  # solving (jaxir.runtime.apply_cpu_settings), so batches split over cores.
  return _run(args)


def _run(args) -> int:
  from jaxir.errors import JaxirError
  try:
    if args.command == "tasks":
      return _tasks(args)
    if args.command == "convert":
      return _convert(args)
    if args.command == "bench":
      return _bench(args)
    if args.command == "experiment":
      return _experiment(args)
    if args.command == "demo":
      args.input, args.measured, args.mask = str(EXAMPLES / args.image), False, None
      if not Path(args.input).is_file():
        avail = sorted(p.name for p in EXAMPLES.glob("*.png"))
        raise JaxirError(f"no example {args.image!r}; shipped examples: {avail}.")
    restore(args)
  except (JaxirError, FloatingPointError) as e:
    print(f"jaxir: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
