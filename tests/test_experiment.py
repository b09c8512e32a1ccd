"""The experiment runner (jaxir.experiment): configs, kill-and-resume, devices, refusals.

The runs use an exact Gaussian prior on 32x32 grey images (no checkpoint), 3 of its
samples, a tiny DCDP (Tweedie) and the Wiener row.
"""
import glob
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from jaxir import experiment as E
from jaxir.errors import ConfigError
from jaxir.operators.blind import BlindBlur, BlindSR, NonBlind

ROOT = Path(__file__).resolve().parents[1]

TINY = """
title = "kill and resume"
batch = 1
metrics = ["psnr", "ssim"]
figure_images = 2
[prior]
analytic = "smooth_gaussian"
image_shape = [32, 32, 1]
[images]
source = "prior"
count = 3
[[tasks]]
name = "gaussian_deblur"
[[solvers]]
name = "dcdp-tweedie"
overrides = { K = 2, T0 = 100, tau = 3 }
[[solvers]]
name = "wiener"
"""

# Runs the config and SIGKILLs itself right after the first result line is flushed.
_KILLED = r"""
import os, signal, sys
from jaxir.experiment import load_config, run_experiment
def hook(event):
  if event["event"] == "batch":
    os.kill(os.getpid(), signal.SIGKILL)
run_experiment(load_config(sys.argv[1]), sys.argv[2], progress=hook)
"""


def _env(devices: int):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _lines(folder: Path):
  return (folder / "results.jsonl").read_text().splitlines()


def _by_key(folder: Path):
  recs = [json.loads(line) for line in _lines(folder)]
  return {(r["task"], r["solver"], r["image"], r["seed"]): r for r in recs}


def test_kill_resume_and_two_devices(tmp_path):
  cfg = tmp_path / "tiny.toml"
  cfg.write_text(TINY)
  one, two = tmp_path / "one", tmp_path / "two"
  # 1. A run killed (SIGKILL) after its first result line.
  proc = subprocess.run([sys.executable, "-c", _KILLED, str(cfg), str(one)], env=_env(1),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  first = _lines(one)
  assert len(first) == 1 and not (one / "table.md").exists()
  # ... and a line cut off mid-write, as a kill during the write would leave it.
  with open(one / "results.jsonl", "a") as f:
    f.write('{"task": "gaussian_deblur", "solver": "dcdp-tweed')
  # 2. The same command resumes: nothing finished is recomputed, nothing is lost.
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), str(cfg),
                         "--out", str(one)], env=_env(1), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "a cut-off last line was dropped" in proc.stdout and "1 results already" in proc.stdout
  assert "[gaussian_deblur / dcdp-tweedie] 2 of 3 to do" in proc.stdout
  lines = _lines(one)
  assert lines[0] == first[0]                       # the first result untouched
  recs = _by_key(one)
  assert len(lines) == len(recs) == 3 * 2           # images x solvers, each once
  assert all(r["row_hash"] and r["devices"] == "1 x cpu" for r in recs.values())
  for name in ("table.md", "table.csv", "figure_gaussian_deblur.png", "manifest.json"):
    assert (one / name).exists(), name
  table = (one / "table.md").read_text()
  assert "| gaussian_deblur | dcdp-tweedie | 3 |" in table and "| gaussian_deblur | wiener | 3 |" \
      in table
  assert len(list((one / "restored").rglob("*.png"))) == 6
  # 3. Two host devices (batch 1 padded to 2, split over the mesh) give the same results.
  proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "run.py"), str(cfg),
                         "--out", str(two), "--set", "batch=2", "--quiet"], env=_env(2),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  recs2 = _by_key(two)
  assert set(recs2) == set(recs)
  for k, r in recs.items():
    assert recs2[k]["devices"] == "2 x cpu"
    assert abs(recs2[k]["psnr"] - r["psnr"]) < 1e-3, k
    assert abs(recs2[k]["ssim"] - r["ssim"]) < 1e-5, k
    assert recs2[k]["nfe"] == r["nfe"]
  # 4. The finished folder with a changed setting is refused, naming what changed.
  with pytest.raises(ConfigError, match=r"another setup \(changed: prior.length\)"):
    E.run_experiment(E.load_config(cfg, ["prior.length=4.0"]), one)
  with pytest.raises(ConfigError, match="row gaussian_deblur/wiener was run with another config"):
    E.run_experiment(E.load_config(cfg, ["solvers.wiener.overrides.nsr=0.5"]), one)
  assert _lines(one) == lines  # refused before touching anything


# On 2 host devices, a row whose partitioned solve fails in XLA (simulated: sharding raises
# the error XLA raises) finishes on one device, and the table says so.
_FALLBACK = r"""
import sys, jax
import jaxir.parallel
from jaxir.experiment import load_config, run_experiment
def broken(*args, **kwargs):
  raise jax.errors.JaxRuntimeError("INTERNAL: RET_CHECK failure (simulated)")
jaxir.parallel.shard_batch = broken
events = []
run_experiment(load_config(sys.argv[1]), sys.argv[2], progress=events.append)
print("EVENTS", [e["event"] for e in events])
"""


def test_a_row_failing_on_the_mesh_finishes_on_one_device(tmp_path):
  cfg = tmp_path / "tiny.toml"
  cfg.write_text(TINY.replace("count = 3", "count = 2").replace(
      'name = "dcdp-tweedie"\noverrides = { K = 2, T0 = 100, tau = 3 }',
      'name = "tv"\noverrides = { iterations = 5 }'))
  proc = subprocess.run([sys.executable, "-c", _FALLBACK, str(cfg), str(tmp_path / "out")],
                        env=_env(2), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count("'fallback'") == 2  # both rows
  recs = _by_key(tmp_path / "out")
  assert len(recs) == 4 and {r["devices"] for r in recs.values()} == {"1 x cpu"}


def test_a_folder_grows_with_images_and_rows(tmp_path):
  """More images and a new row extend a folder; only the new results are computed."""
  cfg = E.parse_config(_raw(TINY, solvers=[{"name": "wiener"}], count=2))
  E.run_experiment(cfg, tmp_path)
  before = _lines(tmp_path)
  assert len(before) == 2
  events = []
  cfg = E.parse_config(_raw(TINY, solvers=[{"name": "wiener"}, {"name": "wiener", "label": "w2",
                                                                "overrides": {"nsr": 0.1}}],
                            count=3))
  table = E.run_experiment(cfg, tmp_path, progress=events.append)
  after = _lines(tmp_path)
  assert after[:2] == before and len(after) == 2 + 1 + 3
  todo = {(e["solver"]): e["todo"] for e in events if e["event"] == "row"}
  assert todo == {"wiener": 1, "w2": 3}
  assert [(r["method"], r["n"]) for r in table] == [("wiener", 3), ("w2", 3)]
  csv = (tmp_path / "table.csv").read_text().splitlines()
  assert csv[0].startswith("task,method,solver,n,psnr_mean,psnr_std,ssim_mean")
  # --report-only rewrites the table from the results without running anything
  (tmp_path / "table.md").unlink()
  cfg_file = tmp_path / "c.toml"
  cfg_file.write_text(TINY.replace('name = "dcdp-tweedie"\noverrides = { K = 2, T0 = 100, '
                                   'tau = 3 }', 'name = "wiener"\nlabel = "w2"\n'
                                   'overrides = { nsr = 0.1 }'))
  assert E.main([str(cfg_file), "--out", str(tmp_path), "--report-only"]) == 0
  assert "| gaussian_deblur | w2 | 3 |" in (tmp_path / "table.md").read_text()


def _raw(text, solvers=None, count=None):
  import tomllib
  raw = tomllib.loads(text)
  if solvers is not None:
    raw["solvers"] = solvers
  if count is not None:
    raw["images"]["count"] = count
  return raw


@pytest.mark.parametrize("change,message", [
    ({"bogus": 1}, r"config: unknown key 'bogus'; allowed keys: \['batch'"),
    ({"images": {"source": "web"}}, r"images.source = 'web'; allowed values: \['heldout'"),
    ({"tasks": [{"name": "sr3"}]}, r"tasks\[0\].name = 'sr3'; allowed values: .*'sr4'"),
    ({"solvers": [{"name": "dcdpp"}]}, r"solvers\[0\].name = 'dcdpp'; allowed values: .*'dcdp'"),
    ({"solvers": [{"name": "dcdp", "overrides": {"Kk": 3}}]}, r"DCDPConfig has no field 'Kk'"),
    ({"solvers": [{"name": "dcdp", "preset": "nope"}]}, r"dcdp presets: \["),
    ({"solvers": [{"name": "tv"}, {"name": "tv"}]}, r"row label 'tv' appears twice"),
    ({"solvers": [{"name": "tv", "tasks": ["sr4"]}]}, r"must list task labels"),
    ({"batch": 0}, r"batch must be >= 1"),
    ({"metrics": ["psnr", "fid"]}, r"metrics must be a non-empty list from"),
    ({"prior": {"name": "mnist32", "analytic": "smooth_gaussian"}}, r"exactly one of name"),
    ({"prior": {"name": "mnist32", "lenght": 3}}, r"\[prior\]: unknown key 'lenght'"),
    ({"seeds": [0, 0]}, r"distinct integers"),
])
def test_config_errors_name_the_key_and_the_allowed_values(change, message):
  raw = _raw(TINY)
  for k, v in change.items():
    raw[k] = {**raw[k], **v} if isinstance(v, dict) and k in raw else v
  with pytest.raises(ConfigError, match=message):
    E.parse_config(raw)


def test_sets_grids_and_labels():
  raw = _raw(TINY)
  raw["solvers"].append({"name": "dcdp-tweedie", "label": "g", "grid": {"mu": [0.0, 0.1],
                                                                       "T0": [50, 100]}})
  raw["tasks"].append({"name": "gaussian_deblur", "label": "noisier", "sigma_y": 0.1})
  raw = E.apply_sets(raw, ["images.count=5", "solvers.wiener.overrides.nsr=0.01",
                           "tasks.noisier.sigma_y=0.2", 'title="x"', "seeds=[1, 2]"])
  cfg = E.parse_config(raw)
  assert cfg.images.count == 5 and cfg.title == "x" and cfg.seeds == (1, 2)
  assert [s.label for s in cfg.solvers][2:] == ["g[mu=0.0,T0=50]", "g[mu=0.0,T0=100]",
                                                "g[mu=0.1,T0=50]", "g[mu=0.1,T0=100]"]
  assert dict(cfg.solvers[1].overrides) == {"nsr": 0.01}
  assert cfg.tasks[1].sigma_y == 0.2
  rows, skipped = E.plan_rows(cfg, (32, 32, 1))
  assert not skipped and len(rows) == 2 * 6
  by = {(r.task.label, r.solver.label): r for r in rows}
  assert by[("noisier", "wiener")].config.nsr == 0.01
  assert by[("noisier", "g[mu=0.1,T0=50]")].config.T0 == 50
  # the noise level reaches noise-aware presets: DCDP's proximal weight grows with sigma_y
  assert by[("noisier", "dcdp-tweedie")].config.sigma_y == 0.2
  assert len({r.hash for r in rows}) == len(rows)
  with pytest.raises(ConfigError, match="no solvers entry labelled 'nope'"):
    E.apply_sets(raw, ["solvers.nope.overrides.K=1"])


def test_every_shipped_config_loads_and_plans():
  files = sorted(glob.glob(str(ROOT / "experiments" / "configs" / "*.toml")))
  assert len(files) >= 10
  names = {Path(f).stem for f in files}
  for paper in ("dcdp", "deqir", "bird"):
    for data in ("mnist32", "natural64"):
      assert f"{paper}_{data}" in names
  for f in files:
    cfg = E.load_config(f)
    rows, skipped = E.plan_rows(cfg, cfg.prior.image_shape or (32, 32, 3))  # small: fast
    assert rows, f
    for task, method, why in skipped:
      assert method in ("measurement", "bicubic", "wiener", "tv", "bm3d"), \
          (f, task, method, why)


def test_bird_tasks_and_what_runs_on_them():
  x = jnp.zeros((32, 32, 3))
  import jax
  for name in E.BIRD_TASKS:
    deg, y = E.simulate_task(name, jax.random.key(0), x)
    kind = {"blind_gauss": BlindBlur, "blind_motion": BlindBlur, "blind_sr4": BlindSR}
    assert isinstance(deg, kind.get(name, NonBlind)), name
  cfg = E.parse_config(_raw(TINY.replace('name = "gaussian_deblur"', 'name = "blind_gauss"\n'
                                         '[[tasks]]\nname = "bird_sr8"')
                            .replace("[[solvers]]\nname = \"wiener\"",
                                     "[[solvers]]\nname = \"wiener\"\n[[solvers]]\nname = \"bird\""
                                     "\n[[solvers]]\nname = \"bicubic\"")))
  rows, skipped = E.plan_rows(cfg, (32, 32, 1))
  ran = {(r.task.label, r.solver.label) for r in rows}
  assert ran == {("blind_gauss", "bird"), ("bird_sr8", "bird"), ("bird_sr8", "bicubic"),
                 ("bird_sr8", "dcdp-tweedie")}
  why = {(t, m): w for t, m, w in skipped}
  assert "blind task" in why[("blind_gauss", "dcdp-tweedie")]
  # BIRD runs its official preset for each protocol task (overrides on top)
  by = {(r.task.label, r.solver.label): r.config for r in rows}
  assert by[("blind_gauss", "bird")].lr_eta == 2e-4 and by[("bird_sr8", "bird")].lr_z == 1e-3


def test_changed_weights_under_the_same_prior_name_are_refused(tmp_path, monkeypatch):
  """A results folder remembers the prior's weights: new weights under the same shipped name
  (here via JAXIR_CHECKPOINTS) are refused, not silently resumed; the same weights pass."""
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  monkeypatch.setenv("JAXIR_CHECKPOINTS", str(ckpt))
  (ckpt / "natural64.safetensors").write_bytes(b"weights one")
  spec = E.PriorSpec(name="natural64")
  setup = lambda: {"prior": dict(vars(spec), weights=E.weights_id(spec)), "images": {},
                   "metrics": ["psnr"]}
  first = setup()
  assert first["prior"]["weights"] and E.weights_id(E.PriorSpec(analytic="smooth_gaussian")) \
      is None
  store = E.ResultStore(tmp_path / "out")
  store.check(first, [])
  E.ResultStore(tmp_path / "out").check(setup(), [])        # same weights: accepted
  (ckpt / "natural64.safetensors").write_bytes(b"weights two")
  assert E.weights_id(spec) != first["prior"]["weights"]
  with pytest.raises(ConfigError, match=r"another setup \(changed: prior.weights\)"):
    E.ResultStore(tmp_path / "out").check(setup(), [])
  # A checkpoint folder: its files' fingerprints, so a changed file changes it.
  folder = tmp_path / "conv"
  folder.mkdir()
  (folder / "params.safetensors").write_bytes(b"a")
  a = E.weights_id(E.PriorSpec(name="ffhq256_dps", checkpoint=str(folder)))
  (folder / "params.safetensors").write_bytes(b"b")
  assert a != E.weights_id(E.PriorSpec(name="ffhq256_dps", checkpoint=str(folder)))


def test_blind_rows_report_the_kernel_error_and_the_measurement_row(tmp_path):
  """BIRD's records carry the L1 error of its kernel estimate against the task's true kernel
  (`true_kernel`, the one `simulate_task` blurs with); the measurement row is y itself."""
  import jax
  import numpy as np
  from jaxir.operators.blur import Blur
  x = jax.random.uniform(jax.random.key(9), (32, 32, 1), minval=-0.8, maxval=0.8)
  key = jax.random.key(3)
  for name in ("blind_gauss", "blind_motion", "known_gauss", "blind_sr4"):
    assert E.true_kernel(name, key, x.shape).shape == (7, 7)
  assert E.true_kernel("bird_sr8", key, x.shape) is None
  deg, y = E.simulate_task("blind_motion", key, x)
  res = lambda k: float(jnp.linalg.norm(Blur(x.shape, k, "zeros").A(x) - y))
  other = E.true_kernel("blind_motion", jax.random.key(4), x.shape)
  assert res(E.true_kernel("blind_motion", key, x.shape)) < 0.6 * res(other)
  raw = _raw(TINY.replace('name = "gaussian_deblur"', 'name = "blind_gauss"\n[[tasks]]\n'
                          'name = "known_gauss"'),
             solvers=[{"name": "bird", "overrides": {"iterations": 2, "delta_t": 500}},
                      {"name": "measurement"}], count=2)
  cfg = E.parse_config(raw)
  table = E.run_experiment(cfg, tmp_path)
  recs = [json.loads(line) for line in _lines(tmp_path)]
  bird = [r for r in recs if r["solver"] == "bird" and r["task"] == "blind_gauss"]
  meas = [r for r in recs if r["solver"] == "measurement"]
  assert len(bird) == 2 and len(meas) == 4
  assert all(0.0 <= r["kernel_error"] <= 2.0 for r in bird)
  assert all("kernel_error" not in r and r["nfe"] == 0 for r in meas)
  known = [r for r in recs if r["solver"] == "bird" and r["task"] == "known_gauss"]
  assert len(known) == 2 and all("kernel_error" not in r for r in known)  # nothing estimated
  by = {(r["task"], r["method"]): r for r in table}
  assert np.isfinite(by[("blind_gauss", "bird")]["kernel_error_mean"])
  assert not np.isfinite(by[("known_gauss", "bird")]["kernel_error_mean"])
  assert "kernel err (L1)" in (tmp_path / "table.md").read_text()


def test_a_folder_from_before_the_weights_fingerprint_resumes(tmp_path):
  """Folders written before the prior's fingerprint was recorded hashed their rows without it:
  they resume (their rows re-hashed, results.jsonl rewritten once every check passed), and a
  row whose config really changed is still refused, with nothing rewritten."""
  cfg = E.parse_config(_raw(TINY, solvers=[{"name": "wiener"}], count=2))
  E.run_experiment(cfg, tmp_path)
  # Make it a legacy folder: no weights in the setup, row hashes of the setup without them.
  man = json.loads((tmp_path / "manifest.json").read_text())
  man["setup"]["prior"].pop("weights")
  legacy = E._hash(man["setup"])
  new_to_old = {}
  for p in man["pairs"].values():
    old = E._hash({"setup": legacy, "task": p["task"], "solver": p["solver"],
                   "config": p["config"]})
    new_to_old[p["hash"]], p["hash"] = old, old
  (tmp_path / "manifest.json").write_text(json.dumps(man))
  recs = [json.loads(line) for line in _lines(tmp_path)]
  for r in recs:
    r["row_hash"] = new_to_old[r["row_hash"]]
  text = "".join(json.dumps(r) + "\n" for r in recs)
  (tmp_path / "results.jsonl").write_text(text)
  # A changed config is refused and leaves the folder as it was.
  changed = E.parse_config(_raw(TINY, solvers=[{"name": "wiener", "overrides": {"nsr": 0.5}}],
                                count=2))
  with pytest.raises(ConfigError, match="row gaussian_deblur/wiener was run with another"):
    E.run_experiment(changed, tmp_path)
  assert (tmp_path / "results.jsonl").read_text() == text
  # The same config resumes: nothing recomputed, hashes upgraded, and resumes again.
  events = []
  E.run_experiment(cfg, tmp_path, progress=events.append)
  assert [e["todo"] for e in events if e["event"] == "row"] == [0]
  after = [json.loads(line) for line in _lines(tmp_path)]
  assert [r["psnr"] for r in after] == [r["psnr"] for r in recs]
  assert {r["row_hash"] for r in after} == set(new_to_old)
  assert "weights" in json.loads((tmp_path / "manifest.json").read_text())["setup"]["prior"]
  E.run_experiment(cfg, tmp_path)
