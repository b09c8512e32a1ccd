"""Held-out check of a shipped prior: one-step Tweedie denoising PSNR and a sample grid.

  python experiments/eval_prior.py --prior mnist32 [--count 100] [--grid checkpoints/x.png]

For several timesteps t, noises images to x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
(same noise for both splits), denoises in one step with the prior's Tweedie
estimate E[x0 | x_t] (clipped to [-1, 1]) and prints PSNR on held-out vs
training images, and for reference the PSNR of the training split's mean image
(the minimum-MSE constant guess, which a denoiser should match or beat at every
t). A prior that generalizes scores about the same on both splits; one that
memorized its training set scores much higher on training images. The
equivalent noise std on [-1, 1] images is sqrt(1 - abar_t) / sqrt(abar_t).

natural64 is a 64x64 patch prior on a convolutional U-Net: its rows "holdout
256" run the same check on 256x256 crops of the held-out photographs, to see
how it serves as a prior on larger images.
Writes a DDIM (50 steps, eta 0) sample grid with --grid and all numbers with --json.
"""
from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

TIMESTEPS = (50, 100, 200, 400, 700)


def tweedie_psnr(prior, x0, key, t: int, batch: int = 50) -> float:
  """Mean PSNR (dB, [0, 1] scale) of the clipped one-step Tweedie estimate at timestep t."""
  from jaxir.diffusion import q_sample
  from jaxir.metrics import psnr

  @jax.jit
  def one(x, k):
    tt = jnp.full((x.shape[0],), t, jnp.int32)
    abar = prior.schedule.alphas_cumprod[t]
    xt = q_sample(x, abar, jax.random.normal(k, x.shape))
    x0_hat = jnp.clip(prior.x0(xt, tt), -1, 1)
    return psnr((x0_hat + 1) / 2, (x + 1) / 2)

  vals = [one(x0[i:i + batch], jax.random.fold_in(key, i)) for i in range(0, len(x0), batch)]
  return float(jnp.mean(jnp.concatenate(vals)))


def datasets(name: str, count: int, key):
  """{split label: (N, H, W, 3) images} for the prior's data."""
  from jaxir.train import data
  if name.startswith("mnist32"):
    return {"holdout": data.mnist32("holdout")[:count], "train": data.mnist32("train")[:count]}
  k1, k2, k3 = jax.random.split(key, 3)
  hold, train = data.natural_images("holdout"), data.natural_images("train")
  out = {"holdout": data.sample_patches(k1, data.image_bank(hold), count, 64, 256),
         "train": data.sample_patches(k2, data.image_bank(train), count, 64, 256)}
  # 256x256 crops of the held-out photographs, unresized (full resolution).
  crops = []
  for im in hold:
    H, W = im.shape[:2]
    for y in (0, H - 256):
      for x in (0, W // 2 - 128, W - 256):
        crops.append(im[y:y + 256, x:x + 256])
  out["holdout 256"] = np.stack(crops)
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32", help="shipped prior name")
  ap.add_argument("--checkpoint", default=None, help="or a checkpoint file/folder")
  ap.add_argument("--config", default=None, help="training-data name when --checkpoint is used")
  ap.add_argument("--count", type=int, default=100, help="images per split")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--grid", default=None, help="write a 4x4 DDIM sample grid PNG here")
  ap.add_argument("--json", default=None, help="write the numbers here")
  ap.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)),
                  help="comma-separated timesteps (default %(default)s)")
  args = ap.parse_args(argv)

  from jaxir.priors import load_prior
  from jaxir.train.trainer import save_grid
  prior = load_prior(args.prior, args.checkpoint)
  key = jax.random.key(args.seed)
  sets = datasets(args.config or args.prior, args.count, key)
  abar = np.asarray(prior.schedule.alphas_cumprod)
  steps = tuple(int(v) for v in args.timesteps.split(","))
  res = {"prior": args.prior, "count": args.count, "timesteps": list(steps),
         "sigma": [float(np.sqrt(1 - abar[t]) / np.sqrt(abar[t])) for t in steps],
         "psnr": {}}
  for label, x in sets.items():
    res["psnr"][label] = [tweedie_psnr(prior, jnp.asarray(x), jax.random.fold_in(key, 7), t,
                                       batch=50 if x.shape[1] <= 64 else 4)
                          for t in steps]
  # Reference: the minimum-MSE constant guess, the training split's mean image (a denoiser
  # worse than it at high noise has not learned the data's mean).
  from jaxir.metrics import psnr
  mean = jnp.mean(jnp.asarray(sets["train"]), axis=0)
  res["mean_image_psnr"] = {
      label: float(jnp.mean(psnr(jnp.broadcast_to((mean + 1) / 2, x.shape),
                                 (jnp.asarray(x) + 1) / 2)))
      for label, x in sets.items() if x.shape[1:] == mean.shape}
  print(f"Tweedie one-step denoising PSNR (dB), {args.prior}, {args.count} images per split")
  print("| split | n | " + " | ".join(f"t={t} (sigma {s:.2f})" for t, s in
                                        zip(steps, res["sigma"])) + " |")
  print("|---|---|" + "---|" * len(steps))
  for label, vals in res["psnr"].items():
    print(f"| {label} | {len(sets[label])} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
  print("PSNR of the training mean image (any t): " + ", ".join(
      f"{k} {v:.2f}" for k, v in res["mean_image_psnr"].items()))
  if args.grid:
    from jaxir.train.trainer import sample_grid
    side = next(iter(sets.values())).shape[1]
    imgs = sample_grid(prior.apply_fn, prior.params, jax.random.fold_in(key, 99),
                       (16, side, side, 3), steps=50)
    save_grid(np.asarray(imgs), args.grid, nrow=4)
    print(f"sample grid: {args.grid}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
