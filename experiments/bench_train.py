"""Training-step speed on CPU: jaxir's trainer against guided-diffusion's UNetModel in PyTorch.

For the training config of each shipped prior (the `train.name` its card in
`checkpoints/` records: "mnist32_wide" for mnist32, one grey channel, and
"natural64"; `--configs` picks others from `jaxir.train.configs.get_config`)
this times one full training step as the training loop
(`trainer.train_and_evaluate`) runs it:

* jaxir: `step_keys(state.rng, step)`, the jitted `make_batch_sampler` draw
  from the config's data (mnist32: the in-memory digits; natural: random
  crops of the in-memory `ImageBank`, resized and augmented), the jitted
  `make_train_step` (eps loss on random t and noise, AdamW after global-norm
  clipping, the EMA update, donated state) and the loss kept for logging
  (averaged every `log_every` steps), then `block_until_ready` on the state.
* PyTorch: guided-diffusion's `UNetModel` from `create_model(**cfg.model)`
  (minus `in_channels`; for one channel the first and last convolutions are
  replaced by 1-channel `Conv2d`s, as tests/test_train.py does), loaded with
  the SAME initial weights; a batch indexed from an in-memory tensor (mnist32:
  the same digits; natural: a pool of patches drawn once with jaxir's
  sampler), random t and noise, the same eps loss, `torch.optim.AdamW` with
  the config's lr schedule / betas / weight decay, `clip_grad_norm_`, and the
  EMA update of guided-diffusion's `nn.update_ema` with jaxir's decay
  min(ema_decay, (1 + n) / (10 + n)).

Both use the same batch size (`--batch` overrides the config's) and torch
uses as many threads as JAX's CPU client (all cores this process may use)
unless `--threads` is given. The two alternate (interleaved rounds, so a slow
spell of a shared machine hits both alike); the results are median ms per
step, steps/s and torch / jaxir (> 1: jaxir faster) against issue 17's target
"jaxir at least as fast as PyTorch" (>= 1). jaxir runs with the library's CPU settings
(`import jaxir` makes one host device per usable core, as for `experiments/train_prior.py`;
`JAXIR_CPU_SETTINGS=0`: one device); XLA_FLAGS and the device count are printed in the header
with the load averages. On a shared machine (load average above the core
count) the verdict is marked inconclusive: eager PyTorch's OpenMP regions wait
for their slowest thread and slow down far more than XLA's thread pool when
other jobs hold cores (mnist32 forward at batch 32 with load ~5 on 2 cores:
torch 1.3-2.5 s on 2 threads, 0.42-0.66 s on 1), so the ratio then flatters
jaxir; `taskset -c 0` (one core, one thread each) gives a steadier comparison
there. Before timing, both evaluate the loss and its gradient once on
identical weights, batch, t and noise, so the two steps are seen to compute
the same thing (`--no-check` skips it). `--breakdown` also times the parts
(batch draw, forward, forward+backward, train step on a fixed batch).

  python experiments/bench_train.py                    # the shipped priors' configs, 10 repeats
  python experiments/bench_train.py --quick            # smoke run: 2 repeats
  python experiments/bench_train.py --configs natural64 --batch 8 --breakdown
  taskset -c 0 python experiments/bench_train.py      # one core, one thread each
  JAXIR_CPU_SETTINGS=0 python experiments/bench_train.py   # one device (no host-device split)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from _bench import (add_run_args, cpu_cores, environment, guided_unet, header_lines,
                    markdown_table, resolve_run_args, set_torch_threads, time_interleaved,
                    verdict, write_json)

TARGET = "jaxir's training step at least as fast as PyTorch's (torch / jaxir >= 1), issue 17"
TORCH_POOL = 1024  # patches drawn once for PyTorch's in-memory tensor (natural datasets)


def _names(s: str) -> list[str]:
  return [v.strip() for v in s.split(",") if v.strip()]


def shipped_configs() -> list[str]:
  """The training configs the shipped priors were trained with (their cards' `train.name`)."""
  from jaxir.models.loading import SHIPPED, shipped_meta
  return [shipped_meta(n)["train"]["name"] for n in SHIPPED]


def _parse(argv):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", type=_names, default=None,
                  help="training configs, comma-separated (default: the shipped priors' "
                       "training configs, mnist32_wide,natural64)")
  ap.add_argument("--batch", type=int, default=None,
                  help="batch size for every config (default: each config's batch_size)")
  add_run_args(ap, warmup_help="untimed steps after the first (default 2)")
  ap.add_argument("--data", choices=("config", "array"), default="config",
                  help="config: the config's dataset and sampler, as training runs; array: "
                       "random images in memory, indexed on both sides (default config)")
  ap.add_argument("--no-check", dest="check", action="store_false",
                  help="skip the loss/gradient comparison on identical inputs")
  ap.add_argument("--breakdown", action="store_true",
                  help="also time the parts: batch draw, forward, forward+backward, and "
                       "jaxir's train step on a fixed batch")
  ap.add_argument("--placement", choices=("auto", "split", "one"), default="auto",
                  help="where jaxir's step runs with several host devices (default auto: as "
                       "the trainer, time both and keep the faster; jaxir.train.placement)")
  ap.add_argument("--quick", action="store_true",
                  help="smoke run: 2 repeats, 1 warm-up (explicit --repeats still wins)")
  args = ap.parse_args(argv)
  resolve_run_args(args)
  if args.configs is None:
    args.configs = shipped_configs()
  if args.batch is not None and args.batch < 1:
    ap.error(f"--batch {args.batch} must be >= 1")
  return args


def _placement_cell(r) -> str:
  """'one (split 829, one 772)': the placement and, when timed, each one's fastest step in ms."""
  timed = ", ".join(f"{k} {v:.0f}" for k, v in r.get("placement_ms", {}).items())
  return r["placement"] + (f" ({timed})" if timed else "")


def _load_avgs() -> str:
  one, five, fifteen = os.getloadavg()
  return f"{one:.2f}, {five:.2f}, {fifteen:.2f}"


def _lr_factor(cfg, n: int) -> float:
  """jaxir's learning-rate schedule (`jaxir.train.state.lr_schedule`) at optimizer step n, / peak lr."""
  w = max(cfg.warmup_steps, 1)
  if n < w:
    return n / w
  if cfg.lr_schedule == "cosine":
    d = max(cfg.num_steps - w, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(n - w, d) / d))
  return 1.0


def _torch_model(cfg, state_dict):
  """guided-diffusion's UNetModel for `cfg.model`, loaded with `state_dict`, in training mode."""
  return guided_unet(cfg.model, state_dict, cfg.channels).train()


class JaxirLoop:
  """One step of `trainer.train_and_evaluate`'s loop per call (no eval, grids or checkpoints)."""

  def __init__(self, cfg, state, sampler, train_step, data, step_keys):
    self.cfg, self.state, self.sampler, self.train_step = cfg, state, sampler, train_step
    self.data, self.step_keys = data, step_keys
    self.step, self.losses, self.logged = int(state.step), [], []

  def __call__(self):
    import jax
    k_data, k_step = self.step_keys(self.state.rng, self.step)
    batch = self.sampler(self.data, k_data, self.cfg.batch_size)
    self.state, metrics = self.train_step(self.state, batch, k_step)
    self.step += 1
    self.losses.append(metrics["loss"])
    if self.step % self.cfg.log_every == 0:
      self.logged.append(float(np.mean(jax.device_get(self.losses))))
      self.losses = []
    return jax.block_until_ready(self.state)


class TorchLoop:
  """The same step in PyTorch: in-memory batch, eps loss, AdamW + clipping, EMA."""

  def __init__(self, cfg, net, data, alphas_cumprod, seed):
    import torch
    self.cfg, self.net, self.data = cfg, net, data
    self.params = [p for p in net.parameters() if p.requires_grad]
    self.ema = [p.detach().clone() for p in self.params]
    self.opt = torch.optim.AdamW(self.params, lr=cfg.learning_rate,
                                 betas=(cfg.adam_b1, cfg.adam_b2), eps=1e-8,  # optax's eps
                                 weight_decay=cfg.weight_decay)
    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda n: _lr_factor(cfg, n))
    self.abar = torch.from_numpy(np.array(alphas_cumprod, np.float32))
    self.gen = torch.Generator().manual_seed(seed)
    self.step, self.losses, self.logged = 0, [], []

  def loss(self, x0, t, noise):
    """The eps loss (optionally truncated-SNR weighted) of a batch at given t and noise."""
    import torch
    n, c = x0.shape[0], x0.shape[1]
    a = self.abar[t].view(n, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
    out = self.net(x_t, t)
    per = ((out[:, :c] - noise) ** 2).mean(dim=(1, 2, 3))
    if self.cfg.loss_weight == "truncated_snr":
      per = per * torch.clamp((1.0 - a[:, 0, 0, 0]) / a[:, 0, 0, 0], min=1.0)
    return per.mean()

  def __call__(self):
    import torch
    cfg, b = self.cfg, self.cfg.batch_size
    x0 = self.data[torch.randint(0, self.data.shape[0], (b,), generator=self.gen)]
    t = torch.randint(0, self.abar.shape[0], (b,), generator=self.gen)
    noise = torch.randn(x0.shape, generator=self.gen)
    loss = self.loss(x0, t, noise)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
    self.opt.step()
    self.sched.step()
    decay = min(cfg.ema_decay, (1.0 + self.step) / (10.0 + self.step))
    with torch.no_grad():  # guided-diffusion nn.update_ema
      for e, p in zip(self.ema, self.params):
        e.mul_(decay).add_(p, alpha=1.0 - decay)
    self.step += 1
    self.losses.append(loss.detach())
    if self.step % cfg.log_every == 0:
      self.logged.append(float(torch.stack(self.losses).mean()))
      self.losses = []
    return loss


def _data(cfg, args):
  """(config, jaxir train data, its description); the config's dataset or random arrays."""
  from jaxir.train import trainer
  if args.data == "array":
    rng = np.random.default_rng(args.seed)
    s = cfg.image_size
    x = np.clip(rng.standard_normal((TORCH_POOL, s, s, cfg.channels)) * 0.5, -1, 1)
    return (cfg.replace(dataset="array"), x.astype(np.float32),
            f"{TORCH_POOL} random {s}x{s} images in memory (both sides index them)")
  train, _ = trainer.load_data(cfg)
  if cfg.dataset == "natural":
    return cfg, train, (f"natural: jaxir crops {train.pixels.shape[0]} photographs "
                        f"(make_batch_sampler, resized + augmented); torch indexes "
                        f"{TORCH_POOL} patches drawn once with it")
  return cfg, train, f"{cfg.dataset}: {train.shape[0]} images in memory, both sides index them"


def _torch_pool(cfg, sampler, data, key):
  """NCHW float32 torch tensor of in-memory training images for the PyTorch loop."""
  import jax
  import torch
  if cfg.dataset == "natural":
    pool = np.asarray(jax.device_get(sampler(data, key, TORCH_POOL)))
  else:
    pool = np.asarray(data)
  return torch.from_numpy(np.array(np.transpose(pool, (0, 3, 1, 2)), np.float32, order="C"))


def _check(cfg, apply_fn, params, tloop, abar, key):
  """Loss and gradient of jaxir and PyTorch on identical weights, batch, t and noise."""
  import jax
  import jax.numpy as jnp
  import torch
  b, s, c = cfg.batch_size, cfg.image_size, cfg.channels
  k0, kt, kn = jax.random.split(key, 3)
  x0 = jnp.clip(0.5 * jax.random.normal(k0, (b, s, s, c)), -1.0, 1.0)
  t = jax.random.randint(kt, (b,), 0, abar.shape[0])
  eps = jax.random.normal(kn, (b, s, s, c))

  def loss(p):
    a = abar[t].reshape(b, 1, 1, 1)
    out = apply_fn(p, jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps, t)
    per = jnp.mean((out[..., :c] - eps) ** 2, axis=(1, 2, 3))
    if cfg.loss_weight == "truncated_snr":
      per = per * jnp.maximum(1.0, (1.0 - a[:, 0, 0, 0]) / a[:, 0, 0, 0])
    return jnp.mean(per)

  lj, gj = jax.jit(jax.value_and_grad(loss))(params)
  gnorm_j = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(gj))))
  nchw = lambda a: torch.from_numpy(np.array(np.transpose(np.asarray(a), (0, 3, 1, 2)),
                                              order="C"))
  tloop.net.zero_grad(set_to_none=True)
  lt = tloop.loss(nchw(x0), torch.from_numpy(np.asarray(t).astype(np.int64)), nchw(eps))
  lt.backward()
  gnorm_t = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in tloop.params)))
  tloop.net.zero_grad(set_to_none=True)
  lj, lt = float(lj), float(lt.detach())
  return {"loss_jaxir": lj, "loss_torch": lt, "loss_rel_diff": abs(lj - lt) / abs(lt),
          "grad_norm_jaxir": gnorm_j, "grad_norm_torch": gnorm_t,
          "grad_norm_rel_diff": abs(gnorm_j - gnorm_t) / gnorm_t}


def _breakdown(cfg, args, apply_fn, jloop, tloop, data, abar):
  """Median ms of the parts of both steps (interleaved), as rows [part, jaxir ms, torch ms]."""
  import jax
  import jax.numpy as jnp
  import torch

  from jaxir.train import trainer
  b = cfg.batch_size
  key = jax.random.key(args.seed + 1)
  batch = jloop.sampler(data, key, b)
  fwd = jax.jit(lambda p, x, k: trainer.diffusion_loss(apply_fn, p, x, k, abar))
  fwd_bwd = jax.jit(jax.value_and_grad(
      lambda p, x, k: trainer.diffusion_loss(apply_fn, p, x, k, abar)))
  params = jax.tree.map(jnp.copy, jloop.state.params)  # the loop donates the state's buffers
  fixed = JaxirLoop(cfg, jloop.state, lambda d, k, n: batch, jloop.train_step, None,
                    jloop.step_keys)
  jloop.state = None  # donated by `fixed` from now on
  x0 = tloop.data[:b].clone()
  t = torch.randint(0, tloop.abar.shape[0], (b,), generator=tloop.gen)
  noise = torch.randn(x0.shape, generator=tloop.gen)

  def j_draw():
    k_data, _ = jloop.step_keys(fixed.state.rng, fixed.step)
    return jax.block_until_ready(jloop.sampler(data, k_data, b))

  def t_draw():
    return tloop.data[torch.randint(0, tloop.data.shape[0], (b,), generator=tloop.gen)]

  def t_fwd():
    with torch.no_grad():
      return tloop.loss(x0, t, noise)

  def t_fwd_bwd():
    tloop.net.zero_grad(set_to_none=True)
    loss = tloop.loss(x0, t, noise)
    loss.backward()
    return loss

  parts = [("batch draw (keys + sampler / index)", j_draw, t_draw),
           ("forward (loss, no grad)", lambda: jax.block_until_ready(fwd(params, batch, key)),
            t_fwd),
           ("forward + backward (value_and_grad / loss.backward)",
            lambda: jax.block_until_ready(fwd_bwd(params, batch, key)), t_fwd_bwd),
           ("train step on a fixed batch (jaxir: step_keys + jitted train_step)", fixed, None)]
  rows = []
  for name, fj, ft in parts:
    fns = [fj] if ft is None else [fj, ft]
    res = time_interleaved(fns, repeats=args.repeats, warmup=max(args.warmup, 1))
    rows.append({"part": name, "jaxir_ms": 1e3 * res[0][0].median,
                 "torch_ms": 1e3 * res[1][0].median if ft is not None else None})
    print(f"    {name}: jaxir {rows[-1]['jaxir_ms']:.1f} ms"
          + (f", torch {rows[-1]['torch_ms']:.1f} ms" if ft is not None else ""),
          file=sys.stderr, flush=True)
  return rows


def bench_config(name: str, args, threads: int) -> dict:
  """Time jaxir's and PyTorch's training step for one config; returns the results."""
  import jax

  from jaxir.diffusion.schedule import get_schedule
  from jaxir.models.convert import adm_state_dict_from_params, count_params
  from jaxir.train import configs, trainer

  cfg = configs.get_config(name)
  if args.batch is not None:
    cfg = cfg.replace(batch_size=args.batch)
  key = jax.random.key(args.seed)
  cfg, data, data_desc = _data(cfg, args)
  model = trainer.build_model(cfg)
  # Where the step runs: as train_and_evaluate chooses for a long run (auto: time both).
  placed = trainer.choose_placement(cfg, model, data, args.placement)
  mesh = placed.mesh
  if placed.ms:
    cell = _placement_cell({"placement": placed.name, "placement_ms": placed.ms})
    print(f"  {name}: placement {cell} ms", file=sys.stderr, flush=True)
  apply_fn = trainer.make_apply_fn(model)
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.jit(lambda k: trainer.create_train_state(cfg, model, k), out_shardings=repl)(key)
  nparams = count_params(state.params)
  abar = get_schedule(cfg.schedule, cfg.num_timesteps).alphas_cumprod
  sampler = trainer.make_batch_sampler(cfg, mesh)
  data = jax.device_put(data, repl)
  net = _torch_model(cfg, adm_state_dict_from_params(state.params, cfg.model))
  torch_n = sum(p.numel() for p in net.parameters())
  tloop = TorchLoop(cfg, net, _torch_pool(cfg, sampler, data, jax.random.fold_in(key, 7)),
                    np.asarray(abar), args.seed)
  check = None
  if args.check:
    check = _check(cfg, apply_fn, state.params, tloop, abar, jax.random.fold_in(key, 8))
    print(f"  {name}: check loss rel diff {check['loss_rel_diff']:.1e}, grad-norm rel diff "
          f"{check['grad_norm_rel_diff']:.1e}", file=sys.stderr, flush=True)
  train_step = trainer.model_train_step(cfg, model, mesh)
  jloop = JaxirLoop(cfg, state, sampler, train_step, data, trainer.step_keys)
  t0 = time.perf_counter()
  jloop()  # compiles the sampler and the train step
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  tloop()
  torch_first_s = time.perf_counter() - t0
  load_before = _load_avgs()
  (tj, _), (tt, _) = time_interleaved([jloop, tloop], repeats=args.repeats, warmup=args.warmup)
  load_after = _load_avgs()
  print(f"  {name} batch {cfg.batch_size}: jaxir {1e3 * tj.median:.0f} ms, torch "
        f"{1e3 * tt.median:.0f} ms (load {load_after})", file=sys.stderr, flush=True)
  parts = _breakdown(cfg, args, apply_fn, jloop, tloop, data, abar) if args.breakdown else None
  return {"config": name, "batch": cfg.batch_size, "image_size": cfg.image_size,
          "channels": cfg.channels, "num_params": nparams, "torch_num_params": torch_n,
          "devices": mesh.size, "placement": placed.name, "placement_ms": placed.ms,
          "data": data_desc, "jaxir_ms": 1e3 * tj.median,
          "torch_ms": 1e3 * tt.median, "jaxir_steps_per_s": 1.0 / tj.median,
          "torch_steps_per_s": 1.0 / tt.median, "torch_over_jaxir": tt.median / tj.median,
          "jaxir_first_step_s": first_s, "torch_first_step_s": torch_first_s,
          "load_avg_before": load_before, "load_avg_after": load_after,
          "jaxir_timing": tj.to_dict(), "torch_timing": tt.to_dict(), "check": check,
          "breakdown": parts}


def main(argv=None) -> int:
  args = _parse(argv)
  import jax
  import torch

  from jaxir.train import configs
  for name in args.configs:
    configs.get_config(name)  # unknown names fail before any work
  cpu = jax.devices("cpu")[0]
  env = environment(cpu)
  if jax.default_backend() != "cpu":
    print(f"note: JAX's default backend is {jax.default_backend()}; this benchmark is meant "
          "for CPU (the jaxir step runs on the default devices)", file=sys.stderr)
  threads = set_torch_threads(args.threads)
  load_start = _load_avgs()
  rows = [bench_config(name, args, threads) for name in args.configs]
  load_end = _load_avgs()
  devices = rows[0]["devices"] if rows else jax.device_count()

  lines = ["# Training step: jaxir (Flax, jit) vs PyTorch (guided-diffusion UNetModel), CPU", ""]
  lines += header_lines(env)
  busy = max(float(v.split(",")[0]) for v in (load_start, load_end))
  loaded = busy > (os.cpu_count() or 1)  # system-wide load against the machine's cores
  lines += [f"- load averages (1, 5, 15 min): {load_start} at the start, {load_end} at the end"
            + (" (more runnable jobs than cores: other work ran alongside, so times are "
               "inflated, and eager PyTorch's OpenMP regions, which wait for their slowest "
               "thread, suffer more than XLA's thread pool: the ratio favours jaxir)"
               if loaded else ""),
            f"- torch {torch.__version__}, {torch.get_num_threads()} threads, eager float32; "
            f"JAX CPU client on {cpu_cores()} cores, jaxir mesh of {devices} device(s)",
            f"- per step: batch draw + eps loss on random t, noise + AdamW (grad clipping) + EMA; "
            f"repeats {args.repeats} (median; jaxir and PyTorch steps alternate), warm-up "
            f"{args.warmup} after a first (compiling) step", ""]
  head = ["config", "params", "batch", "jaxir placement", "jaxir ms / step", "torch ms / step",
          "jaxir steps/s", "torch steps/s", "torch / jaxir", "jaxir first step s", "load (1, 5, 15) after"]
  lines.append(markdown_table(head, [
      [r["config"], f"{r['num_params'] / 1e6:.2f}M", r["batch"], _placement_cell(r),
       f"{r['jaxir_ms']:.0f}",
       f"{r['torch_ms']:.0f}", f"{r['jaxir_steps_per_s']:.2f}", f"{r['torch_steps_per_s']:.2f}",
       f"{r['torch_over_jaxir']:.2f}", f"{r['jaxir_first_step_s']:.1f}", r["load_avg_after"]]
      for r in rows]))
  lines.append("")
  for r in rows:
    lines.append(f"- {r['config']} data: {r['data']}")
    if r["num_params"] != r["torch_num_params"]:
      lines.append(f"  - PARAMETER COUNTS DIFFER: jaxir {r['num_params']}, torch "
                   f"{r['torch_num_params']}")
    if r["check"] is not None:
      c = r["check"]
      lines.append(f"  - same weights, batch, t, noise: loss jaxir {c['loss_jaxir']:.6f} / torch "
                   f"{c['loss_torch']:.6f} (rel diff {c['loss_rel_diff']:.1e}), gradient norm "
                   f"{c['grad_norm_jaxir']:.5f} / {c['grad_norm_torch']:.5f} (rel diff "
                   f"{c['grad_norm_rel_diff']:.1e})")
  for r in rows:
    if r["breakdown"]:
      lines += ["", f"### Parts of the step: {r['config']}, batch {r['batch']} (median ms)", ""]
      lines.append(markdown_table(["part", "jaxir ms", "torch ms"], [
          [p["part"], f"{p['jaxir_ms']:.1f}",
           "-" if p["torch_ms"] is None else f"{p['torch_ms']:.1f}"] for p in r["breakdown"]]))
  ok = all(r["torch_over_jaxir"] >= 1.0 for r in rows) if rows else None
  shipped = {(r["config"], r["batch"]) for r in rows} == {
      (n, configs.get_config(n).batch_size) for n in shipped_configs()}
  result = verdict(ok, True, env["device_kind"])
  if loaded and ok is not None:
    # Eager PyTorch's OpenMP regions wait for their slowest thread, so when other jobs take
    # cores it slows far more than XLA's thread pool: the ratio then overstates jaxir.
    result += f" (inconclusive: load average {busy:.1f} > {os.cpu_count()} cores)"
  lines += ["", markdown_table(["target", "measured", "verdict"], [
      [TARGET, ", ".join(f"{r['config']} b{r['batch']}: {r['torch_over_jaxir']:.2f}" for r in rows),
       result]])]
  if not shipped:
    lines.append("\n(not the shipped configs at their batch sizes: the verdict covers the "
                 "measured runs only)")
  print("\n".join(lines), flush=True)
  if args.json:
    write_json(args.json, {"args": vars(args), "env": env, "torch": torch.__version__,
                           "torch_threads": threads, "load_avg_start": load_start,
                           "load_avg_end": load_end, "rows": rows,
                           "verdict": result, "loaded": loaded})
    print(f"\nwrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
