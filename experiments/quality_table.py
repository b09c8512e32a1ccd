"""DCDP (DDIM and Tweedie purification) vs DPS on a shipped prior and held-out images.

  python experiments/quality_table.py --prior mnist32 --count 8 --out results/quality_mnist32

For each task (SR x4, Gaussian deblur, motion deblur, box inpainting, denoising)
the script simulates measurements of held-out images with the task's operator
and noise (`jaxir.tasks.simulate`, one key per image), restores them with each
solver at its preset (`jaxir.cli.solver_config`, the same configs the command
line uses), and prints a markdown table of PSNR / SSIM / LPIPS (means over the
images), NFE and seconds per image (vmapped batch, compilation excluded and
reported apart). It also writes `table.md`, `results.json` and one comparison
picture per task (ground truth | measurement | each solver) into --out.
`--keep` re-runs only `--solvers` on `--tasks` and keeps every other row (and
picture) from the results already in --out, which must come from the same
prior, images, noise and seed (checked).

The DCDP paper's claim checked here: DCDP at least as good as DPS with several
times fewer network evaluations and seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("sr4", "gaussian_deblur", "motion_deblur", "box_inpaint", "denoise")
SOLVERS = ("dcdp", "dcdp-tweedie", "dps")


def heldout_images(prior_name: str, count: int, size: int | None, channels: int = 3):
  """(N, H, W, channels) held-out images in [-1, 1] of the prior's data (never trained on).

  `channels` is the prior's (`jaxir.tasks.prior_channels`): the digits are grey
  (1) or replicated (3); photographs are converted with `jaxir.io.to_channels`.
  """
  from jaxir import io
  from jaxir.train import data
  if prior_name.startswith("mnist32"):
    return np.asarray(data.mnist32("holdout", channels=channels)[:count])
  hold = data.natural_images("holdout")
  side = size or 64
  bank = data.image_bank(hold)
  return np.asarray(io.to_channels(np.asarray(data.sample_patches(
      jax.random.key(1234), bank, count, side, 256, augment=False)), channels))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32")
  ap.add_argument("--checkpoint", default=None)
  ap.add_argument("--count", type=int, default=8, help="held-out images per task")
  ap.add_argument("--size", type=int, default=None, help="patch side for natural64")
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--solvers", default=",".join(SOLVERS))
  ap.add_argument("--set", action="append", default=[], metavar="SOLVER:KEY=VALUE",
                  help="override a config field of one solver, e.g. dps:num_steps=250")
  ap.add_argument("--sigma-y", type=float, default=None,
                  help="measurement noise std on [-1, 1] for every task (default: each task's)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default="results/quality")
  ap.add_argument("--keep", action="store_true",
                  help="keep rows of solvers not run from --out/results.json")
  args = ap.parse_args(argv)

  from jaxir import io, metrics
  from jaxir.cli import solver_config
  from jaxir.priors import load_prior
  from jaxir.tasks import prior_channels, simulate, stack_operators

  prior = load_prior(args.prior, args.checkpoint)
  xs = jnp.asarray(heldout_images(args.prior, args.count, args.size, prior_channels(prior)))
  n = xs.shape[0]
  lp = metrics.lpips_params()
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  root = jax.random.key(args.seed)
  setup = {"prior": args.prior, "checkpoint": args.checkpoint, "count": n, "size": args.size,
           "sigma_y": args.sigma_y, "seed": args.seed}
  kept, kept_pics = _previous(out, setup) if args.keep else ({}, {})
  results, pictures = [], {}
  for task in args.tasks.split(","):
    keys = jax.random.split(jax.random.fold_in(root, zlib.crc32(task.encode())), n)
    ops, ys = zip(*[simulate(task, jax.random.fold_in(k, 0), x, args.sigma_y)
                      for k, x in zip(keys, xs)])
    op_b, y_b = stack_operators(ops), jnp.stack(ys)
    skeys = jnp.stack([jax.random.fold_in(k, 1) for k in keys])
    pics, labels = [xs[0], io.measurement_picture(ys[0], tuple(xs.shape[1:]))], ["ground truth", "measurement"]
    run_here = args.solvers.split(",")
    for solver in [s for s in SOLVERS if s in run_here or (task, s) in kept] + \
        [s for s in run_here if s not in SOLVERS]:
      if solver not in run_here:
        results.append(kept[(task, solver)])
        pics.append(jnp.asarray(kept_pics[f"{task}/{solver}"]))
        labels.append(solver)
        pictures[f"{task}/{solver}"] = np.asarray(pics[-1])
        continue
      over = [s.split(":", 1)[1] for s in args.set if s.startswith(solver + ":")]
      fn, cfg = solver_config(solver, task, over, prior=args.prior,
                              sigma_y=args.sigma_y)
      run = jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
      t0 = time.perf_counter()
      compiled = run.lower(skeys, y_b, op_b, prior, cfg).compile()
      t_compile = time.perf_counter() - t0
      t0 = time.perf_counter()
      x_hat, info = jax.block_until_ready(compiled(skeys, y_b, op_b, prior))
      sec = (time.perf_counter() - t0) / n
      x_hat = jnp.clip(x_hat, -1, 1)
      rec = {"task": task, "solver": solver, "n": n,
             "psnr": float(jnp.mean(metrics.psnr(io.to_unit(x_hat), io.to_unit(xs)))),
             "ssim": float(jnp.mean(metrics.ssim(io.to_unit(x_hat), io.to_unit(xs)))),
             "lpips": float(jnp.mean(metrics.lpips_apply(lp, x_hat, xs))),
             "nfe": int(np.asarray(info.nfe)[0]), "sec_per_image": sec,
             "compile_s": t_compile, "config": repr(cfg)}
      if solver.startswith("dcdp"):
        xb = jnp.clip(info.x_before_last_purification, -1, 1)
        rec["psnr_before_last_purification"] = float(
            jnp.mean(metrics.psnr(io.to_unit(xb), io.to_unit(xs))))
      results.append(rec)
      print(_row(rec), flush=True)
      pics.append(x_hat[0])
      labels.append(solver)
      pictures[f"{task}/{solver}"] = np.asarray(x_hat[0])
    scale = max(1, 96 // xs.shape[1])
    up = [np.repeat(np.repeat(np.asarray(p), scale, 0), scale, 1) for p in pics]
    io.write_image(out / f"{task}.png", io.side_by_side(up, labels))
  done = {(r["task"], r["solver"]) for r in results}
  for key, rec in kept.items():  # tasks not re-run this time
    if key not in done:
      results.append(rec)
      pictures[f"{key[0]}/{key[1]}"] = kept_pics[f"{key[0]}/{key[1]}"]
  order = {name: i for i, name in enumerate(TASKS + SOLVERS)}
  results.sort(key=lambda r: (order.get(r["task"], len(order)), order.get(r["solver"], len(order))))
  dev = jax.devices()[0].device_kind
  noise = "task default" if args.sigma_y is None else f"{args.sigma_y}"
  head = (f"{args.prior}, {n} held-out images per task, sigma_y {noise}, device: {dev} "
          f"({jax.device_count()} device(s)); seconds per image at batch {n}, "
          "compilation excluded.\n\n| task | solver | PSNR | SSIM | LPIPS | NFE | s/img |\n"
          "|---|---|---|---|---|---|---|\n")
  table = head + "\n".join(_row(r) for r in results) + "\n"
  (out / "table.md").write_text(table)
  (out / "results.json").write_text(json.dumps({"setup": setup, "results": results}, indent=2))
  np.savez_compressed(out / "pictures.npz", **pictures)
  print(table)
  return 0


def _row(rec) -> str:
  return (f"| {rec['task']} | {rec['solver']} | {rec['psnr']:.2f} | {rec['ssim']:.3f} | "
          f"{rec['lpips']:.3f} | {rec['nfe']} | {rec['sec_per_image']:.2f} |")


def _previous(out: Path, setup: dict):
  """Rows and first-image pictures of an earlier run in `out` with the same setup."""
  path = out / "results.json"
  if not path.exists() or not (out / "pictures.npz").exists():
    raise SystemExit(f"--keep: no earlier results.json and pictures.npz in {out}; run "
                     "without --keep first.")
  old = json.loads(path.read_text())
  if not isinstance(old, dict) or old.get("setup") != setup:
    raise SystemExit(f"--keep: {path} was made with a different setup "
                     f"({old.get('setup') if isinstance(old, dict) else 'unknown'} vs {setup}); "
                     "run all solvers instead.")
  with np.load(out / "pictures.npz") as z:
    pics = {k: z[k] for k in z.files}
  return {(r["task"], r["solver"]): r for r in old["results"]}, pics


if __name__ == "__main__":
  sys.exit(main())
