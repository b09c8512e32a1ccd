"""DeqIR convergence: why Anderson with per-slot weights stalls, and settings that converge.

  python experiments/deqir_convergence.py --prior gauss --T 25,50,100
  python experiments/deqir_convergence.py --prior mnist32 --T 25 --variants picard,official,global
  python experiments/deqir_convergence.py --report          # markdown from the saved runs

For each prior ("gauss": an analytic Gaussian prior on 32x32x1 images with a
smooth covariance; "mnist32", "natural64": the shipped priors on held-out
images), SR x4 by average pooling (`jaxir.tasks.make_operator("sr4_avgpool")`),
noiseless, DeqIR's defaults (etw 0.1, nw 0) and each T, it solves DeqIR's joint
fixed point (`jaxir.solvers.deqir.joint_map`, all slots started at x_T) with
Picard and with Anderson variants, and reports

* evaluations of the joint map to reach the official tolerance (relative
  residual 1e-3), within a budget of 60 evaluations (Picard: T + 1, where it is
  exact), "-" when not reached;
* the relative residual after 15 evaluations (the official budget) and at the
  stop;
* the distance of the returned image (last slot) from the sequential DDNM chain
  (`jaxir.solvers.ddnm.ddnm_chain`, same x_T): ||x - x_seq|| / ||x_seq||, after
  15 evaluations and at the stop.

The solvers run as a host loop around ONE jitted joint map per (prior, T), so
the variants share a compilation and one run of 60 evaluations also gives the
official 15-evaluation result (the iterates do not depend on the budget). The
loop is `jaxir.fixed_point`'s arithmetic step by step (its `anderson_weights`,
`relative_residual`, history X0, X1 = f(X0), slot k % m, return X_k); `--check`
runs `jaxir.solvers.deqir.deqir_solve` with the official settings (and the
library's Anderson for every variant on the Gaussian prior) and asserts that the
evaluation counts and results agree.

Diagnostics (`--diag`, Anderson variants): at the last iteration, per slot,
the Gram scale of the slot's history (mean ||F_i - X_i||^2 over its n entries)
against lam, the weight alpha on the newest history entry, and where the
residual sits; and (`--consistency`, one extra map call per iteration, not
counted) Anderson's own prediction of the residual at the mixed point,
r_bar = sum_j alpha_j G_j, against the true residual f(x_bar) - x_bar there
(x_bar = sum_j alpha_j X_j): for an affine map with one weight set they agree
exactly; per-slot weights break it because slot i's input is slot i-1's state,
mixed with slot i-1's weights, not slot i's.

Results are saved as JSON in `experiments/results/deqir_convergence/` and
`--report` writes `experiments/results/deqir_convergence.md`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "results" / "deqir_convergence"
REPORT = HERE / "results" / "deqir_convergence.md"
FIGURE = HERE / "results" / "deqir_convergence.png"
PLOTTED = ("picard", "official", "global", "taa")  # the variants drawn in FIGURE
TOL = 1e-3  # DeqIR functions/ddim_anderson.py (hard-coded)
BUDGET = 60  # evaluations ("more iterations": max_iter 60)
OFFICIAL_EVALS = 15  # DeqIR main.py --max_anderson_iters

# name -> Anderson fields (None: Picard). "official" is DeqIRConfig's default solver.
VARIANTS = {
    "picard": None,
    "official": dict(m=5, lam=1e-3, beta=1.0, per_row=True, rel=False),
    "slot-rel": dict(m=5, lam=1e-3, beta=1.0, per_row=True, rel=True),
    "slot-b0.5": dict(m=5, lam=1e-3, beta=0.5, per_row=True, rel=False),
    "slot-m3": dict(m=3, lam=1e-3, beta=1.0, per_row=True, rel=False),
    "slot-m8": dict(m=8, lam=1e-3, beta=1.0, per_row=True, rel=False),
    "global": dict(m=5, lam=1e-3, beta=1.0, per_row=False, rel=False),
    "global-rel": dict(m=5, lam=1e-3, beta=1.0, per_row=False, rel=True),
    "global-m3": dict(m=3, lam=1e-3, beta=1.0, per_row=False, rel=False),
    "global-m8": dict(m=8, lam=1e-3, beta=1.0, per_row=False, rel=False),
    "global-b0.5": dict(m=5, lam=1e-3, beta=0.5, per_row=False, rel=False),
    "global-rel-m8": dict(m=8, lam=1e-3, beta=1.0, per_row=False, rel=True),
    "global-rel-m8-b0.5": dict(m=8, lam=1e-3, beta=0.5, per_row=False, rel=True),
    "taa": dict(m=5, lam=1e-3, beta=1.0, per_row=True, rel=False, tri=True),
    "taa-m8": dict(m=8, lam=1e-3, beta=1.0, per_row=True, rel=False, tri=True),
    "taa-m3": dict(m=3, lam=1e-3, beta=1.0, per_row=True, rel=False, tri=True),
    "taa-rel": dict(m=5, lam=1e-3, beta=1.0, per_row=True, rel=True, tri=True),
}


def describe(name):
  v = VARIANTS[name]
  if v is None:
    return "Picard (beta 1)"
  return (f"Anderson m {v['m']}, beta {v['beta']}, "
          f"{'triangular (ParaTAA) ' if v.get('tri') else ''}"
          f"{'per-slot weights' if v['per_row'] else 'one weight set'}, "
          f"{'relative' if v['rel'] else 'absolute'} ridge {v['lam']:g}")


# ----------------------------------------------------------------- problem

def gauss_prior(side=32):
  """N(0, Sigma) on side x side x 1 images, Sigma_ij = 0.25 exp(-|p_i - p_j|^2 / 8) + 1e-3 I."""
  from jaxir.priors import gaussian_prior
  ii, jj = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
  p = np.stack([ii.ravel(), jj.ravel()], 1).astype(np.float64)
  cov = 0.25 * np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 8.0) + 1e-3 * np.eye(side * side)
  return gaussian_prior(np.zeros((side, side, 1), np.float32), cov)


def problem(prior_name, index, seed):
  """(prior, operator, x_gt, y, x_T) for one image."""
  from jaxir.tasks import make_operator
  if prior_name == "gauss":
    from jaxir.priors import sample_prior
    prior = gauss_prior()
    x = jnp.clip(sample_prior(jax.random.key(100 + index), prior, 1)[0], -1, 1)
  else:
    from quality_table import heldout_images
    from jaxir.priors import load_prior
    from jaxir.tasks import prior_channels
    prior = load_prior(prior_name)
    x = jnp.asarray(heldout_images(prior_name, index + 1, None, prior_channels(prior))[index])
  op = make_operator("sr4_avgpool", jax.random.key(7), tuple(x.shape))
  x_T = jax.random.normal(jax.random.key(seed + index), x.shape, jnp.float32)
  return prior, op, x, op.A(x), x_T


# ----------------------------------------------------------------- solvers (host loop)

def _rel_l2(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def make_mixer(m, lam, beta, rel, rows, tri=False):
  """Jitted Anderson mixing of `jaxir.fixed_point` on (m, rows, D) histories."""
  from jaxir.fixed_point import anderson_weights
  hi = jax.lax.Precision.HIGHEST

  @jax.jit
  def mix(X, F, n):
    alpha = anderson_weights(F - X, n, lam, rel, tri)
    xb = jnp.einsum("ri,ird->rd", alpha, X, precision=hi)
    fb = jnp.einsum("ri,ird->rd", alpha, F, precision=hi)
    x = beta * fb
    if beta != 1.0:
      x = x + (1 - beta) * xb
    return x, alpha, xb, fb
  return mix


def solve(fmap, X0, name, T, *, budget=BUDGET, diag=False, consistency=False):
  """One variant from all slots = x_T. Returns a dict of numbers (and final X)."""
  from jaxir.fixed_point import relative_residual
  v = VARIANTS[name]
  shape = X0.shape
  out = dict(variant=name, curve=[], evals_to_tol=None)
  t0 = time.perf_counter()
  if v is None:  # Picard: 1 evaluation, then one per iteration
    budget = T + 1
    x, fx, ev = X0, fmap(X0), 1
    while True:
      x = fx
      fx = fmap(x)
      ev += 1
      r = float(relative_residual(x, fx))
      out["curve"].append(r)
      if ev == OFFICIAL_EVALS:
        out["x15"] = np.asarray(x[-1])
        out["res15"] = r
      if r < TOL or ev >= budget:
        break
  else:
    m, rows = v["m"], (T if v["per_row"] else 1)
    mix = make_mixer(m, v["lam"], v["beta"], v["rel"], rows, v.get("tri", False))
    flat = lambda z: jnp.reshape(z, (rows, -1))
    g = lambda z: flat(fmap(jnp.reshape(z, shape)))
    x0 = flat(X0)
    f0 = g(x0)
    X = jnp.zeros((m,) + x0.shape, x0.dtype).at[0].set(x0)
    F = jnp.zeros((m,) + x0.shape, x0.dtype).at[0].set(f0)
    x = f0
    fx = g(x)
    X, F, ev, k = X.at[1 % m].set(x), F.at[1 % m].set(fx), 2, 2
    cons = []
    while True:
      n = min(k, m)
      x, alpha, xb, fb = mix(X, F, n)
      if consistency:  # Anderson's predicted residual at x_bar vs the true one (extra call)
        pred = fb - xb
        true = g(xb) - xb
        cons.append(float(jnp.linalg.norm(true) / jnp.maximum(jnp.linalg.norm(pred), 1e-30)))
      fx = g(x)
      ev += 1
      X, F = X.at[k % m].set(x), F.at[k % m].set(fx)
      r = float(relative_residual(x, fx))
      out["curve"].append(r)
      if ev == OFFICIAL_EVALS:
        out["x15"] = np.asarray(jnp.reshape(x, shape)[-1])
        out["res15"] = r
      if r < TOL or ev >= budget:
        break
      k += 1
    if diag:
      out["diag"] = diagnostics(X, F, alpha, k, m, v, x, fx, shape)
    if consistency:
      out["consistency"] = cons
    x = jnp.reshape(x, shape)
    fx = jnp.reshape(fx, shape)
  out["seconds"] = time.perf_counter() - t0
  out["evals"] = ev
  out["res_final"] = out["curve"][-1]
  if out["res_final"] < TOL:
    out["evals_to_tol"] = ev
  out["x_final"] = np.asarray(x[-1])
  if "x15" not in out:  # stopped before 15 evaluations: the same result
    out["x15"], out["res15"] = out["x_final"], out["res_final"]
  return out


def diagnostics(X, F, alpha, k, m, v, x, fx, shape):
  """Per-slot numbers of the last mixing (see the module doc)."""
  n = min(k, m)
  T = shape[0]
  Gs = np.asarray(jnp.reshape(F - X, (m, T, -1)), np.float64)[:n]  # (n, T, d) slot-wise
  g2 = np.mean(np.sum(Gs ** 2, axis=2), axis=0)  # (T,) mean ||G_i||^2 over the history
  a = np.asarray(alpha, np.float64)
  newest = (k - 1) % m  # the slot written just before the last mixing
  r2 = np.sum(np.reshape(np.asarray(fx - x, np.float64), (T, -1)) ** 2, axis=1)
  f2 = np.sum(np.reshape(np.asarray(fx, np.float64), (T, -1)) ** 2, axis=1)  # ||F_i||^2
  q = [0, T // 4, T // 2, 3 * T // 4, T - 1]
  d = dict(lam=v["lam"], slots=q, g2=[float(g2[i]) for i in q],
           frac_below_lam=float(np.mean(g2 < v["lam"])),
           r2_share_last_quarter=float(r2[3 * T // 4:].sum() / r2.sum()),
           r2_share_first_half=float(r2[:T // 2].sum() / r2.sum()),
           slot_norm_min_max=[float(np.sqrt(t)) for t in (f2.min(), f2.max())],
           per_slot_rel_res=[float(np.sqrt(r2[i]) / np.linalg.norm(
               np.reshape(np.asarray(fx, np.float64), (T, -1))[i])) for i in q])
  if v["per_row"]:
    d["alpha_newest"] = [float(a[i, newest]) for i in q]
    d["alpha_absmax"] = [float(np.abs(a[i, :n]).max()) for i in q]
    jumps = np.abs(np.diff(a[:, :n], axis=0)).sum(axis=1)
    d["alpha_jump_median"] = float(np.median(jumps))  # sum_j |alpha_{i+1,j} - alpha_{i,j}|
    d["uniform_slots"] = float(np.mean(np.abs(a[:, :n] - 1.0 / n).max(axis=1) < 0.05))
  else:
    d["alpha"] = [float(t) for t in a[0, :n]]
    d["g2_total"] = float(np.sum(g2))
  return d


# ----------------------------------------------------------------- checks against the library

def check_library(prior, op, x_T, y, T, results, names):
  """deqir_solve (official) and, for cheap priors, fixed_point per variant must agree."""
  from jaxir.fixed_point import Anderson, Picard, fixed_point
  from jaxir.solvers import deqir as Q
  lines = []
  fmap = lambda X: Q.joint_map(prior, X, x_T, y, op, Q.deqir_timesteps(T), etw=0.1)
  X0 = jnp.broadcast_to(x_T, (T,) + x_T.shape)
  for name in names:
    v, r = VARIANTS[name], results[name]
    if v is None:
      solver = Picard(tol=TOL, max_iter=r["evals"] - 1)
    else:
      solver = Anderson(m=v["m"], lam=v["lam"], beta=v["beta"], tol=TOL, max_iter=r["evals"],
                        per_row=v["per_row"], lam_relative=v["rel"],
                        triangular=v.get("tri", False))
    if name == "official" and T == 25:
      x, info = jax.jit(lambda a, b: Q.deqir_solve(a, b, op, prior, Q.DeqIRConfig(
          T=T, max_iter=r["evals"]), grad=None))(x_T, y)
    else:
      X, info = jax.jit(lambda X0: fixed_point(fmap, X0, solver=solver, grad=None))(X0)
      x = X[-1]
    d = _rel_l2(x, r["x_final"])
    ok = int(info.evaluations) == r["evals"] and d < 1e-4
    lines.append(f"check {name}: library evaluations {int(info.evaluations)} vs host "
                 f"{r['evals']}, rel. diff {d:.1e} -> {'ok' if ok else 'MISMATCH'}")
    print(lines[-1], flush=True)
  return lines


# ----------------------------------------------------------------- driver and report

def _fmt(x, spec=".1e"):
  return "-" if x is None else format(x, spec)


def run(args):
  from jaxir.solvers import deqir as Q
  from jaxir.solvers.ddnm import ddnm_chain
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  prior, op, x_gt, y, x_T = problem(args.prior, args.image, args.seed)
  names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
  for T in [int(t) for t in args.T.split(",")]:
    ts = Q.deqir_timesteps(T)
    fmap = jax.jit(lambda X: Q.joint_map(prior, X, x_T, y, op, ts, etw=0.1))
    X0 = jnp.broadcast_to(x_T, (T,) + tuple(x_T.shape))
    t0 = time.perf_counter()
    jax.block_until_ready(fmap(X0))
    t_map = time.perf_counter() - t0
    x_seq = np.asarray(jax.jit(lambda a, b: ddnm_chain(a, b, op, prior, T=T, etw=0.1))(x_T, y))
    print(f"\n{args.prior} T={T}: first map call (with compile) {t_map:.1f} s", flush=True)
    print("| variant | evals to tol | res @15 | dist @15 | res @stop | dist @stop | evals | s |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name in names:
      r = solve(fmap, X0, name, T, budget=args.budget, diag=args.diag,
                consistency=args.consistency)
      r["dist15"] = _rel_l2(r["x15"], x_seq)
      r["dist_final"] = _rel_l2(r["x_final"], x_seq)
      results[name] = r
      print(f"| {name} | {_fmt(r['evals_to_tol'], 'd')} | {r['res15']:.1e} | {r['dist15']:.1e} "
            f"| {r['res_final']:.1e} | {r['dist_final']:.1e} | {r['evals']} "
            f"| {r['seconds']:.0f} |", flush=True)
      if "diag" in r:
        print(f"    diag {name}: {json.dumps(r['diag'], default=float)}", flush=True)
      if "consistency" in r:
        c = r["consistency"]
        print(f"    ||true residual at x_bar|| / ||Anderson's prediction||: median "
              f"{np.median(c):.2f}, first 5 {[round(t, 2) for t in c[:5]]}", flush=True)
    checks = check_library(prior, op, x_T, y, T, results, args.check.split(",")) \
        if args.check else []
    rec = dict(prior=args.prior, T=T, image=args.image, seed=args.seed, checks=checks,
               date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
               machine=f"{platform.node()} {platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPUs, jax {jax.__version__} {jax.devices()[0].platform}",
               load=os.getloadavg()[0],
               results={k: {kk: vv for kk, vv in r.items() if not kk.startswith("x")}
                        for k, r in results.items()})
    path = OUT_DIR / f"{args.prior}_T{T}.json"
    if path.exists():  # merge with earlier variants of the same (prior, T)
      old = json.loads(path.read_text())
      old["results"].update(rec["results"])
      old["checks"] = old.get("checks", []) + checks
      rec = {**old, **{k: rec[k] for k in ("date", "machine", "load")}, "results": old["results"],
             "checks": old["checks"]}
    path.write_text(json.dumps(rec, indent=1, default=float))


def report(args):
  recs = [json.loads(p.read_text()) for p in sorted(OUT_DIR.glob("*.json"))]
  order = {"gauss": 0, "mnist32": 1, "natural64": 2}
  recs.sort(key=lambda r: (order.get(r["prior"], 9), r["T"]))
  lines = ["# DeqIR joint fixed point: Picard and Anderson variants",
           "",
           "Produced by `experiments/deqir_convergence.py` (SR x4 by average pooling, noiseless, "
           "etw 0.1, one image, all slots started at x_T; tolerance 1e-3 on the relative residual "
           "||f(X) - X|| / ||f(X)||; budget 60 map evaluations unless `--budget` cut it (then "
           "'evals' shows the budget spent without convergence), Picard T + 1). 'dist' is "
           "||x - x_seq|| / ||x_seq|| of the restored image against the sequential DDNM chain "
           "from the same x_T; '@15' is the official budget of 15 evaluations. Priors: `gauss` = "
           "N(0, Sigma) on 32x32x1, Sigma = 0.25 exp(-|p - q|^2 / 8) + 1e-3 I, the image a "
           "clipped prior draw; `mnist32`, `natural64` = the shipped priors on held-out image 0 "
           "(`experiments/quality_table.heldout_images`); x_T from `jax.random.key(0)`.",
           ""]
  runs = sorted({(r["date"], r["machine"], round(r["load"], 1)) for r in recs})
  lines += ["Runs (UTC date, machine, 1-min load average at the end of each run): " +
            "; ".join(f"{d}, {m}, load {l}" for d, m, l in runs), ""]
  lines += ["Variants: " + "; ".join(f"`{k}` = {describe(k)}" for k in VARIANTS), ""]
  lines += ["| prior | T | variant | evals to tol | res @15 | dist @15 | res @stop | dist @stop "
            "| evals |", "|---|---|---|---|---|---|---|---|---|"]
  for r in recs:
    for name in VARIANTS:
      if name not in r["results"]:
        continue
      x = r["results"][name]
      lines.append(f"| {r['prior']} | {r['T']} | {name} | {_fmt(x['evals_to_tol'], 'd')} "
                   f"| {x['res15']:.1e} | {x['dist15']:.1e} | {x['res_final']:.1e} "
                   f"| {x['dist_final']:.1e} | {x['evals']} |")
  checks = [c for r in recs for c in r.get("checks", [])]
  if checks:
    lines += ["", "Host loop against the library (`jaxir.fixed_point` / `deqir_solve`):", ""]
    lines += [f"- {r['prior']} T={r['T']}: {c}" for r in recs for c in r.get("checks", [])]
  if plot(recs, FIGURE):
    lines += ["", f"![residual against map evaluations]({FIGURE.name})"]
  if args.notes and Path(args.notes).exists():
    lines += ["", Path(args.notes).read_text().rstrip()]
  REPORT.write_text("\n".join(lines) + "\n")
  print("\n".join(lines))


def curve_evals(name: str, n: int) -> np.ndarray:
  """Map evaluations at which `solve` recorded its n residuals (see `solve`)."""
  first = 2 if VARIANTS[name] is None else 3  # Picard: f(X0), then one per step; Anderson: 2
  return np.arange(first, first + n)


def plot(recs, path: Path) -> bool:
  """Residual against map evaluations, one panel per (prior, T); False without matplotlib."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print(f"matplotlib is not installed: no figure ({path.name}); "
          "`pip install -e \".[train]\"` adds it.")
    return False
  priors = sorted({r["prior"] for r in recs}, key=["gauss", "mnist32", "natural64"].index)
  Ts = sorted({r["T"] for r in recs})
  fig, axes = plt.subplots(len(priors), len(Ts), figsize=(3.6 * len(Ts), 2.8 * len(priors)),
                           sharey=True, squeeze=False)
  for r in recs:
    ax = axes[priors.index(r["prior"])][Ts.index(r["T"])]
    for name in PLOTTED:
      if name in r["results"]:
        c = r["results"][name]["curve"]
        ax.semilogy(curve_evals(name, len(c)), c, label=name, lw=1.3)
    ax.axhline(TOL, color="k", ls="--", lw=0.8)
    ax.axvline(r["T"] / 4, color="grey", ls=":", lw=0.8)
    ax.set_title(f"{r['prior']}, T = {r['T']} ({r['date'][:10]})", fontsize=9)
    ax.set_xlim(0, max(BUDGET, r["T"] + 1))
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel("map evaluations")
  for row in axes:
    row[0].set_ylabel("relative residual")
  axes[0][0].legend(fontsize=8)
  fig.suptitle("DeqIR joint fixed point (SR x4 avg-pool, etw 0.1): dashed = tolerance 1e-3, "
               "dotted = T/4", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--prior", default="gauss", help="gauss | mnist32 | natural64")
  ap.add_argument("--T", default="25,50,100", help="comma-separated slot counts")
  ap.add_argument("--variants", default="all", help=f"comma list of {list(VARIANTS)} or all")
  ap.add_argument("--image", type=int, default=0, help="held-out image index")
  ap.add_argument("--seed", type=int, default=0, help="x_T key")
  ap.add_argument("--budget", type=int, default=BUDGET,
                  help="Anderson's most map evaluations (Picard: T + 1)")
  ap.add_argument("--diag", action="store_true", help="per-slot diagnostics of the last mix")
  ap.add_argument("--consistency", action="store_true",
                  help="Anderson's predicted vs true residual at the mixed point (extra calls)")
  ap.add_argument("--check", default="", help="variants to re-run through the library")
  ap.add_argument("--report", action="store_true", help="write the markdown from saved runs")
  ap.add_argument("--notes", default=str(HERE / "results" / "deqir_convergence_notes.md"),
                  help="markdown appended to the report (default: the findings kept beside it)")
  args = ap.parse_args(argv)
  if args.report:
    report(args)
  else:
    run(args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
