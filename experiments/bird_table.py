"""BIRD on a shipped prior and held-out images: blind and known tasks, step size, gradient paths.

  python experiments/bird_table.py --prior mnist32 --count 4
  python experiments/bird_table.py --prior mnist32 --count 1 --iterations 5 --quick   # smoke run

Rows (each restores `--count` held-out images as one vmapped, jit-compiled batch,
every image with its own key; compilation excluded from the seconds):

* blind Gaussian deblur and blind motion deblur: the official MLP kernel (k x k,
  k = 41 / 256 of the image side, at least 7), true kernel a Gaussian of std k / 6
  or a random motion kernel (intensity 0.5); kernel error = sum |k_hat - k_true|
  at the start (the MLP's first kernel) and at the end;
* non-blind Gaussian deblur (the true kernel given: the reference the blind run
  should approach);
* SR x8 (8x8 average pooling, official preset), denoising (the official speckle
  noise u (1 + 0.32 g) + 0.03 n on [0, 1]), box inpainting (an 80/256 box, known
  mask), blind SR x4 (unknown Gaussian kernel, then decimation);
* the paper's step-size study (delta_t in {50, 100, 200, 250}) and both gradient
  paths (official: U-Net held constant; full: backprop with jax.checkpoint) on
  blind Gaussian deblur, started as the last main row (`--z-init`, `--radius`).

Blur, SR and inpainting measurements get BIRD's noise (`bird_noise`: u (1 + 0.096 g)
+ 0.01 n on [0, 1]). The table gives PSNR / SSIM / LPIPS of the restored images,
PSNR of the measurement (where it has the image's size), kernel errors, NFE and
seconds per image. Presets are the official configs (`BIRD_PRESETS`), with
`--iterations` overriding the iteration count of every row.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("blind_gauss", "blind_motion", "known_gauss", "sr8", "denoise", "inpaint", "blind_sr4")


def _odd(v) -> int:
  return max(1, int(round(v)) // 2 * 2 + 1)


def make_task(task, key, x, ksize):
  """(degradation, y, true kernel or None, preset name) for one image x (H, W, C)."""
  from jaxir.operators.blind import BlindBlur, BlindSR, BlurDecimate, NonBlind, mlp_kernel
  from jaxir.operators.blur import Blur
  from jaxir.operators.denoise import Identity
  from jaxir.operators.inpaint import Inpaint
  from jaxir.operators.kernels import gaussian_kernel, motion_kernel
  from jaxir.operators.noise import bird_noise
  from jaxir.operators.superres import AvgPoolSR
  shape = tuple(x.shape)
  side = shape[0]
  k_ker, k_code, k_noise = jax.random.split(key, 3)
  mlp = mlp_kernel(k_code, ksize)
  if task in ("blind_gauss", "known_gauss", "blind_motion"):
    kt = gaussian_kernel(ksize, ksize / 6.0) if task != "blind_motion" else \
        motion_kernel(k_ker, ksize, 0.5)
    y = bird_noise(k_noise, Blur(shape, kt, "zeros").A(x))
    deg = NonBlind(Blur(shape, kt, "zeros")) if task == "known_gauss" else BlindBlur(shape, mlp)
    return deg, y, kt, "blind_deblur"
  if task == "blind_sr4":
    kt = gaussian_kernel(ksize, ksize / 8.0)
    y = bird_noise(k_noise, BlurDecimate(shape, kt, 4).A(x))
    return BlindSR(shape, mlp, 4), y, kt, "blind_deblur"
  if task == "sr8":
    op = AvgPoolSR(shape, scale=8)
    return NonBlind(op), bird_noise(k_noise, op.A(x)), None, "sr8"
  if task == "denoise":  # utils.generate_noisy_image: 0.8 (x + 0.4 x g) + 0.2 (x + 0.15 n), clipped
    y = jnp.clip(bird_noise(k_noise, x, speckle=0.32, sigma=0.03), -1.0, 1.0)
    return NonBlind(Identity(shape)), y, None, "denoise"
  if task == "inpaint":  # utils.generate_noisy_image_and_mask: an 80x80 hole at 256 px, centred
    b = _odd(80 * side / 256) - 1
    mask = np.ones(shape[:2], np.float32)
    mask[(side - b) // 2:(side + b) // 2, (side - b) // 2:(side + b) // 2] = 0.0
    op = Inpaint(shape, mask)
    return NonBlind(op), op.A(bird_noise(k_noise, x)), None, "inpaint"
  raise SystemExit(f"unknown task {task!r}; choose from {TASKS}")


def run_row(label, task, xs, keys, prior, config, ksize, lp):
  from jaxir import io, metrics
  from jaxir.solvers.bird import bird
  made = [make_task(task, jax.random.fold_in(k, 0), x, ksize) for k, x in zip(keys, xs)]
  degs, ys, kts, _ = zip(*made)
  deg_b = jax.tree.map(lambda *a: jnp.stack(a), *degs)
  y_b = jnp.stack(ys)
  skeys = jnp.stack([jax.random.fold_in(k, 1) for k in keys])
  run = jax.jit(jax.vmap(functools.partial(bird, prior=prior, config=config)))
  t0 = time.perf_counter()
  compiled = run.lower(skeys, y_b, deg_b).compile()
  t_compile = time.perf_counter() - t0
  t0 = time.perf_counter()
  x_hat, info = jax.block_until_ready(compiled(skeys, y_b, deg_b))
  sec = (time.perf_counter() - t0) / len(xs)
  u = lambda a: io.to_unit(jnp.clip(a, -1, 1))
  rec = {"row": label, "task": task, "n": len(xs), "iterations": config.iterations,
         "delta_t": config.delta_t, "grad_through_unet": config.grad_through_unet,
         "lr_z": config.lr_z, "psnr": float(jnp.mean(metrics.psnr(u(x_hat), u(xs)))),
         "ssim": float(jnp.mean(metrics.ssim(u(x_hat), u(xs)))),
         "lpips": float(jnp.mean(metrics.lpips_apply(lp, jnp.clip(x_hat, -1, 1), xs))),
         "nfe": int(np.asarray(info.nfe)[0]), "sec_per_image": sec, "compile_s": t_compile,
         "loss_first": float(jnp.mean(info.loss[:, 0])),
         "loss_final": float(jnp.mean(info.final_loss))}
  if y_b.shape == xs.shape:
    rec["psnr_input"] = float(jnp.mean(metrics.psnr(u(y_b), u(xs))))
  if kts[0] is not None and info.kernel is not None:
    kt = jnp.stack(kts)
    k0 = jnp.stack([d.kernel(d.init(jax.random.split(k)[1])) for d, k in zip(degs, skeys)])
    rec["kernel_err_start"] = float(jnp.mean(jnp.abs(k0 - kt).sum((1, 2))))
    rec["kernel_err_end"] = float(jnp.mean(jnp.abs(info.kernel - kt).sum((1, 2))))
  print(_row(rec), flush=True)
  return rec


def _row(r) -> str:
  ke = (f"{r['kernel_err_start']:.3f} -> {r['kernel_err_end']:.3f}" if "kernel_err_end" in r
        else "-")
  pin = f"{r['psnr_input']:.2f}" if "psnr_input" in r else "-"
  path = "full" if r["grad_through_unet"] else "official"
  return (f"| {r['row']} | {r['iterations']} | {r['delta_t']} | {path} | {pin} | {r['psnr']:.2f} | "
          f"{r['ssim']:.3f} | {r['lpips']:.3f} | {ke} | {r['nfe']} | {r['sec_per_image']:.2f} |")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32")
  ap.add_argument("--count", type=int, default=4, help="held-out images per row")
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--iterations", type=int, default=None, help="override every preset's N")
  ap.add_argument("--lr-z", type=float, default=None, help="override every preset's lr_z")
  ap.add_argument("--lr-eta", type=float, default=None, help="override the kernel learning rate")
  ap.add_argument("--delta-ts", default="50,100,200,250", help="step-size study ('' to skip)")
  ap.add_argument("--paths", action="store_true", help="also run the full gradient path")
  ap.add_argument("--quick", action="store_true", help="main rows only (no delta_t study)")
  ap.add_argument("--z-init", default="noise", choices=["noise", "inversion", "both"],
                  help="z start of the main rows: official noise, DDIM inversion of a first "
                       "estimate (BIRDConfig.z_init), or both (inversion rows added)")
  ap.add_argument("--radius", default="sqrt_d", choices=["sqrt_d", "init"],
                  help="sphere of the main rows' inversion starts (BIRDConfig.radius): the "
                       "official sqrt(d), or the inverted latent's own norm")
  ap.add_argument("--delta-t", type=int, default=None, help="override the main rows' delta_t")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--out", default=None, help="write results.json and table.md here")
  args = ap.parse_args(argv)

  sys.path.insert(0, str(Path(__file__).parent))
  from quality_table import heldout_images
  from jaxir import metrics
  from jaxir.priors import load_prior
  from jaxir.solvers.bird import bird_preset
  from jaxir.tasks import prior_channels

  prior = load_prior(args.prior)
  xs = jnp.asarray(heldout_images(args.prior, args.count, None, prior_channels(prior)))
  side = xs.shape[1]
  ksize = _odd(max(7.0, 41 * side / 256))
  lp = metrics.lpips_params()
  root = jax.random.key(args.seed)
  keys = jax.random.split(root, xs.shape[0])

  def cfg(preset, **kw):
    over = {k: v for k, v in (("iterations", args.iterations), ("lr_z", args.lr_z),
                              ("lr_eta", args.lr_eta), ("delta_t", args.delta_t)) if v}
    return bird_preset(preset, **{**over, **kw})

  rows = []
  inits = ["noise", "inversion"] if args.z_init == "both" else [args.z_init]
  for task in args.tasks.split(","):
    preset = make_task(task, keys[0], xs[0], ksize)[3]
    for z_init in inits:
      radius = args.radius if z_init == "inversion" else "sqrt_d"
      label = task + (" (z: inversion)" if z_init == "inversion" else "") + \
          (", radius: init" if radius == "init" else "")
      rows.append(run_row(label, task, xs, keys, prior, cfg(preset, z_init=z_init, radius=radius),
                          ksize, lp))
  # The study rows start as the last main row does (--z-init inversion: from the inversion).
  study = dict(z_init=inits[-1], radius=args.radius if inits[-1] == "inversion" else "sqrt_d")
  tag = " (z: inversion)" if inits[-1] == "inversion" else ""
  if args.paths:
    rows.append(run_row(f"blind_gauss{tag} full-grad", "blind_gauss", xs, keys, prior,
                        cfg("blind_deblur", grad_through_unet=True, **study), ksize, lp))
  if args.delta_ts and not args.quick:
    for dt in [int(v) for v in args.delta_ts.split(",")]:
      rows.append(run_row(f"blind_gauss{tag} dt={dt}", "blind_gauss", xs, keys, prior,
                          cfg("blind_deblur", delta_t=dt, **study), ksize, lp))
  head = (f"BIRD on {args.prior}, {xs.shape[0]} held-out images per row, kernel {ksize}x{ksize}, "
          f"device {jax.devices()[0].device_kind}; s/img at batch {xs.shape[0]}, compilation "
          "excluded.\n\n| row | N | delta_t | grad path | PSNR in | PSNR | SSIM | LPIPS | "
          "kernel err (start -> end) | NFE | s/img |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n")
  table = head + "\n".join(_row(r) for r in rows) + "\n"
  print("\n" + table)
  if args.out:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows},
                                                 indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
