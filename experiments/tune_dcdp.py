"""Tune DCDP presets for a shipped prior on TRAINING images only (never held-out ones).

  python experiments/tune_dcdp.py --prior mnist32 --count 8

For each task, a grid over DCDP settings is run with the Tweedie variant
(cheap: K NFEs) on `--count` training images, with the task's measurement
noise (`jaxir.tasks.TASKS`, or `--sigma-y`). By default the grid is the
effective data-consistency step (the official preset's lr times a factor) and
the first purification time T0; `--grid FIELD=v1,v2,...` (repeatable) sets
any `DCDPConfig` field instead (`lr_factor` scales the preset's lr), e.g.
`--grid lr_factor=0.1,1 --grid mu=0,3 --grid TK=0,50`. The setting with the
best mean PSNR is printed, with a line to paste into
`jaxir.solvers.dcdp.DCDP_PRESETS` under the name "<prior>/<task>", unless it
beats the official preset by less than 0.1 dB (then the official one stays).
Fields not in the grid stay the official ones; the DDIM variant uses the same
setting.

A thin wrapper over the experiment runner (`jaxir.experiment`): each grid
point is one row of a runner table (label "tweedie[...]", the official preset
"official"), every task's full config given as that task's overrides, results
in --out (resumable: an interrupted grid continues where it stopped).
`experiments/configs/tune_dcdp_mnist32.toml` is the mu x T0 grid as a config.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import jax
import numpy as np

TASKS = ("sr4", "gaussian_deblur", "motion_deblur", "box_inpaint", "denoise")
MIN_GAIN_DB = 0.1  # a tuned preset must beat the official one by this much


def training_images(prior_name: str, count: int, size: int = 64, channels: int = 3):
  """(N, H, W, channels) training images in [-1, 1]; `channels` is the prior's."""
  from jaxir import io
  from jaxir.train import data
  if prior_name.startswith("mnist32"):
    x = data.mnist32("train", channels=channels)
    idx = np.random.RandomState(1).choice(len(x), count, replace=False)
    return np.asarray(x[np.sort(idx)])
  bank = data.image_bank(data.natural_images("train"))
  return np.asarray(io.to_channels(np.asarray(data.sample_patches(
      jax.random.key(4321), bank, count, size, 256, augment=False)), channels))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32")
  ap.add_argument("--count", type=int, default=8)
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--lr-factors", default="0.3,1,3")
  ap.add_argument("--t0s", default="100,200,400")
  ap.add_argument("--grid", action="append", default=[],
                  help="FIELD=v1,v2,... over a DCDPConfig field or lr_factor (repeatable; "
                       "replaces --lr-factors/--t0s)")
  ap.add_argument("--sigma-y", type=float, default=None,
                  help="measurement noise std (default: the task's)")
  ap.add_argument("--out", default=None,
                  help="runner output folder (default runs/tune_dcdp_<prior>)")
  args = ap.parse_args(argv)

  from jaxir.cli import solver_config
  from jaxir.errors import JaxirError
  from jaxir.experiment import parse_config, run_experiment

  grid = _parse_grid(args.grid) if args.grid else {
      "lr_factor": [float(f) for f in args.lr_factors.split(",")],
      "T0": [int(t) for t in args.t0s.split(",")]}
  names = list(grid)
  tasks = args.tasks.split(",")
  settings: dict[str, dict] = {}  # row label -> {task: config}
  official = {}
  for task in tasks:
    _, base = solver_config("dcdp-tweedie", task, sigma_y=args.sigma_y)
    official[task] = tuple(1.0 if k == "lr_factor" else getattr(base, k) for k in names)
    for values in list(itertools.product(*grid.values())) + [official[task]]:
      cfg = _setting(base, dict(zip(names, values)))
      if cfg is not None:
        label = "official" if values == official[task] else f"tweedie[{_fmt(names, values)}]"
        settings.setdefault(label, {})[task] = cfg
  dataset = "mnist32" if args.prior.startswith("mnist32") else "natural64"
  raw = {"title": f"DCDP tuning (Tweedie), {args.prior} training images", "seeds": [100],
         "batch": args.count, "metrics": ["psnr"], "figure_images": 0,
         "prior": {"name": args.prior},
         "images": {"source": "train", "dataset": dataset, "count": args.count},
         "tasks": [{"name": t} if args.sigma_y is None else {"name": t, "sigma_y": args.sigma_y}
                   for t in tasks],
         "solvers": [{"name": "dcdp-tweedie", "label": label, "tasks": sorted(per_task),
                      "task_overrides": {t: dataclasses.asdict(c) for t, c in per_task.items()}}
                     for label, per_task in settings.items()]}
  print(f"{args.prior}: {args.count} training images; Tweedie DCDP; PSNR (dB) per "
        f"({', '.join(names)})", flush=True)
  try:
    table = run_experiment(parse_config(raw), args.out or f"runs/tune_dcdp_{args.prior}")
  except JaxirError as e:
    print(f"tune_dcdp: error: {e}", file=sys.stderr)
    return 2
  for task in tasks:
    scores = {r["method"]: r["psnr_mean"] for r in table if r["task"] == task}
    for label, score in scores.items():
      print(f"  {task} {label}: {score:.2f} dB", flush=True)
    best = max(scores, key=scores.get)
    if scores[best] < scores["official"] + MIN_GAIN_DB:
      best = "official"  # ties and tiny gains keep the official preset
    base = settings["official"][task]
    if best == "official":
      print(f"{task}: keep the official preset {base_name(task)!r} ({scores[best]:.2f} dB; no "
            f"setting beats it by {MIN_GAIN_DB} dB)", flush=True)
    else:
      cfg = settings[best][task]
      changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                 if getattr(cfg, f.name) != getattr(base, f.name)}
      print(f'{task}: best "{args.prior}/{task}": dataclasses.replace(DCDP_PRESETS['
            f'"{base_name(task)}"], {", ".join(f"{k}={v!r}" for k, v in changed.items())}),  '
            f"# {scores[best]:.2f} dB vs {scores['official']:.2f} dB official", flush=True)
  return 0


def _parse_grid(specs):
  from jaxir.solvers.dcdp import DCDPConfig
  types = {f.name: f.type for f in dataclasses.fields(DCDPConfig)}
  grid = {}
  for spec in specs:
    name, _, values = spec.partition("=")
    if name != "lr_factor" and name not in types:
      raise SystemExit(f"--grid {spec!r}: unknown field {name!r}; use lr_factor or one of "
                       f"{sorted(types)}.")
    cast = int if types.get(name) in ("int", int) else float
    grid[name] = [cast(v) for v in values.split(",") if v.strip()]
  return grid


def _setting(base, values):
  """The preset with grid values applied (None if the combination is invalid)."""
  from jaxir.errors import ConfigError
  kw = {k: v for k, v in values.items() if k != "lr_factor"}
  kw["lr"] = base.lr * values.get("lr_factor", 1.0) * (kw.pop("lr") / base.lr if "lr" in kw else 1)
  if "T0" in kw and "K" not in kw:
    kw["K"] = min(base.K, kw["T0"])
  try:
    return dataclasses.replace(base, **kw)
  except ConfigError:
    return None


def _fmt(names, values):
  return " ".join(f"{k}={v:g}" for k, v in zip(names, values))


def base_name(task):
  from jaxir.solvers.registry import DCDP_TASK_PRESETS
  return DCDP_TASK_PRESETS[task]


if __name__ == "__main__":
  sys.exit(main())
