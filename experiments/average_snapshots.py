"""Post-hoc weight averaging of a training run's EMA snapshots.

`experiments/train_prior.py --snapshot-every N` exports the EMA weights every N steps to
`<workdir>/snapshots/<name>_<step>.safetensors` (+ `.json`). This script averages the
snapshots in a step range, uniformly, into one prior with the same files as an export:
an average of K snapshots N steps apart acts like an EMA about K * N / 2 steps longer
than the run's own (the idea of post-hoc EMA in Karras et al., "Analyzing and Improving
the Training Dynamics of Diffusion Models", CVPR 2024, in its simplest form), so the
averaging length can be chosen after training by evaluating a few (`eval_prior.py`).

    python experiments/average_snapshots.py runs/mnist32_wide/snapshots --first 20000 \
        --last 24000 --out /tmp/avg --name mnist32

The JSON card is the last snapshot's, with `steps` the last step and an `averaged`
field (steps averaged, count).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

import numpy as np


def snapshot_steps(directory: str) -> dict[int, str]:
  """{step: path of the .safetensors} of the snapshots in `directory`."""
  out = {}
  for path in glob.glob(os.path.join(directory, "*_*.safetensors")):
    m = re.search(r"_(\d+)\.safetensors$", path)
    if m:
      out[int(m.group(1))] = path
  return dict(sorted(out.items()))


def average_files(paths: list[str]) -> dict[str, np.ndarray]:
  """Elementwise mean of the tensors of several safetensors files (same keys and shapes)."""
  from safetensors.numpy import load_file
  if not paths:
    raise ValueError("no snapshots to average; check the folder and the step range.")
  acc, first = None, None
  for p in paths:
    d = load_file(p)
    if acc is None:
      first = p
      acc = {k: v.astype(np.float64) for k, v in d.items()}
      dtypes = {k: v.dtype for k, v in d.items()}
      continue
    if set(d) != set(acc):
      missing, extra = sorted(set(acc) - set(d)), sorted(set(d) - set(acc))
      raise ValueError(f"{p} and {first} hold different tensors (missing {missing[:5]}, "
                       f"unexpected {extra[:5]}): snapshots of different runs?")
    for k, v in d.items():
      if v.shape != acc[k].shape:
        raise ValueError(f"{p}: {k} has shape {v.shape}, {first} {acc[k].shape}.")
      acc[k] += v
  return {k: (v / len(paths)).astype(dtypes[k]) for k, v in acc.items()}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("snapshots", help="a run's snapshots folder")
  ap.add_argument("--first", type=int, default=0, help="first step averaged (inclusive)")
  ap.add_argument("--last", type=int, default=None, help="last step averaged (default: newest)")
  ap.add_argument("--out", required=True, help="output folder")
  ap.add_argument("--name", default=None, help="file stem (default: the snapshots' name)")
  args = ap.parse_args(argv)

  from safetensors.numpy import save_file
  steps = snapshot_steps(args.snapshots)
  last = args.last if args.last is not None else max(steps, default=-1)
  chosen = [s for s in steps if args.first <= s <= last]
  if not chosen:
    print(f"no snapshots in [{args.first}, {last}] in {args.snapshots} (found steps "
          f"{list(steps)[:10]}{'...' if len(steps) > 10 else ''})", file=sys.stderr)
    return 2
  paths = [steps[s] for s in chosen]
  avg = average_files(paths)
  stem = re.sub(r"_\d+$", "", os.path.basename(paths[-1])[:-len(".safetensors")])
  name = args.name or stem
  os.makedirs(args.out, exist_ok=True)
  save_file(avg, os.path.join(args.out, f"{name}.safetensors"))
  with open(paths[-1][:-len(".safetensors")] + ".json") as f:
    meta = json.load(f)
  meta["steps"] = chosen[-1]
  meta["averaged"] = {"steps": chosen, "count": len(chosen)}
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  print(f"averaged {len(chosen)} snapshots (steps {chosen[0]}-{chosen[-1]}) into "
        f"{os.path.join(args.out, name)}.safetensors")
  return 0


if __name__ == "__main__":
  sys.exit(main())
