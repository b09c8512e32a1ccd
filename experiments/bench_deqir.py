"""DeqIR speed: parallel (Anderson over all slots) vs sequential DDNM, and a device cost model.

  python experiments/bench_deqir.py --prior mnist32 --T 25,50 --batch-sizes 1
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/bench_deqir.py --quick
  python experiments/bench_solvers.py --solvers dcdp_ddim --tasks sr4 --deqir-T 25,50,100

For each T and batch b (x4 average-pooling SR, noiseless), both solvers start
from the same x_T; reported: wall-clock per batch (median, compilation
excluded) of the sequential chain (T network calls on b images) and of DeqIR's
Anderson solve (E map evaluations, each one network call on b x T images), E,
the final relative residual and the relative difference of the two results.

Cost model: with t(n) the measured time of one network call on n images on
this device, sequential latency = T t(b) and parallel latency on D devices
with the slots sharded = E t(ceil(b T / D)) (collectives and Anderson's
arithmetic neglected). The model's one-device prediction is checked against
the measured parallel time; with several (host) devices present, sharded runs
at batch 1 (`slot_sharding`, T divisible by D) are measured beside the
prediction. CPU host devices share the same cores, so there they check the
mechanics, not a speed-up.

`--memory` prints XLA's memory analysis of the compiled solve with the FFHQ-256
ADM at 256x256, T 25, batch 4, m 5 (CPU: about 20.2 GiB of temporaries and
0.35 GiB of arguments; the issue's bound is one 80 GB GPU).

Iteration counts depend on the weights: use a trained prior (`--prior`) for
them; random weights (the default model of bench_solvers.py) only time things.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import markdown_table, time_jax  # noqa: E402


def _unet(prior, shape, n, cache, repeats):
  import jax
  import jax.numpy as jnp
  if n not in cache:
    x = jax.random.normal(jax.random.key(n), (n,) + tuple(shape), jnp.float32)
    t = jnp.full((n,), 500, jnp.int32)
    tm, _ = time_jax(lambda p, x, t: p.model(x, t), prior, x, t, repeats=repeats, warmup=1)
    cache[n] = tm.median
  return cache[n]


def deqir_section(prior, shape, args):
  """(markdown lines, rows) of the DeqIR benchmark; `args` needs deqir_T, batch_sizes,
  repeats, warmup, unet_repeats, seed."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from jaxir.operators import AvgPoolSR
  from jaxir.solvers import deqir as Q
  from jaxir.solvers.ddnm import ddnm_chain

  op = AvgPoolSR(tuple(shape), 4 if shape[0] % 4 == 0 else 2)
  devices = jax.devices()
  cache, rows, model_rows = {}, [], []
  for T in args.deqir_T:
    cfg = Q.DeqIRConfig(T=T)
    for b in args.batch_sizes:
      k_x, k_T = jax.random.split(jax.random.fold_in(jax.random.key(args.seed), T * 1000 + b))
      x_true = jnp.tanh(jax.random.normal(k_x, (b,) + tuple(shape)))
      ys = jax.vmap(op.A)(x_true)
      x_T = jax.random.normal(k_T, (b,) + tuple(shape))
      seq = lambda a, y, p: jax.vmap(lambda a, y: ddnm_chain(a, y, op, p, T=T, etw=cfg.etw))(a, y)
      par = lambda a, y, p: jax.vmap(lambda a, y: Q.deqir_solve(a, y, op, p, cfg, grad=None))(a, y)
      tm_s, x_s = time_jax(seq, x_T, ys, prior, repeats=args.repeats, warmup=args.warmup)
      tm_p, (x_p, info) = time_jax(par, x_T, ys, prior, repeats=args.repeats, warmup=args.warmup)
      E = int(np.max(np.asarray(info.evaluations)))
      diff = float(jnp.max(jnp.abs(x_p - x_s)) / jnp.maximum(jnp.max(jnp.abs(x_s)), 1e-12))
      t_b = _unet(prior, shape, b, cache, args.unet_repeats)
      pred = {D: E * _unet(prior, shape, math.ceil(b * T / D), cache, args.unet_repeats)
              for D in (1, 2, 4, 8)}
      row = {"T": T, "batch": b, "seq_s": tm_s.median, "par_s": tm_p.median, "evaluations": E,
             "residual": float(np.max(np.asarray(info.residual))),
             "converged": int(np.sum(np.asarray(info.converged))), "rel_diff": diff,
             "pred_seq_s": T * t_b, "pred_par_s": pred, "compile_s": tm_p.compile_s,
             "unet_s": {n: cache[n] for n in sorted({b} | {math.ceil(b * T / D)
                                                          for D in (1, 2, 4, 8)})},
             "sharded_s": {}}
      if b == 1 and len(devices) > 1:
        for D in (2, 4, 8):
          if D > len(devices) or T % D:
            continue
          sh = NamedSharding(Mesh(np.array(devices[:D]), ("slots",)), PartitionSpec("slots"))
          run = lambda a, y, p, sh=sh: Q.deqir_solve(a, y, op, p, cfg, grad=None,
                                                     slot_sharding=sh)
          tm_d, (x_d, _) = time_jax(run, x_T[0], ys[0], prior, repeats=args.repeats,
                                    warmup=args.warmup)
          row["sharded_s"][D] = tm_d.median
          row[f"sharded_diff_{D}"] = float(jnp.max(jnp.abs(x_d - x_p[0])))
      rows.append(row)
      print(f"  deqir T {T} batch {b}: seq {tm_s.median:.3f} s, parallel {tm_p.median:.3f} s, "
            f"E {E}, residual {row['residual']:.1e}", file=sys.stderr, flush=True)
      model_rows.append([T, b, f"{row['pred_seq_s']:.3f}", f"{row['seq_s']:.3f}",
                         f"{pred[1]:.3f}", f"{row['par_s']:.3f}"]
                        + [f"{pred[D]:.3f}" + (f" ({row['sharded_s'][D]:.3f})"
                                               if D in row["sharded_s"] else "")
                           for D in (2, 4, 8)]
                        + [f"{row['pred_seq_s'] / pred[8]:.2f}"])
  lines = ["### DeqIR (Anderson, official settings) vs sequential DDNM, SR x4 pooling", "",
           markdown_table(["T", "batch", "sequential s", "parallel s", "speed-up", "map evals",
                           "converged", "final residual", "rel. diff"],
                          [[r["T"], r["batch"], f"{r['seq_s']:.3f}", f"{r['par_s']:.3f}",
                            f"{r['seq_s'] / r['par_s']:.2f}", r["evaluations"],
                            f"{r['converged']}/{r['batch']}", f"{r['residual']:.1e}",
                            f"{r['rel_diff']:.1e}"] for r in rows]),
           "", "Cost model (s per batch): sequential T t(b), parallel on D devices "
           "E t(ceil(bT/D)); measured in the columns beside, sharded runs in brackets:", "",
           markdown_table(["T", "batch", "seq. model", "seq. measured", "par. model D=1",
                           "par. measured D=1", "par. model D=2", "D=4", "D=8",
                           "model seq/par D=8"], model_rows),
           "", "U-Net forward on this device: " + ", ".join(
               f"{n}: {1e3 * s:.1f} ms" for n, s in sorted(cache.items()))]
  return lines, rows


def memory_estimate(T: int = 25, batch: int = 4, m: int = 5, size: int = 256) -> list[str]:
  """Memory of the compiled DeqIR solve with the FFHQ-256 ADM (ffhq256_dps) at size x size
  (256 for the issue's bound; smaller only for smoke runs), from XLA's memory analysis of
  the program compiled for THIS backend (no weights, nothing allocated: the parameters are
  abstract shapes)."""
  import jax
  import jax.numpy as jnp

  from jaxir.models.adm import ADMUNet, adm_config
  from jaxir.models.configs import NAMED_CONFIGS
  from jaxir.operators import AvgPoolSR
  from jaxir.priors import model_prior
  from jaxir.solvers import deqir as Q
  model = ADMUNet(adm_config(**dict(NAMED_CONFIGS["ffhq256_dps"].upstream)))
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)),
                          jnp.zeros((1,), jnp.int32))
  prior = model_prior(model, shapes)
  op = AvgPoolSR((size, size, 3), 4)
  cfg = Q.DeqIRConfig(T=T, m=m)
  fn = jax.vmap(lambda a, y, p: Q.deqir_solve(a, y, op, p, cfg, grad=None), in_axes=(0, 0, None))
  low = size // 4
  compiled = jax.jit(fn).lower(jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
                               jax.ShapeDtypeStruct((batch, low, low, 3), jnp.float32),
                               prior).compile()
  ma = compiled.memory_analysis()
  gib = lambda v: f"{v / 2**30:.2f} GiB"
  return [f"DeqIR memory (ffhq256_dps, {size}x{size}, T {T}, batch {batch}, m {m}, no "
          f"gradient; XLA memory analysis on {jax.default_backend()}): arguments "
          f"{gib(ma.argument_size_in_bytes)}, temporaries {gib(ma.temp_size_in_bytes)}, "
          f"outputs {gib(ma.output_size_in_bytes)}"]


def main(argv=None) -> int:
  import argparse
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--T", default="25,50,100")
  ap.add_argument("--json", default=None)
  ap.add_argument("--memory", action="store_true",
                  help="only print the compiled-memory estimate (FFHQ-256 ADM, T 25, batch 4)")
  ap.add_argument("--memory-size", type=int, default=256,
                  help="image side for --memory (256: the issue's bound; smaller for smoke runs)")
  args, rest = ap.parse_known_args(argv)
  if args.memory:
    print("\n".join(memory_estimate(size=args.memory_size)))
    return 0
  import bench_solvers
  from _bench import environment, header_lines, write_json
  import jax
  bargs = bench_solvers._parse(rest)
  bargs.deqir_T = [int(t) for t in args.T.split(",")]
  if "--batch-sizes" not in " ".join(rest):
    bargs.batch_sizes = [1, 4]
  env = environment()
  prior, shape, desc, notes = bench_solvers.build_prior(bargs, jax.default_backend() != "cpu")
  lines, rows = deqir_section(prior, shape, bargs)
  print("\n".join([f"## DeqIR benchmark ({env['device_kind']}, {jax.device_count()} device(s))",
                   ""] + header_lines(env) + [f"- model: {desc}"] + [f"- note: {n}" for n in notes]
                  + [""] + lines), flush=True)
  if args.json:
    write_json(args.json, {"env": env, "model": desc, "rows": rows})
  return 0


if __name__ == "__main__":
  sys.exit(main())
