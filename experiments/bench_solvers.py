"""Solver speed benchmark: seconds per image, images per second, NFE and overhead over the U-Net.

For each solver x task (default: DCDP with DDIM purification, DCDP with Tweedie
purification, on sr4, gaussian_deblur, motion_deblur and box_inpaint with each
task's preset; DPS with 1000 steps on sr4) and each batch size (default 1 and
16), the whole vmapped solve (`jax.vmap` over keys and measurements, one
shared operator) is jit-compiled once (compile time reported separately) and
timed as the median of `--repeats` runs. Reported:

* s / image (batch time / batch) and images / s,
* NFE from the solver's `info.nfe`,
* overhead = batch time / (NFE x time of one U-Net call on the same batch):
  the cost of everything that is not the network (data consistency, loops,
  sampling). For DPS one call is forward+backward (`jax.vjp`), since every
  DPS step back-propagates through the network; for DCDP it is a forward.

Targets (issue): overhead <= 1.15; DCDP (DDIM) on one H100 with the FFHQ-256
model: <= 2 s/image at batch 1 and >= 4 images/s at batch 16. They are judged
only on an H100 with the FFHQ-256 model at 256x256.

Model: on GPU the DPS FFHQ-256 architecture (`ffhq256_dps`) with random
weights; on CPU a small ADM at `--size` (default 32x32) with random weights, or
a shipped prior with `--prior mnist32|natural64` (falls back to random weights
with a message when its checkpoint is missing). Timing does not depend on the
weights (DDIM and DPS clip x0, so random-weight outputs stay bounded).

  python experiments/bench_solvers.py --json runs/bench/solvers_h100.json   # GPU
  python experiments/bench_solvers.py --quick --tasks sr4                    # CPU smoke run
  python experiments/bench_solvers.py --prior natural64 --dps-steps 100      # CPU, shipped prior
"""
from __future__ import annotations

import argparse
import sys
import zlib

import numpy as np

from _bench import (environment, fill_zero_leaves, header_lines, is_h100, markdown_table,
                    time_jax, verdict, write_json)

TASK_NAMES = ("sr4", "gaussian_deblur", "motion_deblur", "box_inpaint")
SOLVER_NAMES = ("dcdp_ddim", "dcdp_tweedie", "dps")
TARGET_OVERHEAD = 1.15
TARGET_DCDP_B1_S_PER_IMAGE = 2.0
TARGET_DCDP_B16_IMAGES_PER_S = 4.0
# BIRD (issue 16), opt-in with --solvers ...,bird: blind deblurring with the official
# MLP kernel (41x41 at 256 px, scaled with the image) and the 100-iteration preset.
OPTIONAL_SOLVERS = ("bird",)
TARGET_BIRD_OVERHEAD = 1.3
TARGET_BIRD_B1_S_PER_IMAGE = 8.0


def _ints(s: str) -> list[int]:
  return [int(v) for v in s.split(",") if v.strip()]


def _names(s: str) -> list[str]:
  return [v.strip() for v in s.split(",") if v.strip()]


def _parse(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 1 repeat, no warm-up, batches 1,2, DPS 20 steps and (CPU "
                       "random model) a tiny U-Net: 32 channels, mult 1,2, 1 res block, no "
                       "attention; explicit options still win")
  ap.add_argument("--solvers", type=_names, default=list(SOLVER_NAMES),
                  help=f"comma-separated subset of {','.join(SOLVER_NAMES)} (default all)")
  ap.add_argument("--tasks", type=_names, default=list(TASK_NAMES),
                  help=f"DCDP tasks (default {','.join(TASK_NAMES)}; any jaxir.tasks name)")
  ap.add_argument("--dps-tasks", type=_names, default=["sr4"],
                  help="tasks DPS runs on (default sr4)")
  ap.add_argument("--bird-tasks", type=_names, default=["gaussian_deblur"],
                  help="tasks BIRD runs on, blind, with the MLP kernel (default gaussian_deblur)")
  ap.add_argument("--bird-iterations", type=int, default=None,
                  help="BIRD iterations (default 100, the blind_deblur preset; lower it on CPU)")
  ap.add_argument("--dps-steps", type=int, default=None,
                  help="DPS respaced steps (default 1000, the DPS configs; lower it on CPU)")
  ap.add_argument("--deqir-T", type=_ints, default=None,
                  help="also time DeqIR (Anderson) vs sequential DDNM at these T, e.g. 25,50,100, "
                       "with the device cost model (experiments/bench_deqir.py)")
  ap.add_argument("--batch-sizes", type=_ints, default=None, help="default 1,16")
  ap.add_argument("--model", choices=("auto", "ffhq256", "small"), default="auto",
                  help="random-weight U-Net: ffhq256 (the ffhq256_dps config at 256x256), "
                       "small (see --size etc.), auto: ffhq256 on GPU, small on CPU")
  ap.add_argument("--prior", default=None,
                  help="use a shipped prior instead (mnist32, natural64; see jaxir.priors.load_prior)")
  ap.add_argument("--size", type=int, default=32, help="image side of the small model (default 32)")
  ap.add_argument("--channels", type=int, default=None, help="small model width (default 64)")
  ap.add_argument("--mult", default=None, help="small model channel_mult (default 1,2,2,2)")
  ap.add_argument("--res-blocks", type=int, default=None, help="small model res blocks (default 2)")
  ap.add_argument("--attention", default=None,
                  help="small model attention resolutions (default 16,8; '' for none)")
  ap.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 3)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed runs after compiling (default 1)")
  ap.add_argument("--unet-repeats", type=int, default=None,
                  help="timed runs of the U-Net reference call (default 10)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--json", default=None, help="also write the results to this JSON file")
  args = ap.parse_args(argv)
  q = args.quick

  def pick(name, quick, full):
    if getattr(args, name) is None:
      setattr(args, name, quick if q else full)

  pick("repeats", 1, 3)
  pick("warmup", 0, 1)
  pick("unet_repeats", 3, 10)
  pick("batch_sizes", [1, 2], [1, 16])
  pick("dps_steps", 20, 1000)
  pick("channels", 32, 64)
  pick("mult", "1,2", "1,2,2,2")
  pick("res_blocks", 1, 2)
  pick("attention", "", "16,8")
  bad = sorted(set(args.solvers) - set(SOLVER_NAMES) - set(OPTIONAL_SOLVERS))
  if bad:
    ap.error(f"unknown solvers {bad}; choose from {SOLVER_NAMES}")
  return args


def _small_upstream(args) -> dict:
  return dict(image_size=args.size, num_channels=args.channels, num_res_blocks=args.res_blocks,
              channel_mult=args.mult, learn_sigma=True, class_cond=False, use_checkpoint=False,
              attention_resolutions=args.attention, num_heads=4, num_head_channels=-1,
              num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
              resblock_updown=True, use_fp16=False, use_new_attention_order=False)


def build_prior(args, on_gpu):
  """(prior, image_shape, description, notes) of the benchmarked model."""
  import jax
  import jax.numpy as jnp

  from jaxir.errors import CheckpointError
  from jaxir.models.adm import ADMUNet, adm_config
  from jaxir.models.configs import NAMED_CONFIGS
  from jaxir.priors import load_prior, model_prior

  notes = []
  if args.prior:
    try:
      prior = load_prior(args.prior)
      cfg = getattr(getattr(prior.apply_fn, "module", None), "config", None)
      size = getattr(cfg, "image_size", args.size)
      ch = getattr(cfg, "in_channels", 3)
      n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(prior.params))
      return prior, (size, size, ch), f"shipped prior {args.prior} ({n / 1e6:.2f}M params)", notes
    except CheckpointError as e:
      notes.append(f"--prior {args.prior} unavailable ({str(e).splitlines()[0]}); "
                   "using random weights instead")
  kind = args.model if args.model != "auto" else ("ffhq256" if on_gpu else "small")
  if kind == "ffhq256":
    upstream, size, label = dict(NAMED_CONFIGS["ffhq256_dps"].upstream), 256, "ffhq256_dps"
  else:
    upstream, size, label = _small_upstream(args), args.size, "small ADM"
  cfg = adm_config(**upstream)
  model = ADMUNet(cfg)
  k_init, k_fill = jax.random.split(jax.random.key(args.seed + 1))
  params = model.init(k_init, jnp.zeros((1, size, size, 3), jnp.float32),
                      jnp.zeros((1,), jnp.int32))
  params = fill_zero_leaves(params, k_fill)
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  desc = (f"{label}, random weights, {n / 1e6:.2f}M params, {size}x{size} "
          f"(channels {cfg.model_channels}, mult {','.join(str(m) for m in cfg.channel_mult)}, "
          f"{cfg.num_res_blocks} res blocks, attention ds {cfg.attention_resolutions or '-'})")
  return model_prior(model, params), (size, size, 3), desc, notes


def _solver(name, task, args):
  from jaxir.solvers.dcdp import dcdp, dcdp_nfe, dcdp_preset
  from jaxir.solvers.dps import dps, dps_preset
  from jaxir.solvers.registry import DCDP_TASK_PRESETS, DPS_TASK_PRESETS
  if name == "bird":
    return _bird_solver(args)
  if name == "dcdp_ddim":
    cfg = dcdp_preset(DCDP_TASK_PRESETS[task])
    return dcdp, cfg, DCDP_TASK_PRESETS[task], dcdp_nfe(cfg)
  if name == "dcdp_tweedie":
    cfg = dcdp_preset(DCDP_TASK_PRESETS[task], tweedie=True)
    return dcdp, cfg, DCDP_TASK_PRESETS[task] + "+tweedie", dcdp_nfe(cfg)
  cfg = dps_preset(DPS_TASK_PRESETS[task], num_steps=args.dps_steps)
  return dps, cfg, f"{DPS_TASK_PRESETS[task]} ({args.dps_steps} steps)", None


def _bird_solver(args):
  """BIRD as a (key, y, operator, prior, config) solver: blind, MLP kernel scaled from 41/256."""
  import jax

  from jaxir.operators.blind import BlindBlur, mlp_kernel
  from jaxir.solvers.bird import bird, bird_nfe, bird_preset
  cfg = bird_preset("blind_deblur")
  if args.bird_iterations:
    cfg = bird_preset("blind_deblur", iterations=args.bird_iterations)

  def solve(key, y, op, prior, cfg):
    side = op.in_shape[0]
    size = max(3, int(round(41 * side / 256)) | 1)
    deg = BlindBlur(op.in_shape, mlp_kernel(jax.random.key(0), size))
    return bird(key, y, deg, prior, cfg)

  return solve, cfg, f"blind_deblur ({cfg.iterations} it)", bird_nfe(cfg)


def _unet_time(prior, shape, batch, backward, args, cache):
  """Median seconds of one U-Net call (forward, or forward+backward) on `batch` images."""
  import jax
  import jax.numpy as jnp
  k = (batch, backward)
  if k not in cache:
    x = jax.random.normal(jax.random.key(batch), (batch,) + tuple(shape), jnp.float32)
    t = jnp.full((batch,), 500, jnp.int32)
    if backward:
      def fn(prior, x, t):
        out, vjp = jax.vjp(lambda x: prior.model(x, t), x)
        return out, vjp(jnp.ones_like(out))[0]
    else:
      def fn(prior, x, t):
        return prior.model(x, t)
    tm, _ = time_jax(fn, prior, x, t, repeats=args.unet_repeats, warmup=1)
    cache[k] = tm.median
    print(f"  U-Net {'fwd+bwd' if backward else 'fwd'} batch {batch}: {1e3 * tm.median:.2f} ms",
          file=sys.stderr, flush=True)
  return cache[k]


def main(argv=None) -> int:
  args = _parse(argv)
  import jax
  import jax.numpy as jnp

  from jaxir.tasks import TASKS, make_operator

  env = environment()
  on_gpu = jax.default_backend() != "cpu"
  prior, shape, desc, notes = build_prior(args, on_gpu)
  judged = is_h100(env["device_kind"]) and desc.startswith("ffhq256_dps") and shape[0] == 256
  for n in notes:
    print(f"note: {n}", flush=True)

  jobs = []
  for s in args.solvers:
    for task in (args.dps_tasks if s == "dps" else args.bird_tasks if s == "bird" else args.tasks):
      if task not in TASKS:
        raise SystemExit(f"unknown task {task!r}; choose from {sorted(TASKS)}")
      jobs.append((s, task))

  key = jax.random.key(args.seed)
  unet_cache, rows = {}, []
  for s, task in jobs:
    solver, cfg, preset, nfe_expected = _solver(s, task, args)
    k_op, k_x, k_n, k_s = jax.random.split(jax.random.fold_in(key, zlib.crc32(task.encode())), 4)
    op = make_operator(task, k_op, shape)
    sigma = TASKS[task].sigma_y

    def solve(keys, ys, op, prior, solver=solver, cfg=cfg):
      return jax.vmap(lambda k, y: solver(k, y, op, prior, cfg))(keys, ys)

    for b in args.batch_sizes:
      x_true = jnp.tanh(jax.random.normal(k_x, (b,) + tuple(shape)))
      y = jax.vmap(op.A)(x_true)
      y = y + sigma * jax.random.normal(k_n, y.shape, y.dtype).astype(y.dtype)
      keys = jax.random.split(k_s, b)
      tm, (x, info) = time_jax(solve, keys, y, op, prior, repeats=args.repeats,
                               warmup=args.warmup)
      nfe = int(np.asarray(info.nfe).ravel()[0])
      unet_s = _unet_time(prior, shape, b, s == "dps", args, unet_cache)
      row = {"solver": s, "task": task, "preset": preset, "batch": b, "nfe": nfe,
             "nfe_expected": nfe_expected, "s_per_batch": tm.median,
             "s_per_image": tm.median / b, "images_per_s": b / tm.median,
             "compile_s": tm.compile_s, "unet_ms": 1e3 * unet_s,
             "unet_pass": "fwd+bwd" if s == "dps" else "fwd",
             "overhead": tm.median / (nfe * unet_s),
             "finite": bool(jnp.all(jnp.isfinite(x))), "timing": tm.to_dict()}
      rows.append(row)
      print(f"  {s} {task} batch {b}: {tm.median:.3f} s, nfe {nfe}, overhead "
            f"{row['overhead']:.2f} (compile {tm.compile_s:.1f} s)", file=sys.stderr, flush=True)
      del x, info

  lines = [f"## jaxir solver benchmark ({env['device_kind']})", ""] + header_lines(env)
  lines += [f"- model: {desc}", f"- repeats {args.repeats} (median), warm-up {args.warmup}; "
            f"U-Net reference: median of {args.unet_repeats}"]
  lines += [f"- note: {n}" for n in notes]
  lines += ["", "overhead = batch time / (NFE x one U-Net call on the same batch; fwd+bwd for "
            "DPS)", ""]
  head = ["solver", "task", "preset", "NFE", "batch", "s / image", "images / s", "compile s",
          "U-Net ms (pass)", "overhead", "finite"]
  lines.append(markdown_table(head, [
      [r["solver"], r["task"], r["preset"], r["nfe"], r["batch"], f"{r['s_per_image']:.3f}",
       f"{r['images_per_s']:.2f}", f"{r['compile_s']:.1f}",
       f"{r['unet_ms']:.2f} ({r['unet_pass']})", f"{r['overhead']:.2f}",
       "yes" if r["finite"] else "NO"] for r in rows]))
  aot = {}
  for r in rows:
    if r["timing"]["aot_error"]:
      aot.setdefault(r["timing"]["aot_error"], set()).add(f"{r['solver']}/{r['task']}")
  for err, where in aot.items():
    lines += ["", f"ahead-of-time lowering failed for {', '.join(sorted(where))} ({err}); "
              "their compile s is the first call (compile + one run)."]
  mismatch = [r for r in rows if r["nfe_expected"] is not None and r["nfe"] != r["nfe_expected"]]
  if mismatch:
    lines += ["", "NFE differs from dcdp_nfe(config) in: " + ", ".join(
        f"{r['solver']}/{r['task']} ({r['nfe']} vs {r['nfe_expected']})" for r in mismatch)]

  kind = env["device_kind"] if judged else f"{env['device_kind']} / {desc.split(',')[0]}"
  targets = []
  for r in rows:
    if r["solver"] == "bird":
      targets.append([f"BIRD {r['task']} b{r['batch']}: overhead <= {TARGET_BIRD_OVERHEAD}",
                      f"{r['overhead']:.2f}", verdict(r["overhead"] <= TARGET_BIRD_OVERHEAD,
                                                      judged, kind)])
      if r["batch"] == 1:
        targets.append([f"BIRD {r['task']}: <= {TARGET_BIRD_B1_S_PER_IMAGE:g} s / image at batch 1",
                        f"{r['s_per_image']:.3f} s",
                        verdict(r["s_per_image"] <= TARGET_BIRD_B1_S_PER_IMAGE, judged, kind)])
  rows_nb = [r for r in rows if r["solver"] != "bird"]
  if rows_nb:
    worst = max(rows_nb, key=lambda r: r["overhead"])
    targets.append([f"overhead <= {TARGET_OVERHEAD} (every row)",
                    f"max {worst['overhead']:.2f} ({worst['solver']} {worst['task']} "
                    f"b{worst['batch']})",
                    verdict(worst["overhead"] <= TARGET_OVERHEAD, judged, kind)])
  for r in rows:
    if r["solver"] != "dcdp_ddim":
      continue
    if r["batch"] == 1:
      targets.append([f"DCDP DDIM {r['task']}: <= {TARGET_DCDP_B1_S_PER_IMAGE:g} s / image at "
                      "batch 1", f"{r['s_per_image']:.3f} s",
                      verdict(r["s_per_image"] <= TARGET_DCDP_B1_S_PER_IMAGE, judged, kind)])
    if r["batch"] == 16:
      targets.append([f"DCDP DDIM {r['task']}: >= {TARGET_DCDP_B16_IMAGES_PER_S:g} images / s "
                      "at batch 16", f"{r['images_per_s']:.2f} images / s",
                      verdict(r["images_per_s"] >= TARGET_DCDP_B16_IMAGES_PER_S, judged, kind)])
  deqir_rows = []
  if args.deqir_T:  # DeqIR section (issue 15): parallel vs sequential and the cost model
    from bench_deqir import deqir_section
    deqir_lines, deqir_rows = deqir_section(prior, shape, args)
    lines += [""] + deqir_lines
  lines += ["", "Targets (H100, FFHQ-256 model):", "",
            markdown_table(["target", "measured", "verdict"], targets)]
  print("\n".join(lines), flush=True)
  if args.json:
    write_json(args.json, {"args": vars(args), "env": env, "model": desc, "notes": notes,
                           "targets_judged": judged, "rows": rows, "deqir_rows": deqir_rows,
                           "targets": [dict(zip(["target", "measured", "verdict"], t))
                                       for t in targets]})
    print(f"\nwrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
