"""U-Net speed benchmark: jaxir's Flax ADM U-Net against the issue's targets and upstream PyTorch.

Two suites:

* FFHQ-256 (default when JAX sees a GPU; `--ffhq` forces it elsewhere): the
  DPS FFHQ-256 prior's architecture (`NAMED_CONFIGS["ffhq256_dps"]`, 93.6M
  parameters, random weights) at 256x256. Forward ms per batch and per image
  at batch 1, 4, 16, 64 in float32 and bfloat16, forward+backward (the vjp of
  the output's sum w.r.t. x: one DPS step) at batch 1, and the bfloat16 vs
  float32 relative error. Compared with the issue's upstream PyTorch numbers
  on one H100 (26.5 ms at batch 1, 73.0 ms at 16, 281.7 ms at 64, fwd+bwd
  49.3 ms at 1) and judged against its targets (bfloat16: <= 10 ms at batch 1,
  <= 1.5 ms/image at batch 64) only when the device is an H100.
* CPU comparison (default on CPU; `--cpu-compare` adds it on GPU): both
  shipped priors (mnist32, natural64, with their weights) and a 64x64 ADM
  (64 channels, mult 1,2,2,2, 2 res blocks, attention at 16 and 8, 11.1M
  parameters, random weights), each with the SAME weights in Flax (jit) and
  in guided-diffusion's PyTorch `UNetModel` (eager float32,
  `torch.inference_mode`), forward at batch 1, 8 and 32; prints both times,
  torch/flax (> 1: jaxir faster), the max abs difference of the outputs and
  the target "Flax at least as fast as PyTorch". jaxir runs with the settings
  the library applies at import (`jaxir.runtime`: one host device per core)
  and the batch placed as `jaxir.parallel.batch_solver` places it (split over
  the devices); `--xla-defaults` turns the settings off (one device).
  torch uses as many threads as the process may use cores unless `--threads`
  is given.

Times exclude compilation (reported separately), follow warm-up runs and
`block_until_ready`, and are medians over `--repeats` runs; in the CPU
comparison Flax and PyTorch runs alternate. XLA_FLAGS and the device count are
printed in the header so runs with flags are labelled.

Run on a GPU machine (with a CUDA build of jax installed):

  python experiments/bench_unet.py --json runs/bench/unet_h100.json
  XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true python experiments/bench_unet.py

On CPU (the comparison with PyTorch needs torch and guided-diffusion-sdk):

  python experiments/bench_unet.py                 # 3 models x batch 1, 8, 32, 10 repeats
  python experiments/bench_unet.py --quick         # smoke run
  python experiments/bench_unet.py --ffhq --size 64 --batches 1 --quick   # FFHQ path, small
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from _bench import (add_run_args, environment, fill_zero_leaves, guided_unet, header_lines,
                    is_h100, markdown_table, resolve_run_args, set_torch_threads,
                    time_interleaved, time_jax, verdict, write_json)

# Issue's upstream reference: guided-diffusion UNetModel, FFHQ-256 DPS config,
# eager PyTorch float32/TF32 on one H100 (ms per batch).
H100_UPSTREAM_FWD_MS = {1: 26.5, 16: 73.0, 64: 281.7}
H100_UPSTREAM_FWD_BWD_MS = {1: 49.3}
TARGET_BF16_B1_MS = 10.0
TARGET_BF16_B64_MS_PER_IMAGE = 1.5

# The CPU comparison model (NOTES.md: 11.1M parameters, 13.6 GFLOP per 64x64 image).
CPU64_UPSTREAM = dict(
    image_size=64, num_channels=64, num_res_blocks=2, channel_mult="1,2,2,2",
    learn_sigma=True, class_cond=False, use_checkpoint=False, attention_resolutions="16,8",
    num_heads=4, num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True,
    dropout=0.0, resblock_updown=True, use_fp16=False, use_new_attention_order=False)




def _ints(s: str) -> list[int]:
  return [int(v) for v in s.split(",") if v.strip()]


def _parse(argv):
  ap = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Default suites: FFHQ-256 on GPU, the PyTorch comparison on CPU.")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 2 repeats, FFHQ batches 1,4, CPU batches 1,2 (explicit "
                       "--repeats/--batches/--cpu-batches still win)")
  ap.add_argument("--ffhq", action="store_true",
                  help="run the FFHQ-256 suite even on CPU (then the CPU comparison runs only "
                       "with --cpu-compare)")
  ap.add_argument("--xla-defaults", action="store_true",
                  help="time jaxir without its CPU settings (JAXIR_CPU_SETTINGS=0: one "
                       "device)")
  ap.add_argument("--cpu-compare", action="store_true",
                  help="run the Flax-vs-PyTorch CPU suite also when a GPU is present or --ffhq "
                       "is given")
  ap.add_argument("--batches", type=_ints, default=None,
                  help="FFHQ forward batch sizes, comma-separated (default 1,4,16,64)")
  ap.add_argument("--fwd-bwd-batches", type=_ints, default=[1],
                  help="FFHQ forward+backward batch sizes (default 1)")
  ap.add_argument("--dtypes", default="float32,bfloat16",
                  help="FFHQ compute dtypes (default float32,bfloat16)")
  ap.add_argument("--size", type=int, default=256,
                  help="FFHQ input side in pixels, a multiple of 32 (default 256; smaller "
                       "only for smoke runs, the targets are then not judged)")
  ap.add_argument("--cpu-batches", type=_ints, default=None,
                  help="CPU-comparison batch sizes (default 1,8,32)")
  ap.add_argument("--cpu-models", type=lambda v: [m for m in v.split(",") if m],
                  default=["mnist32", "natural64", "adm64"],
                  help="CPU-comparison models: shipped prior names and adm64 (default "
                       "mnist32,natural64,adm64)")
  add_run_args(ap)
  args = ap.parse_args(argv)
  resolve_run_args(args)
  if args.batches is None:
    args.batches = [1, 4] if args.quick else [1, 4, 16, 64]
  if args.cpu_batches is None:
    args.cpu_batches = [1, 2] if args.quick else [1, 8, 32]
  if args.size % 32:
    ap.error(f"--size {args.size} must be a multiple of 32 (the FFHQ U-Net has 6 levels)")
  return args


def _rel_errors(a, b) -> dict:
  """Relative max and RMS error of a against the reference b."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = a - b
  return {"rel_max": float(np.max(np.abs(d)) / max(np.max(np.abs(b)), 1e-30)),
          "rel_rms": float(np.sqrt(np.mean(d * d)) / max(np.sqrt(np.mean(b * b)), 1e-30))}


def _init(model, size, key):
  import jax
  import jax.numpy as jnp
  k_init, k_fill = jax.random.split(key)
  x = jnp.zeros((1, size, size, model.config.in_channels), jnp.float32)
  params = model.init(k_init, x, jnp.zeros((1,), jnp.int32))
  return fill_zero_leaves(params, k_fill)


def _inputs(key, batch, size, channels):
  import jax
  import jax.numpy as jnp
  kx, kt = jax.random.split(jax.random.fold_in(key, batch))
  x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
  t = jax.random.randint(kt, (batch,), 0, 1000, jnp.int32)
  return x, t


def ffhq_suite(args, env) -> dict:
  """Forward (and forward+backward) timings of the FFHQ-256 config; returns the results."""
  import jax
  import jax.numpy as jnp

  from jaxir.models.adm import ADMUNet, adm_config
  from jaxir.models.configs import NAMED_CONFIGS

  cfg = adm_config(**dict(NAMED_CONFIGS["ffhq256_dps"].upstream))
  size, kind = args.size, env["device_kind"]
  key = jax.random.key(args.seed)
  params = _init(ADMUNet(cfg), size, key)
  nparams = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  fwd_rows, fb_rows, outs = [], [], {}

  for dname in dtypes:
    model = ADMUNet(cfg, dtype=jnp.dtype(dname))

    def fwd(p, x, t, model=model):
      return model.apply(p, x, t)

    def fwd_bwd(p, x, t, model=model):
      out, vjp = jax.vjp(lambda x: model.apply(p, x, t), x)
      (g,) = vjp(jnp.ones_like(out))
      return out, g

    for b in args.batches:
      x, t = _inputs(key, b, size, cfg.in_channels)
      tm, out = time_jax(fwd, params, x, t, repeats=args.repeats, warmup=args.warmup)
      if b == 1:
        outs[dname] = np.asarray(out)
      del out
      fwd_rows.append({"dtype": dname, "batch": b, "ms_per_batch": 1e3 * tm.median,
                       "ms_per_image": 1e3 * tm.median / b, "compile_s": tm.compile_s,
                       "timing": tm.to_dict()})
      print(f"  fwd {dname} batch {b}: {1e3 * tm.median:.2f} ms", file=sys.stderr, flush=True)
    for b in args.fwd_bwd_batches:
      x, t = _inputs(key, b, size, cfg.in_channels)
      tm, _ = time_jax(fwd_bwd, params, x, t, repeats=args.repeats, warmup=args.warmup)
      fb_rows.append({"dtype": dname, "batch": b, "ms_per_batch": 1e3 * tm.median,
                      "ms_per_image": 1e3 * tm.median / b, "compile_s": tm.compile_s,
                      "timing": tm.to_dict()})
      print(f"  fwd+bwd {dname} batch {b}: {1e3 * tm.median:.2f} ms", file=sys.stderr,
            flush=True)

  err = None
  if "bfloat16" in outs and "float32" in outs:
    c = cfg.in_channels
    err = {"all": _rel_errors(outs["bfloat16"], outs["float32"]),
           "eps": _rel_errors(outs["bfloat16"][..., :c], outs["float32"][..., :c])}
  full = size == 256
  judged = is_h100(kind) and full

  def ref_cols(ref, r):
    if not full or r["batch"] not in ref:
      return ["-", "-"]
    return [f"{ref[r['batch']]:.1f}", f"{ref[r['batch']] / r['ms_per_batch']:.2f}x"]

  lines = [f"## FFHQ-256 ADM U-Net (ffhq256_dps config, {nparams / 1e6:.1f}M params, random "
           f"weights), input {size}x{size}", ""]
  lines += header_lines(env) + [f"- repeats {args.repeats} (median), warm-up {args.warmup}", ""]
  head = ["pass", "dtype", "batch", "ms / batch", "ms / image", "compile s",
          "upstream H100 ms / batch", "speed-up vs upstream H100"]
  rows = []
  for r in fwd_rows:
    rows.append(["fwd", r["dtype"], r["batch"], f"{r['ms_per_batch']:.2f}",
                 f"{r['ms_per_image']:.3f}", f"{r['compile_s']:.1f}"]
                + ref_cols(H100_UPSTREAM_FWD_MS, r))
  for r in fb_rows:
    rows.append(["fwd+bwd", r["dtype"], r["batch"], f"{r['ms_per_batch']:.2f}",
                 f"{r['ms_per_image']:.3f}", f"{r['compile_s']:.1f}"]
                + ref_cols(H100_UPSTREAM_FWD_BWD_MS, r))
  lines.append(markdown_table(head, rows))
  lines.append("")
  if err is not None:
    lines.append(f"bfloat16 vs float32 output at batch 1 (random weights): eps channels: "
                 f"relative max error {err['eps']['rel_max']:.2e}, relative RMS error "
                 f"{err['eps']['rel_rms']:.2e}; all {cfg.out_channels} channels: "
                 f"{err['all']['rel_max']:.2e} / {err['all']['rel_rms']:.2e}")
    lines.append("")

  def find(dname, b):
    for r in fwd_rows:
      if r["dtype"] == dname and r["batch"] == b:
        return r
    return None

  b1, b64 = find("bfloat16", 1), find("bfloat16", 64)
  note = kind if full else f"{kind} at {size}x{size}"
  targets = [
      ("bfloat16 forward, batch 1", f"<= {TARGET_BF16_B1_MS:g} ms",
       f"{b1['ms_per_batch']:.2f} ms" if b1 else "-",
       verdict(None if b1 is None else b1["ms_per_batch"] <= TARGET_BF16_B1_MS, judged, note)),
      ("bfloat16 forward, batch 64", f"<= {TARGET_BF16_B64_MS_PER_IMAGE:g} ms / image",
       f"{b64['ms_per_image']:.3f} ms / image" if b64 else "-",
       verdict(None if b64 is None else b64["ms_per_image"] <= TARGET_BF16_B64_MS_PER_IMAGE,
               judged, note)),
  ]
  lines.append(markdown_table(["target (H100)", "goal", "measured", "verdict"], targets))
  print("\n".join(lines), flush=True)
  return {"config": dict(NAMED_CONFIGS["ffhq256_dps"].upstream), "size": size,
          "num_params": nparams, "forward": fwd_rows, "forward_backward": fb_rows,
          "bf16_vs_fp32": err, "targets_judged": judged,
          "targets": [dict(zip(["target", "goal", "measured", "verdict"], t)) for t in targets]}


def _cpu_models(args) -> list:
  """(name, model kwargs, channels, params or None) for each `--cpu-models` entry."""
  from jaxir.models.loading import load_shipped, shipped_meta
  out = []
  for name in args.cpu_models:
    if name == "adm64":
      out.append((name, CPU64_UPSTREAM, 3, None))
      continue
    meta = shipped_meta(name)
    _, params = load_shipped(name)
    out.append((name, dict(meta["model"]), int(meta.get("channels", 3)), params))
  return out


def _library_inputs(x, t, params):
  """Place (x, t) and params as `jaxir.parallel.batch_solver` does: the batch split over
  the visible devices (a batch smaller than the mesh on its first devices), params replicated."""
  import jax
  from jaxir.parallel import data_mesh, replicate, shard_batch
  devices = jax.devices()[:max(1, min(x.shape[0], jax.device_count()))]
  if len(devices) == 1 or x.shape[0] % len(devices):
    return x, t, params
  mesh = data_mesh(devices)
  x, t = shard_batch((x, t), mesh)
  return x, t, replicate(params, mesh)


def cpu_compare_suite(args) -> dict:
  """Flax vs PyTorch forward on CPU with identical weights; returns the results."""
  import jax
  import torch

  from jaxir.models.adm import ADMUNet, adm_config
  from jaxir.models.convert import adm_state_dict_from_params
  from jaxir.parallel import one_device_call, one_device_options

  env = environment(jax.devices("cpu")[0])
  threads = set_torch_threads(args.threads)
  rows = []
  for name, kwargs, channels, params in _cpu_models(args):
    cfg = adm_config(**{k: v for k, v in kwargs.items() if k != "in_channels"},
                     in_channels=channels)
    size = kwargs["image_size"]
    model = ADMUNet(cfg)
    key = jax.random.key(args.seed)
    if params is None:
      params = _init(model, size, key)
    tmodel = guided_unet(kwargs, adm_state_dict_from_params(params, cfg), channels).eval()
    nparams = sum(p.numel() for p in tmodel.parameters())
    fwd = jax.jit(model.apply)
    for b in args.cpu_batches:
      x, t = _inputs(key, b, size, channels)
      xt = torch.from_numpy(np.array(np.transpose(np.asarray(x), (0, 3, 1, 2))))
      tt = torch.from_numpy(np.asarray(t).astype(np.int64))
      xs, ts, ps = _library_inputs(x, t, params)
      # The library's program: one-device batches get its one-device compile options and
      # run through one_device_call, as in jaxir.parallel.batch_solver and the CLI.
      one = len(getattr(xs, "devices", lambda: [None])()) == 1
      dev = jax.devices()[0]
      options = one_device_options(dev) if one else None
      t0 = time.perf_counter()
      compiled = fwd.lower(ps, xs, ts).compile(compiler_options=options)
      compile_s = time.perf_counter() - t0

      def run_flax():
        # one_device_call blocks only with several host devices: block here either way, or a
        # one-core run (taskset) times the dispatch alone.
        if options:
          return jax.block_until_ready(one_device_call(dev, compiled, ps, xs, ts))
        return jax.block_until_ready(compiled(ps, xs, ts))

      def run_torch():
        with torch.inference_mode():
          return tmodel(xt, tt)

      # Alternating rounds: a slow spell of this shared CPU hits both alike.
      (tj, out_j), (tt_, out_t) = time_interleaved([run_flax, run_torch], repeats=args.repeats,
                                                    warmup=args.warmup)
      out_t = np.transpose(out_t.numpy(), (0, 2, 3, 1))
      diff = float(np.max(np.abs(np.asarray(out_j) - out_t)))
      ndev = len(getattr(xs, "devices", lambda: [None])())
      rows.append({"model": name, "params_m": nparams / 1e6, "batch": b, "devices": ndev,
                   "flax_ms": 1e3 * tj.median, "torch_ms": 1e3 * tt_.median,
                   "torch_over_flax": tt_.median / tj.median, "max_abs_diff": diff,
                   "max_abs_output": float(np.max(np.abs(out_t))), "compile_s": compile_s,
                   "flax_timing": tj.to_dict(), "torch_timing": tt_.to_dict()})
      print(f"  {name} batch {b}: flax {1e3 * tj.median:.1f} ms, torch {1e3 * tt_.median:.1f} "
            "ms", file=sys.stderr, flush=True)

  lines = ["## CPU: Flax (jaxir, the library's settings) vs PyTorch (guided-diffusion), "
           "same weights", ""]
  lines += header_lines(env)
  lines += [f"- jaxir settings: {_settings_line()}",
            f"- torch {torch.__version__}, {torch.get_num_threads()} threads, eager float32, "
            "inference_mode",
            f"- repeats {args.repeats} (median; Flax and PyTorch runs alternate), warm-up "
            f"{args.warmup}; shipped priors with their weights, adm64 with random weights", ""]
  head = ["model", "params (M)", "batch", "jaxir devices", "flax ms", "torch ms",
          "torch / flax", "compile s", "max abs diff"]
  lines.append(markdown_table(head, [
      [r["model"], f"{r['params_m']:.1f}", r["batch"], r["devices"], f"{r['flax_ms']:.1f}",
       f"{r['torch_ms']:.1f}", f"{r['torch_over_flax']:.2f}", f"{r['compile_s']:.1f}",
       f"{r['max_abs_diff']:.1e}"] for r in rows]))
  ok = all(r["torch_over_flax"] >= 1.0 for r in rows) if rows else None
  lines += ["", markdown_table(["target", "measured", "verdict"], [
      ["Flax at least as fast as PyTorch at every batch (torch / flax >= 1), issue 17",
       f"{len(rows)} rows", verdict(ok, True, env["device_kind"])]])]
  print("\n".join(lines), flush=True)
  return {"env": env, "torch_threads": threads, "torch": torch.__version__, "rows": rows,
          "settings": _settings_line(), "verdict": verdict(ok, True, "cpu")}


def _settings_line() -> str:
  import jax
  from jaxir.runtime import single_device_options
  one = single_device_options(jax.devices("cpu")[0]) or "XLA defaults"
  return (f"{jax.device_count('cpu')} CPU device(s), XLA_FLAGS "
          f"{os.environ.get('XLA_FLAGS') or '(unset)'}; one-device programs: {one}")


def main(argv=None) -> int:
  args = _parse(argv)
  if args.xla_defaults:
    os.environ["JAXIR_CPU_SETTINGS"] = "0"
  import jaxir  # noqa: F401  (first: its CPU settings apply only before JAX's backends start)
  import jax
  env = environment()
  on_gpu = jax.default_backend() != "cpu"
  run_ffhq = on_gpu or args.ffhq
  run_cpu = args.cpu_compare or not (on_gpu or args.ffhq)
  results = {"args": vars(args), "env": env}
  print(f"# jaxir U-Net benchmark ({env['device_kind']})\n", flush=True)
  if run_ffhq:
    results["ffhq"] = ffhq_suite(args, env)
    print(flush=True)
  if run_cpu:
    results["cpu_compare"] = cpu_compare_suite(args)
  if args.json:
    write_json(args.json, results)
    print(f"\nwrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
