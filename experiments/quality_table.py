"""DCDP (DDIM and Tweedie purification) vs DPS on a shipped prior and held-out images.

  python experiments/quality_table.py --prior mnist32 --count 8 --out results/quality_mnist32

A thin wrapper over the experiment runner (`jaxir.experiment`; the same table as
`jaxir experiment experiments/configs/dcdp_mnist32.toml` without its classical
rows). For each task (SR x4, Gaussian deblur, motion deblur, box inpainting,
denoising) it simulates measurements of held-out images with the task's operator
and noise, restores them with each solver at its registry preset, and writes
into --out the runner's files: `results.jsonl` (one line per image, written as
it goes), `table.md` / `table.csv` (PSNR / SSIM / LPIPS mean and spread, NFE,
seconds per image with compilation apart, images per second) and one
`figure_<task>.png` per task (measurement | each solver | ground truth).

A rerun with the same --out resumes: finished images are kept, new solvers or
tasks are added. `--keep` is accepted for the old command lines and changes
nothing (keeping is what the runner always does); a changed setting of a solver
already in --out is refused (use another --out). Measurement keys and the
natural64 patches are the runner's (per image, independent of --count), so
numbers differ slightly from tables made by the earlier standalone script.

The DCDP paper's claim checked here: DCDP at least as good as DPS with several
times fewer network evaluations and seconds.
"""
from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

TASKS = ("sr4", "gaussian_deblur", "motion_deblur", "box_inpaint", "denoise")
SOLVERS = ("dcdp", "dcdp-tweedie", "dps")


def heldout_images(prior_name: str, count: int, size: int | None, channels: int = 3):
  """(N, H, W, channels) held-out images in [-1, 1] of the prior's data (never trained on).

  `channels` is the prior's (`jaxir.tasks.prior_channels`): the digits are grey
  (1) or replicated (3); photographs are converted with `jaxir.io.to_channels`.
  Kept for bird_table.py, deqir_table.py and deqir_convergence.py (the runner
  draws its natural64 patches one key per image, `jaxir.experiment.load_images`).
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


def config_dict(args) -> dict:
  """The runner config (a dict, as read from TOML) of this script's arguments."""
  over: dict = {}
  for item in args.set:
    solver, sep, kv = item.partition(":")
    if not sep or "=" not in kv:
      raise SystemExit(f"--set {item!r}: use SOLVER:KEY=VALUE, e.g. dps:num_steps=250")
    from jaxir.solvers.registry import parse_overrides
    over.setdefault(solver, {}).update(parse_overrides([kv]))
  images = {"source": "heldout", "count": args.count}
  if args.size is not None:
    images["size"] = args.size
  if not args.prior.startswith(("mnist32", "natural64")):
    raise SystemExit(f"--prior {args.prior!r}: held-out images exist for mnist32 and natural64; "
                     "for other priors write a runner config with a folder of images.")
  images["dataset"] = "mnist32" if args.prior.startswith("mnist32") else "natural64"
  tasks = []
  for t in args.tasks.split(","):
    tasks.append({"name": t} if args.sigma_y is None else {"name": t, "sigma_y": args.sigma_y})
  prior = {"name": args.prior}
  if args.checkpoint:
    prior["checkpoint"] = args.checkpoint
  return {"title": f"DCDP vs DPS, {args.prior}", "seeds": [args.seed], "batch": args.count,
          "prior": prior, "images": images, "tasks": tasks,
          "solvers": [{"name": s, **({"overrides": over[s]} if s in over else {})}
                      for s in args.solvers.split(",")]}


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
                  help="accepted for old command lines; the runner always keeps finished rows")
  args = ap.parse_args(argv)

  from jaxir.errors import JaxirError
  from jaxir.experiment import parse_config, progress_printer, run_experiment
  try:
    run_experiment(parse_config(config_dict(args)), args.out, progress=progress_printer())
  except JaxirError as e:
    print(f"quality_table: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
