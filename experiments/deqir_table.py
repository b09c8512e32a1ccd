"""DeqIR (parallel fixed point) vs the sequential DDNM chain on a shipped prior.

  python experiments/deqir_table.py --prior mnist32 --count 4 --T 25
  python experiments/deqir_table.py --prior mnist32 --count 2 --iters 25,50,100

Table mode: for each task (SR x4 by average pooling, separable Gaussian deblur,
box inpainting, colorization, Walsh-Hadamard compressed sensing; all SVD
operators, noiseless measurements) it restores held-out images with the
sequential DDNM chain and with DeqIR (official Anderson settings; optionally
also with `--init-steps` of initialization optimization, measurement loss),
all from the SAME x_T per image, and prints a markdown table: PSNR / SSIM /
LPIPS (means), NFE, solver iterations, final relative residual, the largest
relative difference between DeqIR's and the sequential result, and seconds per
image (vmapped batch, compilation excluded).

Iteration mode (`--iters`): for each T, the map evaluations Anderson (official
settings) and Picard (tol 1e-3) need, whether Anderson converged, and how far
its result lies from the sequential chain (relative to the chain's max |x|).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = ("sr4", "gaussian_deblur", "inpaint", "colorization", "cs")


def make_operator(task: str, shape, key):
  """The task's SVD operator for (H, W, C) images (imported lazily: some are new)."""
  from jaxir.operators import AvgPoolSR, Colorization, Inpaint
  H, W, C = shape
  if task == "sr4":
    return AvgPoolSR(shape, 4)
  if task == "gaussian_deblur":
    from jaxir.operators.separable import deblur_gauss
    return deblur_gauss(shape)
  if task == "inpaint":
    mask = np.ones(shape, np.float32)
    mask[H // 4: 3 * H // 4, W // 4: 3 * W // 4] = 0.0  # a centred box, half the side
    return Inpaint(shape, mask)
  if task == "colorization":
    if C != 3:
      raise ValueError("colorization needs RGB images; this prior is greyscale")
    return Colorization(shape)
  if task == "cs":
    from jaxir.operators.walsh_hadamard import walsh_hadamard_cs
    return walsh_hadamard_cs(key, shape, 0.5)
  raise SystemExit(f"unknown task {task!r}; choose from {TASKS}")


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def _timed(fn, *args):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  t_c = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, time.perf_counter() - t0, t_c


def table(args, prior, xs) -> str:
  from jaxir import io, metrics
  from jaxir.solvers.ddnm import ddnm, ddnm_preset
  from jaxir.solvers import deqir as Q
  n = xs.shape[0]
  lp = metrics.lpips_params()
  keys = jax.random.split(jax.random.key(args.seed), n)
  rows = []
  head = ("| task | solver | PSNR | SSIM | LPIPS | NFE | iters | residual | rel. diff to seq. "
          "| s/img |\n|---|---|---|---|---|---|---|---|---|---|")
  print(head, flush=True)
  for task in args.tasks.split(","):
    try:
      op = make_operator(task, tuple(xs.shape[1:]), jax.random.key(7))
    except (ImportError, ValueError) as e:
      print(f"| {task} | skipped: {e} |", flush=True)
      continue
    ys = jax.vmap(op.A)(xs)
    solvers = [("ddnm", ddnm, ddnm_preset("deqir", T=args.T)),
               ("deqir", Q.deqir, Q.DeqIRConfig(T=args.T))]
    if args.taa:
      solvers.append(("deqir-taa", Q.deqir, Q.DeqIRConfig(T=args.T, triangular=True)))
    if args.init_steps:
      solvers.append(("deqir+init", Q.deqir,
                      Q.DeqIRConfig(T=args.T, init_steps=args.init_steps, init_lr=args.init_lr)))
    ref = None
    for name, fn, cfg in solvers:
      run = jax.vmap(lambda k, y, fn=fn, cfg=cfg: fn(k, y, op, prior, cfg))
      (x, info), sec, _ = _timed(run, keys, ys)
      ref = x if ref is None else ref
      xc = jnp.clip(x, -1, 1)
      it = "-" if name == "ddnm" else f"{float(np.mean(info.iterations)):.1f}"
      res = "-" if name == "ddnm" else f"{float(np.max(info.residual)):.1e}"
      u, v = io.to_unit(xc), io.to_unit(xs)
      psnr, ssim = float(jnp.mean(metrics.psnr(u, v))), float(jnp.mean(metrics.ssim(u, v)))
      lpips = float(jnp.mean(metrics.lpips_apply(lp, xc, xs)))
      row = (f"| {task} | {name} | {psnr:.2f} | {ssim:.3f} | {lpips:.3f} "
             f"| {float(np.mean(info.nfe)):.0f} | {it} | {res} | {_rel(x, ref):.1e} "
             f"| {sec / n:.2f} |")
      rows.append(row)
      print(row, flush=True)
  return head + "\n" + "\n".join(rows)


def iterations(args, prior, xs) -> str:
  from jaxir.solvers.ddnm import ddnm_chain
  from jaxir.solvers import deqir as Q
  from jaxir.operators import AvgPoolSR
  n = xs.shape[0]
  op = AvgPoolSR(tuple(xs.shape[1:]), 4)
  ys = jax.vmap(op.A)(xs)
  x_T = jax.random.normal(jax.random.key(args.seed), xs.shape)
  head = ("| T | Anderson evals (mean / max) | converged | rel. err. to seq. | final residual "
          "| Anderson, one weight set: evals / converged | Picard evals to tol / converged "
          "| s/img Anderson | s/img seq. |\n|---|---|---|---|---|---|---|---|---|")
  print(head, flush=True)
  rows = []
  for T in [int(t) for t in args.iters.split(",")]:
    seq = jax.vmap(lambda a, y: ddnm_chain(a, y, op, prior, T=T, etw=0.1))
    x_seq, s_seq, _ = _timed(seq, x_T, ys)
    anderson = jax.vmap(lambda a, y: Q.deqir_solve(a, y, op, prior, Q.DeqIRConfig(T=T), grad=None))
    (x_a, info_a), s_a, _ = _timed(anderson, x_T, ys)
    glob = jax.vmap(lambda a, y: Q.deqir_solve(a, y, op, prior, Q.DeqIRConfig(T=T, per_slot=False),
                                               grad=None))
    (_, info_g), _, _ = _timed(glob, x_T, ys)
    picard = jax.vmap(lambda a, y: Q.deqir_solve(
        a, y, op, prior, Q.DeqIRConfig(T=T, solver="picard", max_iter=T), grad=None))
    (_, info_p), _, _ = _timed(picard, x_T, ys)
    ev = np.asarray(info_a.evaluations)
    row = (f"| {T} | {ev.mean():.1f} / {ev.max()} | {int(np.sum(info_a.converged))}/{n} "
           f"| {_rel(x_a, x_seq):.1e} | {float(np.max(info_a.residual)):.1e} "
           f"| {np.asarray(info_g.evaluations).mean():.1f} / {int(np.sum(info_g.converged))}/{n} "
           f"| {np.asarray(info_p.evaluations).mean():.1f} / {int(np.sum(info_p.converged))}/{n} "
           f"| {s_a / n:.2f} | {s_seq / n:.2f} |")
    rows.append(row)
    print(row, flush=True)
  return head + "\n" + "\n".join(rows)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="mnist32", help="mnist32 | natural64")
  ap.add_argument("--count", type=int, default=4, help="held-out images")
  ap.add_argument("--T", type=int, default=25)
  ap.add_argument("--tasks", default=",".join(TASKS))
  ap.add_argument("--taa", action="store_true",
                  help="also DeqIR with triangular Anderson (DeqIRConfig(triangular=True))")
  ap.add_argument("--init-steps", type=int, default=0)
  ap.add_argument("--init-lr", type=float, default=2e-5)
  ap.add_argument("--iters", default=None, help="comma-separated T list: iteration mode")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  from quality_table import heldout_images
  from jaxir.priors import load_prior
  prior = load_prior(args.prior)
  try:  # greyscale priors take (H, W, 1) images
    from jaxir.tasks import prior_channels
    xs = jnp.asarray(heldout_images(args.prior, args.count, None, prior_channels(prior)))
  except (ImportError, TypeError):
    xs = jnp.asarray(heldout_images(args.prior, args.count, None))
  dev = jax.devices()[0].device_kind
  print(f"{args.prior}, {xs.shape[0]} held-out images {tuple(xs.shape[1:])}, noiseless, "
        f"device {dev}; compilation excluded.\n")
  if args.iters:
    iterations(args, prior, xs)
  else:
    table(args, prior, xs)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
