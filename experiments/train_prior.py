"""Train (or resume) one of jaxir's own diffusion priors and export its EMA weights.

  python experiments/train_prior.py --config mnist32 --workdir runs/mnist32 \
      --steps 20000 --time-budget-min 60 --export checkpoints

Re-running the same command resumes from the last checkpoint in --workdir; a
time budget or Ctrl-C (SIGINT/SIGTERM) checkpoints the current step before
exiting, so no step is lost. When the run has reached --steps, the EMA params
are written as <export>/<config>.safetensors (guided-diffusion keys) plus
<export>/<config>.json (create_model kwargs, training record), the format of
the shipped priors.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="mnist32, natural64, *_gpu or tiny")
  ap.add_argument("--workdir", required=True, help="run directory (resumed if it exists)")
  ap.add_argument("--steps", type=int, default=None, help="total steps (default: config's)")
  ap.add_argument("--num-steps", type=int, default=None,
                  help="override the config's num_steps (the cosine schedule's length); "
                  "--steps defaults to it")
  ap.add_argument("--log-every", type=int, default=None, help="override the log interval")
  ap.add_argument("--sample-every", type=int, default=None,
                  help="override the sample-grid interval (0: no grids)")
  ap.add_argument("--time-budget-min", type=float, default=None,
                  help="stop (after checkpointing) once this many minutes have passed")
  ap.add_argument("--export", default=None,
                  help="folder for the shipped checkpoint (default: <workdir>/export)")
  ap.add_argument("--export-now", action="store_true",
                  help="export the current EMA params even if --steps is not reached")
  ap.add_argument("--seed", type=int, default=None, help="override the config's seed")
  ap.add_argument("--batch-size", type=int, default=None, help="override the global batch")
  ap.add_argument("--init-from", default=None,
                  help="fine-tune: start from a run directory's latest weights or an "
                  "exported .safetensors")
  ap.add_argument("--loss-weight", default=None, help="override: eps or truncated_snr")
  ap.add_argument("--t-lognormal", type=float, default=None,
                  help="override: fraction of t drawn from EDM's log-normal noise level")
  ap.add_argument("--learning-rate", type=float, default=None, help="override the peak lr")
  ap.add_argument("--lr-schedule", default=None,
                  help="override: constant or cosine (decays over --num-steps)")
  ap.add_argument("--warmup-steps", type=int, default=None, help="override the lr warm-up")
  ap.add_argument("--snapshot-every", type=int, default=None,
                  help="also export the EMA weights every N steps to <workdir>/snapshots "
                  "(for experiments/average_snapshots.py)")
  ap.add_argument("--export-name", default=None,
                  help="file stem of the export (default: the config's name)")
  ap.add_argument("--placement", choices=("auto", "split", "one"), default="auto",
                  help="with several host devices: split the batch over them, run it on one "
                  "device with XLA's Eigen convolutions, or time both first and keep the faster "
                  "(auto, for runs of 300 steps or more; jaxir.train.placement)")
  args = ap.parse_args(argv)

  # `import jaxir` made one host device per usable core (jaxir.runtime); the trainer splits
  # the batch over them or runs it on one of them, whichever a few timed steps say is faster
  # (jaxir.train.placement; docs/performance.md).
  import jax
  from tqdm import tqdm

  from jaxir.train import configs, trainer
  from jaxir.train.placement import AUTO_MIN_STEPS

  cfg = configs.get_config(args.config)
  over = {k: v for k, v in (("seed", args.seed), ("batch_size", args.batch_size),
                            ("init_from", args.init_from), ("loss_weight", args.loss_weight),
                            ("t_lognormal", args.t_lognormal),
                            ("learning_rate", args.learning_rate),
                            ("lr_schedule", args.lr_schedule),
                            ("warmup_steps", args.warmup_steps))
          if v is not None}
  for field in ("num_steps", "log_every", "sample_every", "snapshot_every"):
    if getattr(args, field) is not None:
      over[field] = getattr(args, field)
  cfg = cfg.replace(**over)
  total = cfg.num_steps if args.steps is None else args.steps
  budget = None if args.time_budget_min is None else 60.0 * args.time_budget_min

  stop = {"flag": False}

  def on_signal(signum, frame):
    if stop["flag"]:  # second signal: give up at once
      raise KeyboardInterrupt
    stop["flag"] = True

  signal.signal(signal.SIGINT, on_signal)
  signal.signal(signal.SIGTERM, on_signal)

  bar = {"bar": None}
  devices = jax.devices()
  placed = {"name": None}

  def callback(step, rec):
    if bar["bar"] is None:
      bar["bar"] = tqdm(total=total, initial=step - 1, desc=cfg.name, dynamic_ncols=True,
                        unit="step")
    b = bar["bar"]
    b.update(step - b.n)
    if rec is not None and "placement" in rec:
      timed = ", ".join(f"{k} {v:.0f} ms" for k, v in rec.get("placement_ms", {}).items())
      placed["name"] = rec["placement"]
      b.write(f"placement: {rec['placement']}" + (f" (timed: {timed})" if timed else ""),
              file=sys.stderr)
    if rec is not None:
      post = {"loss": f"{rec['loss']:.4f}", "it/s": f"{rec['steps_per_sec']:.2f}"}
      if "eval_loss" in rec:
        post["eval"] = f"{rec['eval_loss']:.4f}"
      b.set_postfix(post)
    return stop["flag"]

  print(f"{cfg.name}: {len(devices)} x {devices[0].device_kind}, global batch {cfg.batch_size}, "
        f"target {total} steps, workdir {args.workdir}", file=sys.stderr)
  if args.placement == "auto" and len(devices) > 1:
    print(f"placement: runs of {AUTO_MIN_STEPS}+ steps first time a few steps split over the "
          f"{len(devices)} devices and on one (about a minute; --placement split|one skips it)",
          file=sys.stderr)
  state = trainer.train_and_evaluate(cfg, args.workdir, num_steps=total, time_budget_s=budget,
                                     callback=callback, placement=args.placement)
  if bar["bar"] is not None:
    bar["bar"].close()
  step = int(state.step)
  print(f"stopped at step {step}/{total}", file=sys.stderr)
  if step >= total or args.export_now:
    recs = []
    with open(os.path.join(args.workdir, "metrics.jsonl")) as f:
      recs = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in recs if "eval_loss" in r]
    extra = {"steps": step, "final_loss": recs[-1]["loss"] if recs else None,
             "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
             "train_time_s": recs[-1].get("train_time_s") if recs else None,
             "hardware": f"{len(devices)} x {devices[0].device_kind}",
             "placement": placed["name"],
             "jax": jax.__version__}
    out = args.export or os.path.join(args.workdir, "export")
    paths = trainer.export_prior(trainer.build_model(cfg), state.ema_params, cfg, out,
                                 extra=extra, name=args.export_name)
    print("exported " + " ".join(paths), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
