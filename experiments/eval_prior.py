"""Held-out checks of a shipped prior (issue 18): Tweedie denoising, samples, classical baselines.

  python experiments/eval_prior.py --prior mnist32 [--count 100] [--samples 200] [--json x.json]
  python experiments/eval_prior.py --prior natural64 [--crops 16] [--grid checkpoints/x.png]
  python experiments/eval_prior.py --prior mnist32 --quick     # under 2 minutes on one core
  python experiments/eval_prior.py --prior mnist32 --digit-seeds 0,1,2   # samples, 3 seeds

Every prior: for several timesteps t, noises images to x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps (same noise for both splits), denoises in one step with
the prior's Tweedie estimate E[x0 | x_t] (clipped to [-1, 1]) and prints PSNR
on held-out vs training images, and for reference the PSNR of the training
split's mean image (the minimum-MSE constant guess, which a denoiser should
match or beat at every t; the "beats mean" row says where it does). A prior
that generalizes scores about the same on both splits; one that memorized its
training set scores much higher on training images. The equivalent noise std
on [-1, 1] images is sqrt(1 - abar_t) / sqrt(abar_t).

mnist32 also gets the sample checks of issue 18: a small CNN digit classifier
is trained here on the 4,500 training digits (its held-out accuracy is
printed) and applied to `--samples` DDIM-50 samples (eta 0; `--sample-steps` and
`--eta` change the sampler, `--sampler edm` uses EDM's stochastic Heun sampler with
`--sample-steps` steps and `--churn`): the fraction
labelled with p >= 0.9, the fraction of each digit (goal: 4-16% each), and the
distance of each sample to its nearest training digit against the same for
held-out digits (a ratio near 1: digit-like and not copies; far above 1: not
digits; a large "closer than held-out p5" fraction: copies). For a prior trained
with the npm package's further digits (`mnist32_more`), `--extra-digits` measures
those distances against all 9,500 digits it saw; the classifier stays the same.

natural64 (a 64x64 patch prior) also gets the denoising comparison of issue
18 on held-out 64x64 crops (full resolution, random positions from a fixed
seed) of grace_hopper and kodim23 at sigma 0.1 / 0.2 / 0.4 on [-1, 1]: the
one-step Tweedie denoiser (y = x + sigma n is scaled to x_t = sqrt(abar_t) y
at the t whose sqrt((1 - abar_t) / abar_t) is closest to sigma) against the best Gaussian smoothing and the best total-variation
denoising (`skimage.restoration.denoise_tv_chambolle`), each with its width /
weight picked on a grid per noise level using the clean crops (an oracle
choice that favours the baselines), and BM3D (the `bm3d` package, at the true
sigma) when it is installed. Its rows "holdout 256" run the Tweedie check on
256x256 crops of the held-out photographs, to see how it serves as a prior on
larger images (skipped with --quick).

Prints markdown tables; writes a 4x4 sample grid with --grid (mnist32: the
first 16 classified samples, drawn by the chosen sampler; otherwise DDIM-50)
and all numbers with --json.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

TIMESTEPS = (50, 100, 200, 400, 700)
SIGMAS = (0.1, 0.2, 0.4)          # issue 18's denoising levels, std on [-1, 1]
CONFIDENT = 0.9                   # issue 18: a "confident" label has p >= 0.9
DIGIT_RANGE = (0.04, 0.16)        # issue 18: each digit 4-16% of the samples
GAUSS_WIDTHS = (0.5, 0.7, 0.9, 1.1, 1.4, 1.8, 2.4, 3.2, 4.2)     # pixels
TV_WEIGHTS = tuple(float(w) for w in np.geomspace(0.01, 1.0, 13))   # on [0, 1] images


# ------------------------------------------------------------------- Tweedie ----

@jax.jit
def _tweedie(prior, x0, noise, t):
  """Clipped one-step Tweedie estimate from x_t = q_sample(x0, t, noise); t traced."""
  from jaxir.diffusion import q_sample
  tt = jnp.full((x0.shape[0],), t, jnp.int32)
  xt = q_sample(x0, prior.schedule.alphas_cumprod[t], noise)
  return jnp.clip(prior.x0(xt, tt), -1, 1)


@jax.jit
def _tweedie_xt(prior, xt, t):
  """Clipped Tweedie estimate E[x0 | x_t] of a given x_t at timestep t (traced)."""
  return jnp.clip(prior.x0(xt, jnp.full((xt.shape[0],), t, jnp.int32)), -1, 1)


def _psnr_unit(a, b):
  """Per-image PSNR (dB) of [-1, 1] images on the [0, 1] scale."""
  from jaxir.metrics import psnr
  return psnr((jnp.asarray(a) + 1) / 2, (jnp.asarray(b) + 1) / 2)


def tweedie_psnr(prior, x0, key, t: int, batch: int = 50) -> float:
  """Mean PSNR (dB, [0, 1] scale) of the clipped one-step Tweedie estimate at timestep t."""
  vals = []
  for i in range(0, len(x0), batch):
    x = jnp.asarray(x0[i:i + batch])
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape)
    vals.append(_psnr_unit(_tweedie(prior, x, noise, t), x))
  return float(jnp.mean(jnp.concatenate(vals)))


def datasets(name: str, count: int, key, channels: int = 3, big: bool = True):
  """{split label: (N, H, W, channels) images} for the prior's data."""
  from jaxir import io
  from jaxir.train import data
  if name.startswith("mnist32"):
    return {"holdout": data.mnist32("holdout", channels=channels)[:count],
            "train": data.mnist32("train", channels=channels)[:count]}
  k1, k2, _ = jax.random.split(key, 3)
  hold, train = data.natural_images("holdout"), data.natural_images("train")
  conv = functools.partial(io.to_channels, channels=channels)
  out = {"holdout": conv(np.asarray(data.sample_patches(k1, data.image_bank(hold), count, 64,
                                                        256))),
         "train": conv(np.asarray(data.sample_patches(k2, data.image_bank(train), count, 64,
                                                      256)))}
  if big:  # 256x256 crops of the held-out photographs, unresized (full resolution).
    crops = []
    for im in hold:
      H, W = im.shape[:2]
      for y in (0, H - 256):
        for x in (0, W // 2 - 128, W - 256):
          crops.append(im[y:y + 256, x:x + 256])
    out["holdout 256"] = conv(np.stack(crops))
  return out


# ------------------------------------------------------- mnist32: samples ----

def _classifier_apply(params, x):
  """Small CNN: (N, 32, 32, 1) in [-1, 1] -> (N, 10) logits."""
  def conv(h, w, b):
    h = jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(h + b)

  def pool(h):
    return jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4

  h = pool(conv(x, *params["c1"]))
  h = pool(conv(h, *params["c2"]))
  h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["d1"][0] + params["d1"][1])
  return h @ params["d2"][0] + params["d2"][1]


def _classifier_init(key):
  ks = jax.random.split(key, 4)

  def he(k, shape):
    return jax.random.normal(k, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))

  return {"c1": (he(ks[0], (3, 3, 1, 16)), jnp.zeros(16)),
          "c2": (he(ks[1], (3, 3, 16, 32)), jnp.zeros(32)),
          "d1": (he(ks[2], (8 * 8 * 32, 64)), jnp.zeros(64)),
          "d2": (he(ks[3], (64, 10)) * 0.1, jnp.zeros(10))}


def _grey(x):
  """(N, H, W, C) -> (N, H, W, 1): the channel mean (grey digits stay as they are)."""
  x = jnp.asarray(x)
  return x if x.shape[-1] == 1 else jnp.mean(x, axis=-1, keepdims=True)


def train_classifier(x, y, key, *, epochs: int = 12, batch: int = 64, lr: float = 2e-3,
                     shift: int = 1):
  """Train the digit CNN (Adam, random shifts of up to `shift` pixels); returns params."""
  import optax
  x, y = _grey(x), jnp.asarray(y)
  opt = optax.adam(lr)
  params = _classifier_init(jax.random.fold_in(key, 0))
  state = opt.init(params)

  @jax.jit
  def step(params, state, xb, yb, k):
    dy, dx = jax.random.randint(k, (2,), -shift, shift + 1)
    xb = jnp.roll(xb, (dy, dx), axis=(1, 2))  # wraps background only: 2-pixel border

    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(_classifier_apply(p, xb), yb).mean()

    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state

  n = x.shape[0]
  for e in range(epochs):
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 100 + e), n))
    for i in range(0, n - batch + 1, batch):
      idx = perm[i:i + batch]
      params, state = step(params, state, x[idx], y[idx], jax.random.fold_in(key, e * n + i))
  return params


@jax.jit
def _probs(params, x):
  return jax.nn.softmax(_classifier_apply(params, x), axis=-1)


def classify(params, x, batch: int = 500):
  """(N, 10) class probabilities of (N, 32, 32, C) images (C averaged to grey)."""
  x = _grey(x)
  return np.concatenate([np.asarray(_probs(params, x[i:i + batch]))
                         for i in range(0, x.shape[0], batch)])


def nearest_distance(x, bank, batch: int = 256) -> np.ndarray:
  """Euclidean distance (on [-1, 1] grey pixels) of each image to its nearest in `bank`."""
  a = np.asarray(_grey(x), np.float32).reshape(len(x), -1)
  b = np.asarray(_grey(bank), np.float32).reshape(len(bank), -1)
  bb = np.sum(b * b, axis=1)
  out = []
  for i in range(0, len(a), batch):
    ai = a[i:i + batch]
    d2 = np.sum(ai * ai, axis=1)[:, None] + bb[None] - 2 * ai @ b.T
    out.append(np.sqrt(np.maximum(d2.min(axis=1), 0)))
  return np.concatenate(out)


def ddim_samples(prior, key, n: int, side: int, channels: int, batch: int = 100,
                 steps: int = 50, eta: float = 0.0, sampler: str = "ddim", churn: float = 80.0):
  """n unconditional samples of the prior, (n, side, side, C): DDIM (`steps` steps,
  `eta`) or, with sampler "edm", EDM's stochastic sampler (`steps` steps, `churn`).

  A progress bar on stderr counts the network evaluations (n x steps, or n x (2 steps - 1)
  for EDM; DDIM-1000 of 200 digits is about 40 minutes on one CPU core)."""
  from jaxir.progress import track, with_progress
  from jaxir.train.trainer import sample_grid
  counted = with_progress(prior)
  out = []
  nfe = 2 * steps - 1 if sampler == "edm" else steps
  with track(total=n * nfe, desc=f"{sampler.upper()}-{steps} samples", unit="img-step"):
    for i in range(0, n, batch):
      m = min(batch, n - i)
      out.append(np.asarray(sample_grid(counted.apply_fn, counted.params,
                                        jax.random.fold_in(key, i),
                                        (m, side, side, channels), steps=steps, eta=eta,
                                        sampler=sampler, churn=churn)))
  return np.concatenate(out)


def digit_checks(prior, key, *, samples: int, channels: int, epochs: int,
                 samples_out=None, steps: int = 50, eta: float = 0.0,
                 extra_digits: bool = False, sampler: str = "ddim",
                 churn: float = 80.0) -> dict:
  """Issue 18's sample checks of a digit prior (see the module docstring)."""
  from jaxir.train import data
  t0 = time.perf_counter()
  xtr, ytr = data.mnist32("train", return_labels=True, channels=1)
  bank = data.mnist32("train", channels=1, extra_digits=True) if extra_digits else xtr
  xho, yho = data.mnist32("holdout", return_labels=True, channels=1)
  clf = train_classifier(xtr, ytr, jax.random.fold_in(key, 1), epochs=epochs)
  p_ho = classify(clf, xho)
  t_clf = time.perf_counter() - t0
  t0 = time.perf_counter()
  xs = ddim_samples(prior, jax.random.fold_in(key, 2), samples, 32, channels, steps=steps,
                    eta=eta, sampler=sampler, churn=churn)
  t_samp = time.perf_counter() - t0
  if samples_out is not None:
    samples_out.append(xs)
  p_s = classify(clf, xs)
  labels = p_s.argmax(axis=1)
  frac = np.bincount(labels, minlength=10) / len(labels)
  d_s = nearest_distance(xs, bank)
  d_h = nearest_distance(xho, bank)
  tint = float(np.mean(np.std(xs, axis=-1))) if channels > 1 else 0.0
  return {
      "classifier": {"heldout_accuracy": float(np.mean(p_ho.argmax(1) == yho)),
                     "heldout_confident": float(np.mean(p_ho.max(1) >= CONFIDENT)),
                     "heldout_fractions": [float(f) for f in
                                           np.bincount(p_ho.argmax(1), minlength=10) / len(yho)],
                     "epochs": epochs, "train_n": int(len(ytr)), "seconds": t_clf},
      "samples": {"n": int(samples), "ddim_steps": int(steps), "eta": float(eta),
                  "sampler": sampler, "churn": float(churn) if sampler == "edm" else None,
                  "seconds": t_samp,
                  "confident": float(np.mean(p_s.max(1) >= CONFIDENT)),
                  "digit_fractions": [float(f) for f in frac],
                  "digits_in_range": bool(np.all((frac >= DIGIT_RANGE[0]) &
                                                 (frac <= DIGIT_RANGE[1]))),
                  "channel_std": tint},
      "nearest_train": {"samples_mean": float(d_s.mean()), "heldout_mean": float(d_h.mean()),
                        "samples_median": float(np.median(d_s)),
                        "heldout_median": float(np.median(d_h)),
                        "ratio_mean": float(d_s.mean() / d_h.mean()),
                        "bank_n": int(len(bank)),
                        "closer_than_heldout_p5": float(np.mean(d_s < np.percentile(d_h, 5)))},
  }


def print_digit_checks(r: dict) -> None:
  c, s, nn = r["classifier"], r["samples"], r["nearest_train"]
  print(f"\nDigit classifier (small CNN, {c['train_n']} training digits, {c['epochs']} epochs, "
        f"{c['seconds']:.0f} s): held-out accuracy {100 * c['heldout_accuracy']:.1f}%, "
        f"confident (p >= {CONFIDENT}) on {100 * c['heldout_confident']:.1f}% of held-out digits")
  if s.get("sampler") == "edm":
    sampler = f"EDM-{s['ddim_steps']} (churn {s['churn']:g})"
  else:
    sampler = f"DDIM-{s['ddim_steps']}" + (f" eta {s['eta']:g}" if s.get("eta") else "")
  print(f"\n{s['n']} {sampler} samples ({s['seconds']:.0f} s) | samples | held-out digits | goal |"
        "\n|---|---|---|---|")
  print(f"| confidently labelled (p >= {CONFIDENT}) | {100 * s['confident']:.1f}% | "
        f"{100 * c['heldout_confident']:.1f}% | >= 90% |")
  for d, (f, h) in enumerate(zip(s["digit_fractions"], c["heldout_fractions"])):
    print(f"| labelled {d} | {100 * f:.1f}% | {100 * h:.1f}% | 4-16% |")
  print(f"| every digit in 4-16% | {'yes' if s['digits_in_range'] else 'no'} | | yes |")
  if s["channel_std"]:
    print(f"| mean std across channels (tint) | {s['channel_std']:.3f} | 0 | 0 |")
  bank = f" of {nn['bank_n']}" if "bank_n" in nn else ""
  print(f"\nNearest training digit{bank} (L2 on [-1, 1]) | samples | held-out digits |"
        "\n|---|---|---|")
  print(f"| mean | {nn['samples_mean']:.2f} | {nn['heldout_mean']:.2f} |")
  print(f"| median | {nn['samples_median']:.2f} | {nn['heldout_median']:.2f} |")
  print(f"ratio of means (samples / held-out): {nn['ratio_mean']:.2f} (goal: about 1); "
        f"samples closer than the held-out 5th percentile: "
        f"{100 * nn['closer_than_heldout_p5']:.1f}% (copies; about 5% expected)")


def print_digit_summary(runs: dict) -> None:
  """One row per seed of `digit_checks` results, and their mean."""
  print("\n| seed | confidently labelled | digit shares | every digit in 4-16% | "
        "nearest-training ratio |\n|---|---|---|---|---|")
  conf, ratio = [], []
  for sd, r in runs.items():
    s, nn = r["samples"], r["nearest_train"]
    conf.append(s["confident"])
    ratio.append(nn["ratio_mean"])
    print(f"| {sd} | {100 * s['confident']:.1f}% | {100 * min(s['digit_fractions']):.1f}-"
          f"{100 * max(s['digit_fractions']):.1f}% | {'yes' if s['digits_in_range'] else 'no'} "
          f"| {nn['ratio_mean']:.2f} |")
  print(f"| mean | {100 * np.mean(conf):.1f}% | | | {np.mean(ratio):.2f} |")


# ------------------------------------------- natural64: classical denoisers ----

def heldout_crops(per_image: int, side: int = 64, seed: int = 0) -> np.ndarray:
  """side x side crops of the held-out photographs at full resolution (unresized), at
  uniformly random positions drawn from `seed` (the same crops on every run)."""
  from jaxir.train import data
  rng = np.random.RandomState(seed)
  crops = []
  for im in data.natural_images("holdout"):
    H, W = im.shape[:2]
    for _ in range(per_image):
      y, x = rng.randint(0, H - side + 1), rng.randint(0, W - side + 1)
      crops.append(im[y:y + side, x:x + side])
  return np.stack(crops).astype(np.float32)


def sigma_timestep(abar: np.ndarray, sigma: float) -> int:
  """The t whose noise-to-signal ratio sqrt((1 - abar_t) / abar_t) is closest to sigma."""
  return int(np.argmin(np.abs(np.sqrt((1 - abar) / abar) - sigma)))


def _best(fn, params, x_unit, y_unit):
  """(best mean PSNR, best parameter) of fn(y, p) over the grid `params` ([0, 1] images)."""
  best = (-np.inf, None)
  for p in params:
    out = np.stack([np.clip(fn(y, p), 0, 1) for y in y_unit])
    mse = np.mean((out - x_unit) ** 2, axis=(1, 2, 3))
    v = float(np.mean(10 * np.log10(1 / mse)))
    best = max(best, (v, p), key=lambda b: b[0])
  return best


def denoise_checks(prior, x: np.ndarray, key, *, sigmas=SIGMAS, quick: bool = False) -> dict:
  """Tweedie vs Gaussian smoothing, TV and (if installed) BM3D on clean crops x in [-1, 1]."""
  from scipy.ndimage import gaussian_filter
  from skimage.restoration import denoise_tv_chambolle
  try:
    import bm3d
  except ImportError:
    bm3d = None
  abar = np.asarray(prior.schedule.alphas_cumprod, np.float64)
  x = np.asarray(x, np.float32)
  xu = (x + 1) / 2
  c = x.shape[-1]
  rows = []
  for i, sigma in enumerate(sigmas):
    y = x + sigma * np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape))
    yu = (y + 1) / 2                               # noise std sigma / 2 on [0, 1]
    t = sigma_timestep(abar, sigma)
    xt = np.float32(np.sqrt(abar[t])) * jnp.asarray(y, jnp.float32)
    est = np.concatenate([np.asarray(_tweedie_xt(prior, xt[j:j + 16], t))
                          for j in range(0, len(x), 16)])
    row = {"sigma": sigma, "t": t, "sigma_t": float(np.sqrt((1 - abar[t]) / abar[t])),
           "noisy": float(np.mean(_psnr_unit(np.clip(y, -1, 1), x))),
           "tweedie": float(np.mean(_psnr_unit(est, x)))}
    widths = GAUSS_WIDTHS[::2] if quick else GAUSS_WIDTHS
    row["gaussian"], row["gaussian_width"] = _best(
        lambda v, s: gaussian_filter(v, (s, s, 0)), widths, xu, yu)
    weights = TV_WEIGHTS[::3] if quick else TV_WEIGHTS
    row["tv"], row["tv_weight"] = _best(
        lambda v, w: denoise_tv_chambolle(v, weight=w, channel_axis=-1), weights, xu, yu)
    if bm3d is not None:
      def run_bm3d(v, s):
        if c == 3:
          return bm3d.bm3d_rgb(v, s)
        return bm3d.bm3d(v[..., 0], s)[..., None]
      row["bm3d"], _ = _best(run_bm3d, (sigma / 2,), xu, yu)
    rows.append(row)
  note = None if bm3d is not None else ("BM3D column skipped: the `bm3d` package is not "
                                        "installed (`pip install bm3d` to add it).")
  return {"n": int(len(x)), "rows": rows, "note": note}


def print_denoise_checks(r: dict, prior_name: str) -> None:
  has_bm3d = any("bm3d" in row for row in r["rows"])
  print(f"\nDenoising {r['n']} held-out 64x64 crops (grace_hopper, kodim23; unresized), PSNR "
        "dB on [0, 1]; "
        "Gaussian / TV: best width / weight on a grid (oracle)")
  head = "| sigma | t | noisy | Tweedie (" + prior_name + ") | Gaussian (width) | TV (weight) |"
  print(head + (" BM3D |" if has_bm3d else "") + "\n|---|---|---|---|---|---|"
        + ("---|" if has_bm3d else ""))
  for row in r["rows"]:
    line = (f"| {row['sigma']} | {row['t']} | {row['noisy']:.2f} | {row['tweedie']:.2f} | "
            f"{row['gaussian']:.2f} ({row['gaussian_width']:g}) | {row['tv']:.2f} "
            f"({row['tv_weight']:.3g}) |")
    print(line + (f" {row['bm3d']:.2f} |" if has_bm3d else ""))
  if r["note"]:
    print(r["note"])


# ---------------------------------------------------------------------- main ----

def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32", help="shipped prior name")
  ap.add_argument("--checkpoint", default=None, help="or a checkpoint file/folder")
  ap.add_argument("--config", default=None, help="training-data name when --checkpoint is used")
  ap.add_argument("--count", type=int, default=None,
                  help="images per split for the Tweedie table (default 100; --quick 32)")
  ap.add_argument("--samples", type=int, default=None,
                  help="mnist32: samples to classify (default 200; --quick 32)")
  ap.add_argument("--sample-steps", type=int, default=50,
                  help="mnist32: DDIM steps of those samples (default %(default)s)")
  ap.add_argument("--eta", type=float, default=0.0,
                  help="mnist32: DDIM eta of those samples (0 deterministic, 1 ancestral)")
  ap.add_argument("--sampler", choices=("ddim", "edm"), default="ddim",
                  help="mnist32: sampler of those samples (edm: Karras et al.'s stochastic "
                  "Heun sampler, --sample-steps steps, 2 x steps - 1 network calls)")
  ap.add_argument("--churn", type=float, default=80.0,
                  help="mnist32, --sampler edm: S_churn (default %(default)s, Karras et al.'s "
                  "for guided-diffusion's ImageNet-64 network)")
  ap.add_argument("--epochs", type=int, default=None,
                  help="mnist32: classifier training epochs (default 12; --quick 6)")
  ap.add_argument("--crops", type=int, default=None,
                  help="natural: held-out 64x64 crops per photograph (default 16; --quick 4)")
  ap.add_argument("--quick", action="store_true",
                  help="small counts, no 256x256 rows: a smoke run in under 2 minutes")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--extra-digits", action="store_true",
                  help="nearest-training distances against the 9,500 digits of mnist32_more")
  ap.add_argument("--digit-seeds", default=None,
                  help="mnist32: comma-separated seeds of the sample checks (each its own "
                  "classifier and samples; default: --seed only); the summary gives each and "
                  "their mean, since one seed's confident share moves by several points")
  ap.add_argument("--grid", default=None, help="write a 4x4 sample grid PNG here")
  ap.add_argument("--json", default=None, help="write the numbers here")
  ap.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)),
                  help="comma-separated timesteps (default %(default)s)")
  args = ap.parse_args(argv)
  q = args.quick
  count = args.count or (32 if q else 100)
  n_samples = args.samples or (32 if q else 200)
  epochs = args.epochs or (6 if q else 12)
  crops = args.crops or (4 if q else 16)

  from jaxir.priors import load_prior
  from jaxir.tasks import prior_channels
  from jaxir.train.trainer import save_grid
  t_start = time.perf_counter()
  prior = load_prior(args.prior, args.checkpoint)
  channels = prior_channels(prior)
  key = jax.random.key(args.seed)
  data_name = args.config or args.prior
  sets = datasets(data_name, count, key, channels, big=not q)
  abar = np.asarray(prior.schedule.alphas_cumprod)
  steps = tuple(int(v) for v in args.timesteps.split(","))
  res = {"prior": args.prior, "count": count, "channels": channels, "quick": q,
         "timesteps": list(steps),
         "sigma": [float(np.sqrt(1 - abar[t]) / np.sqrt(abar[t])) for t in steps],
         "psnr": {}}
  for label, x in sets.items():
    res["psnr"][label] = [tweedie_psnr(prior, jnp.asarray(x), jax.random.fold_in(key, 7), t,
                                       batch=50 if x.shape[1] <= 64 else 4)
                          for t in steps]
  # Reference: the minimum-MSE constant guess, the training split's mean image (a denoiser
  # worse than it at high noise has not learned the data's mean).
  mean = jnp.mean(jnp.asarray(sets["train"]), axis=0)
  res["mean_image_psnr"] = {
      label: float(jnp.mean(_psnr_unit(jnp.broadcast_to(mean, x.shape), x)))
      for label, x in sets.items() if x.shape[1:] == mean.shape}
  res["beats_mean_image"] = [bool(v > res["mean_image_psnr"]["holdout"])
                             for v in res["psnr"]["holdout"]]
  print(f"Tweedie one-step denoising PSNR (dB), {args.prior} ({channels} channel(s)), "
        f"{count} images per split")
  print("| split | n | " + " | ".join(f"t={t} (sigma {s:.2f})" for t, s in
                                        zip(steps, res["sigma"])) + " |")
  print("|---|---|" + "---|" * len(steps))
  for label, vals in res["psnr"].items():
    print(f"| {label} | {len(sets[label])} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
  print("| holdout beats mean image | | " + " | ".join(
      "yes" if b else "no" for b in res["beats_mean_image"]) + " |")
  print("PSNR of the training mean image (any t): " + ", ".join(
      f"{k} {v:.2f}" for k, v in res["mean_image_psnr"].items()))

  grid_samples = []
  if data_name.startswith("mnist32"):
    seeds = ([int(v) for v in args.digit_seeds.split(",")] if args.digit_seeds
             else [args.seed])
    runs = {}
    for sd in seeds:
      print(f"\n## Sample checks, seed {sd}")
      runs[sd] = digit_checks(prior, jax.random.fold_in(jax.random.key(sd), 11),
                              samples=n_samples, channels=channels, epochs=epochs,
                              samples_out=grid_samples, steps=args.sample_steps, eta=args.eta,
                              sampler=args.sampler, churn=args.churn,
                              extra_digits=args.extra_digits)
      print_digit_checks(runs[sd])
    res["digits"] = runs[seeds[0]]
    if len(seeds) > 1:
      res["digits_by_seed"] = {str(sd): r for sd, r in runs.items()}
      print_digit_summary(runs)
  else:
    from jaxir import io
    x = np.asarray(io.to_channels(heldout_crops(crops), channels))
    res["denoise"] = denoise_checks(prior, x, jax.random.fold_in(key, 13), quick=q)
    print_denoise_checks(res["denoise"], args.prior)
  if args.grid:
    side = next(iter(sets.values())).shape[1]
    if grid_samples and len(grid_samples[0]) >= 16:
      imgs = grid_samples[0][:16]  # the first 16 of the classified samples
    else:
      from jaxir.train.trainer import sample_grid
      imgs = sample_grid(prior.apply_fn, prior.params, jax.random.fold_in(key, 99),
                         (16, side, side, channels), steps=50)
    save_grid(np.asarray(imgs), args.grid, nrow=4)
    print(f"sample grid: {args.grid}")
  res["seconds"] = time.perf_counter() - t_start
  print(f"\n{res['seconds']:.0f} s in all")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
