"""The `jaxir` command: restore one image or a folder with a diffusion prior.

  jaxir demo                                  # a shipped held-out image, shipped prior
  jaxir restore photo.png --task sr4 --prior natural64 --out results/
  jaxir restore folder/ --task gaussian_deblur --solver dps --batch 8
  jaxir restore low_res.png --task sr4 --measured --prior natural64
  jaxir tasks                                 # list tasks, presets and defaults

By default the input is a clean image: jaxir simulates the measurement
y = A(x) + sigma_y * n with the task's operator (the papers' protocol), restores
it, and reports PSNR / SSIM / LPIPS against the input. With `--measured` the
input *is* the measurement (a noisy, blurred or low-resolution picture).

Inputs are read with the prior's channel count (1 for a grey prior, 3 for RGB;
both shipped priors take 3, mnist32 as grey digits replicated): a colour input
given to a grey prior is converted to grey with the standard luma weights
(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B), and a grey input given to an RGB
prior is replicated to three channels. A grey prior writes grey PNGs.

Outputs in --out: `<name>_restored.png`, `<name>_measurement.png`,
`<name>_compare.png` (side by side) and `metrics.json`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "assets" / "examples"
DEMO = dict(image="mnist32_heldout_0012.png", prior="mnist32", task="sr4", solver="dcdp")


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


def _measured_operator(task_name: str, y_shape, args):
  """The operator when the input is the measurement itself.

  `y_shape` is (H, W, C) of the input read with the prior's channel count C
  (for "colorize" the image has C channels and the measurement one).
  """
  from jaxir.errors import ConfigError
  from jaxir.tasks import make_operator
  import jax
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


def restore(args) -> dict:
  """Run `jaxir restore`; returns the metrics record."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from tqdm import tqdm

  from jaxir import io, metrics
  from jaxir.errors import ConfigError
  from jaxir.parallel import batch_solver, replicate
  from jaxir.priors import load_prior
  from jaxir.tasks import TASKS, prior_channels, simulate, stack_operators

  if args.task not in TASKS:
    raise ConfigError(f"unknown task {args.task!r}; run `jaxir tasks` for the list.")
  task = TASKS[args.task]
  sigma_y = task.sigma_y if args.sigma_y is None else args.sigma_y
  fn, cfg = solver_config(args.solver, args.task, args.set or (), prior=args.prior,
                          sigma_y=sigma_y)
  prior = load_prior(args.prior, args.checkpoint)
  channels = prior_channels(prior)  # inputs are converted to it (luma / replication)
  src = Path(args.input)
  paths = io.list_images(src) if src.is_dir() else [src]
  if args.limit:
    paths = paths[:args.limit]
  size = args.size
  if size is None and args.prior == "mnist32" and args.checkpoint is None and not args.measured:
    size = 32
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  lp = metrics.lpips_params() if not args.measured else None

  solve = batch_solver(fn)  # one jitted vmap, the batch split over all visible devices
  if jax.device_count() > 1:
    prior = replicate(prior)  # once, not per batch
  root = jax.random.key(args.seed)
  records, t_solve = [], 0.0
  batches = [paths[i:i + args.batch] for i in range(0, len(paths), args.batch)]
  bar = tqdm(total=len(paths), desc=f"{args.solver} {args.task}", unit="img",
             disable=len(paths) == 1 or args.quiet)
  for bi, batch in enumerate(batches):
    imgs = [io.read_image(p, size=size, channels=channels) for p in batch]
    if len({im.shape for im in imgs}) > 1:
      raise ConfigError("images in a folder differ in size: pass --size N to centre-crop and "
                        "resize them all to N x N.")
    idx = [bi * args.batch + j for j in range(len(batch))]
    keys = [jax.random.fold_in(root, i) for i in idx]
    if args.measured:
      ops = [_measured_operator(args.task, im.shape, args) for im in imgs]
      ys = [jnp.asarray(io.to_channels(im, op.out_shape[-1]) if args.task == "colorize" else im)
            for im, op in zip(imgs, ops)]
      xs = None
    else:
      xs = [jnp.asarray(im) for im in imgs]
      ops, ys = zip(*[simulate(args.task, jax.random.fold_in(k, 1), x, sigma_y)
                      for k, x in zip(keys, xs)])
    skeys = jnp.stack([jax.random.fold_in(k, 3) for k in keys])
    t0 = time.perf_counter()
    x_hat, info = solve(skeys, jnp.stack(ys), stack_operators(ops), prior, cfg)
    x_hat = jax.block_until_ready(x_hat)
    t_solve += time.perf_counter() - t0
    if not bool(jnp.all(jnp.isfinite(x_hat))):
      raise FloatingPointError("the solver produced NaN/inf: lower the step size (--set lr=... "
                               "or --set scale=...) or check the input.")
    x_hat = jnp.asarray(np.clip(jax.device_get(x_hat), -1, 1))  # off the mesh, on one device
    for j, p in enumerate(batch):
      stem = p.stem
      io.write_image(out / f"{stem}_restored.png", x_hat[j])
      meas = io.measurement_picture(ys[j], ops[j].in_shape)
      io.write_image(out / f"{stem}_measurement.png", meas)
      rec = {"image": str(p), "task": args.task, "solver": args.solver, "prior": args.prior,
             "sigma_y": sigma_y, "nfe": int(np.asarray(info.nfe)[j])}
      if xs is not None:
        gt, xh = xs[j][None], x_hat[j][None]
        rec["psnr"] = float(metrics.psnr(io.to_unit(xh), io.to_unit(gt))[0])
        rec["ssim"] = float(metrics.ssim(io.to_unit(xh), io.to_unit(gt))[0])
        rec["lpips"] = float(metrics.lpips_apply(lp, xh, gt)[0])
        pics, labels = [xs[j], meas, x_hat[j]], ["ground truth", "measurement", args.solver]
      else:
        pics, labels = [meas, x_hat[j]], ["measurement", args.solver]
      scale = max(1, 128 // ops[j].in_shape[0])
      pics = [np.repeat(np.repeat(np.asarray(q), scale, 0), scale, 1) for q in pics]
      io.write_image(out / f"{stem}_compare.png", io.side_by_side(pics, labels))
      records.append(rec)
    bar.update(len(batch))
  bar.close()
  summary = {"images": len(records), "seconds": round(t_solve, 3),
             "seconds_per_image_incl_compile": round(t_solve / max(len(records), 1), 3),
             "config": {"solver": args.solver, **dataclasses.asdict(cfg)}, "records": records}
  for k in ("psnr", "ssim", "lpips"):
    vals = [r[k] for r in records if k in r]
    if vals:
      summary[k] = float(np.mean(vals))
  with open(out / "metrics.json", "w") as f:
    json.dump(summary, f, indent=2)
  if not args.quiet:
    _print_summary(summary, out)
  return summary


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


def _tasks(args) -> int:
  from jaxir.solvers.registry import DCDP_TASK_PRESETS, DPS_TASK_PRESETS
  from jaxir.tasks import TASKS
  print(f"{'task':<16}{'sigma_y':>8}  {'DCDP preset':<16}{'DPS preset':<16}description")
  for t in TASKS.values():
    print(f"{t.name:<16}{t.sigma_y:>8.2f}  {DCDP_TASK_PRESETS[t.name]:<16}"
          f"{DPS_TASK_PRESETS[t.name]:<16}{t.description}")
  return 0


def _add_restore_args(ap, demo: bool = False):
  d = DEMO if demo else {}
  ap.add_argument("--task", default=d.get("task", "sr4"), help="see `jaxir tasks` (default sr4)")
  from jaxir.solvers.registry import solver_names
  ap.add_argument("--solver", choices=solver_names(), default=d.get("solver", "dcdp"))
  ap.add_argument("--prior", default=d.get("prior", "natural64"),
                  help="shipped prior (mnist32, natural64) or named "
                       "config with --checkpoint; inputs are converted to its channel count")
  ap.add_argument("--checkpoint", default=None, help="checkpoint file or converted folder")
  ap.add_argument("--sigma-y", type=float, default=None, help="measurement noise (task default)")
  ap.add_argument("--seed", type=int, default=0, help="seed of all random draws")
  ap.add_argument("--size", type=int, default=None,
                  help="centre-crop and resize inputs to N x N (mnist32 default: 32)")
  ap.add_argument("--batch", type=int, default=8, help="images solved together (vmap)")
  ap.add_argument("--limit", type=int, default=None, help="at most this many images")
  ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                  help="override a solver config field, e.g. --set K=20 --set tau=50")
  ap.add_argument("--out", default="jaxir-demo" if demo else "jaxir-out", help="output folder")
  ap.add_argument("--quiet", action="store_true")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="jaxir", description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="command", required=True)
  r = sub.add_parser("restore", help="restore an image or a folder of images")
  r.add_argument("input", help="image file or folder; read with the prior's channel count "
                 "(colour to grey with the luma weights 0.299/0.587/0.114 for a grey prior, "
                 "grey replicated to RGB for an RGB prior)")
  r.add_argument("--measured", action="store_true",
                 help="the input is the measurement (default: a clean image to degrade)")
  r.add_argument("--mask", default=None, help="with --measured inpainting: mask PNG, white = seen")
  _add_restore_args(r)
  d = sub.add_parser("demo", help="restore a shipped held-out example with a shipped prior")
  d.add_argument("--image", default=DEMO["image"],
                 help=f"a file name in {EXAMPLES} (default {DEMO['image']})")
  _add_restore_args(d, demo=True)
  sub.add_parser("tasks", help="list the tasks")
  args = ap.parse_args(argv)

  import os

  from jaxir.parallel import host_device_flag
  old_flags, flags = os.environ.get("XLA_FLAGS"), host_device_flag()
  if flags is not None and args.command != "tasks":
    # One host device per core, so batches split over cores (read when JAX starts its
    # backends; no effect if they already run). Put back afterwards for callers in-process.
    os.environ["XLA_FLAGS"] = flags
  try:
    return _run(args)
  finally:
    if old_flags is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = old_flags


def _run(args) -> int:
  from jaxir.errors import JaxirError
  try:
    if args.command == "tasks":
      return _tasks(args)
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
