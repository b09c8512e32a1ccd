"""The command line, the task registry and the shipped-prior loader.

A tiny random-weight prior is exported in the shipped format to a temporary
folder (`JAXIR_CHECKPOINTS`), so these tests do not depend on the trained
weights; tests/test_shipped.py checks the real shipped files.
"""
import dataclasses
import json
import re
import sys
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from references import FIXTURES, nhwc, rel_err

import jaxir
from jaxir import cli, io, progress
from jaxir.errors import CheckpointError, ConfigError
from jaxir.models.configs import NAMED_CONFIGS
from jaxir.solvers.registry import SOLVERS, SolverSpec
from jaxir.tasks import TASKS, make_operator, simulate, stack_operators
from jaxir.train import configs, trainer


@pytest.fixture(scope="module")
def ckdir(tmp_path_factory):
  d = tmp_path_factory.mktemp("ck")
  cfg = configs.get_config("tiny").replace(name="mnist32")
  model = trainer.build_model(cfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,), jnp.int32))
  trainer.export_prior(model, params, cfg, str(d))
  return d, model, params


@pytest.fixture
def shipped_env(ckdir, monkeypatch):
  monkeypatch.setenv("JAXIR_CHECKPOINTS", str(ckdir[0]))
  return ckdir


def test_load_shipped_equals_exported(shipped_env):
  _, model, params = shipped_env
  m2, p2 = jaxir.models.load("mnist32")
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  t = jnp.array([3, 900])
  np.testing.assert_array_equal(m2.apply(p2, x, t), model.apply(params, x, t))
  prior = jaxir.priors.load_prior("mnist32")
  np.testing.assert_array_equal(prior.eps(x, t), model.apply(params, x, t))


def test_missing_shipped_prior_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXIR_CHECKPOINTS", str(tmp_path))
  with pytest.raises(CheckpointError, match="JAXIR_CHECKPOINTS"):
    jaxir.models.load("natural64")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_builds_and_simulates(name):
  x = jax.random.uniform(jax.random.key(0), (32, 32, 3), minval=-1, maxval=1)
  op, y = simulate(name, jax.random.key(1), x)
  assert tuple(y.shape) == tuple(op.out_shape)
  # same key, same measurement; noise level as stated
  op2, y2 = simulate(name, jax.random.key(1), x)
  np.testing.assert_array_equal(y, y2)
  sigma = TASKS[name].sigma_y
  resid = np.asarray(y - op.A(x))
  if sigma > 0:
    assert abs(resid.std() / sigma - 1) < 0.25
  else:
    assert np.all(resid == 0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_stacked_operators_vmap_equals_loop(name):
  xs = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  ops = [make_operator(name, jax.random.key(i), (32, 32, 3)) for i in range(2)]
  batched = jax.vmap(lambda op, x: op.A(x))(stack_operators(ops), xs)
  for i in range(2):
    np.testing.assert_allclose(batched[i], ops[i].A(xs[i]), atol=1e-5)
  if name in ("motion_deblur", "box_inpaint", "random_inpaint"):  # per-image parameters
    assert not np.allclose(ops[0].A(xs[0]), ops[1].A(xs[0]))


def test_solver_config_overrides_and_errors():
  fn, cfg = cli.solver_config("dcdp-tweedie", "sr4", ["K=3", "T0=100"])
  assert cfg.tweedie and cfg.K == 3 and cfg.T0 == 100
  assert cfg.lr == jaxir.solvers.dcdp_preset("sr4").lr
  _, dcfg = cli.solver_config("dps", "gaussian_deblur")
  assert dcfg.scale == jaxir.solvers.dps_preset("gaussian_deblur").scale
  with pytest.raises(ConfigError, match="no field 'KK'"):
    cli.solver_config("dcdp", "sr4", ["KK=3"])
  with pytest.raises(ConfigError, match="unknown solver"):
    cli.solver_config("no-such-solver", "sr4")


def test_solver_config_uses_the_prior_preset_at_the_run_noise():
  tuned = jaxir.solvers.DCDP_PRESETS["mnist32/motion_deblur"]
  _, cfg = cli.solver_config("dcdp", "motion_deblur", prior="mnist32")
  assert (cfg.mu, cfg.T0, cfg.sigma_y) == (tuned.mu, tuned.T0, 0.05)
  _, cfg = cli.solver_config("dcdp-tweedie", "motion_deblur", prior="mnist32", sigma_y=0.1)
  assert cfg.tweedie and cfg.mu == pytest.approx(4 * tuned.mu) and cfg.sigma_y == 0.1
  _, cfg = cli.solver_config("dcdp", "motion_deblur", prior="mnist32", sigma_y=0.0)
  assert cfg.mu == 0.0
  _, cfg = cli.solver_config("dcdp", "motion_deblur", ["mu=0.5"], prior="mnist32", sigma_y=0.0)
  assert cfg.mu == 0.5                                        # --set wins
  _, cfg = cli.solver_config("dcdp", "motion_deblur")         # no prior: the official preset
  assert (cfg.mu, cfg.T0) == (0.0, 400)


def _write_examples(folder, n=3, size=16):
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        folder / f"im{i}.png")
  return folder


def test_restore_folder_writes_outputs_and_matches_single(shipped_env, tmp_path, capsys):
  src = _write_examples(tmp_path / "in")
  args = ["--prior", "mnist32", "--size", "16", "--solver", "dcdp-tweedie", "--set", "K=2",
          "--set", "T0=50", "--quiet", "--seed", "3"]
  assert cli.main(["restore", str(src), "--batch", "2", "--out", str(tmp_path / "o1"),
                   *args]) == 0
  for i in range(3):
    for suffix in ("restored", "measurement", "compare"):
      assert (tmp_path / "o1" / f"im{i}_{suffix}.png").is_file()
  rec = json.loads((tmp_path / "o1" / "metrics.json").read_text())
  assert rec["images"] == 3 and {"psnr", "ssim", "lpips"} <= set(rec)
  assert capsys.readouterr().err == ""                        # --quiet: no progress bar
  # Batched (vmap, batch 2) equals a single-image run of the same file and seed index.
  assert cli.main(["restore", str(src), "--batch", "1", "--out", str(tmp_path / "o2"),
                   *args]) == 0
  a = io.read_image(tmp_path / "o1" / "im2_restored.png")
  b = io.read_image(tmp_path / "o2" / "im2_restored.png")
  assert np.abs(a - b).max() <= 2 / 255 + 1e-6


def test_measured_input_and_clear_errors(shipped_env, tmp_path, capsys, monkeypatch):
  src = _write_examples(tmp_path / "in", n=1, size=4)
  out = tmp_path / "o"
  common = ["--prior", "mnist32", "--solver", "dcdp-tweedie", "--set", "K=2", "--set",
            "T0=50", "--out", str(out)]
  # A short solve runs without the bar (so its program can be cached) ...
  assert cli.main(["restore", str(src / "im0.png"), "--task", "sr4", "--measured",
                   *common]) == 0
  assert "NFE" not in capsys.readouterr().err
  # ... and with the bar once it counts as long.
  monkeypatch.setattr(cli, "PROGRESS_MIN_CALLS", 0)
  assert cli.main(["restore", str(src / "im0.png"), "--task", "sr4", "--measured",
                   *common]) == 0
  assert io.read_image(out / "im0_restored.png").shape == (16, 16, 3)
  # The bar advanced inside the jitted solve up to the solver's own count (info.nfe).
  nfe = json.loads((out / "metrics.json").read_text())["records"][0]["nfe"]
  assert nfe == jaxir.solvers.dcdp_nfe(cli.solver_config("dcdp-tweedie", "sr4", ["K=2"])[1])
  err = capsys.readouterr().err
  assert re.search(rf"dcdp-tweedie sr4: 100%\|[^|]*\| {nfe}/{nfe} \[", err), err
  common.append("--quiet")
  assert cli.main(["restore", str(src / "im0.png"), "--task", "motion_deblur", "--measured",
                   *common]) == 2
  assert "not supported for 'motion_deblur'" in capsys.readouterr().err
  assert cli.main(["restore", str(src / "im0.png"), "--task", "nope", *common]) == 2
  err = capsys.readouterr().err
  assert "unknown task 'nope'" in err and all(t in err for t in TASKS)
  assert cli.main(["restore", str(tmp_path / "missing.png"), *common]) == 2
  assert "missing.png" in capsys.readouterr().err


def test_tasks_command_lists_every_task(capsys):
  assert cli.main(["tasks"]) == 0
  text = capsys.readouterr().out
  assert all(name in text for name in TASKS)
  assert all(s.name in text and all(p in text for p in s.presets) for s in SOLVERS.values())


# ------------------------------------------------------------------ help texts and registries
@pytest.mark.parametrize("command", ["restore", "demo", "bench", "experiment", "tasks"])
def test_help_lists_tasks_solvers_presets_and_priors(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([command, "--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert all(t in text for t in TASKS)
  for s in SOLVERS.values():
    assert s.name in text and s.description in text and all(p in text for p in s.presets)
  assert all(c in text for c in NAMED_CONFIGS) and "mnist32" in text


def test_convert_help_lists_the_checkpoint_configs(capsys):
  with pytest.raises(SystemExit):
    cli.main(["convert", "--help"])
  text = capsys.readouterr().out
  assert all(c.name in text and c.source in text for c in NAMED_CONFIGS.values())


class _EchoInfo(NamedTuple):
  nfe: jax.Array


@dataclasses.dataclass(frozen=True)
class _EchoConfig:
  gain: float = 1.0


def _echo(key, y, operator, prior, config):
  """A solver registered by the test: the pseudo-inverse of y (no prior)."""
  return config.gain * operator.pinv(y), _EchoInfo(nfe=jnp.asarray(0, jnp.int32))


def test_a_newly_registered_solver_is_accepted_and_listed(shipped_env, tmp_path, capsys,
                                                          monkeypatch):
  monkeypatch.setitem(SOLVERS, "echo", SolverSpec(
      "echo", _echo, _EchoConfig, lambda task, sigma_y, prior: _EchoConfig(),
      {"unit": _EchoConfig()}, "svd", "echo: a solver registered by the test"))
  with pytest.raises(SystemExit):
    cli.main(["demo", "--help"])
  assert "echo: a solver registered by the test" in capsys.readouterr().out
  src = _write_examples(tmp_path / "in", n=1, size=16)
  args = ["--prior", "mnist32", "--solver", "echo", "--quiet", "--measured"]
  assert cli.main(["restore", str(src / "im0.png"), "--task", "denoise", *args,
                   "--out", str(tmp_path / "o1")]) == 0
  np.testing.assert_allclose(io.read_image(tmp_path / "o1" / "im0_restored.png"),
                             io.read_image(src / "im0.png"), atol=1.5 / 255)
  # A grey picture is a colorization measurement: read as one channel, restored to RGB.
  grey = np.random.default_rng(1).integers(0, 256, (16, 16), dtype=np.uint8)
  Image.fromarray(grey).save(tmp_path / "grey.png")
  assert cli.main(["restore", str(tmp_path / "grey.png"), "--task", "colorize", *args,
                   "--out", str(tmp_path / "o2")]) == 0
  out = io.read_image(tmp_path / "o2" / "grey_restored.png")
  ref = io.read_image(tmp_path / "grey.png")   # pinv of the channel mean: the grey on RGB
  assert out.shape == (16, 16, 3)
  np.testing.assert_allclose(out, ref, atol=1.5 / 255)


# ------------------------------------------------------------------ errors a user can act on
def test_errors_name_the_problem_and_the_fix(shipped_env, tmp_path, capsys):
  src = _write_examples(tmp_path / "in", n=1, size=16)   # a colour picture
  base = ["restore", str(src / "im0.png"), "--prior", "mnist32", "--quiet", "--out",
          str(tmp_path / "o"), "--solver", "dcdp-tweedie"]

  def error(*extra):
    assert cli.main([*base, *extra]) == 2
    return capsys.readouterr().err

  e = error("--solver", "nope")
  assert "unknown solver 'nope'" in e and all(n in e for n in SOLVERS)
  e = error("--size", "15")                   # the tiny prior has 2 levels: multiples of 2
  assert "15x15" in e and "multiples of 2" in e and "--size 14" in e
  e = error("--checkpoint", str(tmp_path / "missing.pt"))
  assert "missing.pt" in e and "does not exist" in e and "jaxir convert" in e
  assert all(c.name in e and c.source in e for c in NAMED_CONFIGS.values())
  e = error("--prior", "ffhq256_dps")
  assert "--checkpoint FILE" in e and NAMED_CONFIGS["ffhq256_dps"].source in e
  e = error("--task", "colorize", "--measured")
  assert "colour picture" in e and "grey" in e and "Drop --measured" in e
  e = error("--solver", "ddnm", "--task", "phase_retrieval")
  can = e.split("can run:")[1]
  assert "'ddnm'" in e and "PhaseRetrieval" in e and "'sr4'" in can
  assert "phase_retrieval" not in can
  # A diverged DCDP solve (tests/test_dcdp.py: `info.diverged`) is refused with the stable mu.
  from jaxir.solvers.dcdp import DCDP_PRESETS, stable_mu
  e = cli._diverged_message(DCDP_PRESETS["mnist32/gaussian_deblur"])
  limit = re.search(r"mu below (\d+\.\d+) is stable", e)
  assert "diverged" in e and "--set mu=" in e and 1.0 < float(limit.group(1)) < 2.74
  assert float(limit.group(1)) == pytest.approx(
      stable_mu(DCDP_PRESETS["mnist32/gaussian_deblur"]), abs=5e-3)
  assert not (tmp_path / "o" / "im0_restored.png").exists()


def test_large_image_time_estimate_and_memory_refusal(shipped_env, tmp_path, capsys,
                                                     monkeypatch):
  src = _write_examples(tmp_path / "in", n=1, size=64)
  monkeypatch.setattr(progress, "memory_available", lambda device=None: 2 ** 20)
  assert cli.main(["restore", str(src / "im0.png"), "--prior", "mnist32", "--size", "64",
                   "--solver", "dcdp-tweedie", "--set", "K=2", "--set", "T0=50",
                   "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  # The tiny test prior was trained on 16x16: 64x64 is 16x its area.
  assert "16x the area of the 16x16 images" in err
  assert re.search(r"Expected time: about \d+ s \(2 network evaluations per image", err)
  assert "Pass --size 16" in err
  assert "will not fit in memory" in err and "1 MB are free" in err
  assert re.search(r"Pass --size \d+ to restore smaller images", err)
  assert not (tmp_path / "o" / "im0_restored.png").exists()


# ------------------------------------------------------------------ convert, experiment, bench
@pytest.mark.parametrize("arch,name", [("adm", "adm_tiny_a"), ("ddpm", "ddpm_tiny_a")])
def test_convert_round_trips_a_fixture_checkpoint(arch, name, tmp_path, capsys):
  fix = FIXTURES / arch
  dst = tmp_path / name
  assert cli.main(["convert", str(fix / f"{name}.pt"), str(dst), "--arch", arch,
                   "--config", str(fix / f"{name}.json")]) == 0
  assert f"--checkpoint {dst}" in capsys.readouterr().out
  model, params = jaxir.models.load("converted", str(dst))
  z = np.load(fix / f"{name}_io.npz")
  out = model.apply(params, nhwc(z["x"]), jnp.asarray(z["t"], jnp.int32))
  assert rel_err(out, nhwc(z["out"])) <= 1e-5               # upstream PyTorch's output
  back = jaxir.models.to_torch(model, params, tmp_path / "back.safetensors")
  ref = torch.load(fix / f"{name}.pt", weights_only=True)
  assert sorted(back) == sorted(ref)
  assert all(np.array_equal(back[k], ref[k].numpy()) for k in ref)   # bit-exact round trip


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    import os
    return (os.system, (f"touch {self.marker}",))


def test_convert_never_runs_pickled_code(tmp_path, capsys):
  marker = tmp_path / "pwned"
  torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
  assert cli.main(["convert", str(tmp_path / "evil.pt"), str(tmp_path / "out"),
                   "--config", "ffhq256_dps"]) == 2
  assert "refusing to execute pickled code" in capsys.readouterr().err
  assert not marker.exists()


def test_experiment_calls_the_runner_or_says_it_is_missing(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "jaxir.experiment", None)
  assert cli.main(["experiment", "table.json"]) == 2
  assert "jaxir/experiment.py" in capsys.readouterr().err
  seen = []
  fake = types.ModuleType("jaxir.experiment")
  fake.main = lambda argv: seen.append(list(argv)) or 0
  monkeypatch.setitem(sys.modules, "jaxir.experiment", fake)
  assert cli.main(["experiment", "table.json", "--only", "dcdp"]) == 0
  assert seen == [["table.json", "--only", "dcdp"]]


def test_bench_times_a_registered_solver(shipped_env, tmp_path, capsys):
  out = tmp_path / "bench.json"
  assert cli.main(["bench", "--prior", "mnist32", "--size", "16", "--solvers", "dcdp-tweedie",
                   "--set", "K=2", "--batches", "2", "--repeats", "1", "--json", str(out)]) == 0
  (row,) = json.loads(out.read_text())["rows"]
  cfg = cli.solver_config("dcdp-tweedie", "sr4", ["K=2"])[1]
  assert row["nfe"] == jaxir.solvers.dcdp_nfe(cfg) and row["network_call"] == "fwd"
  assert row["s_per_image"] > 0 and row["overhead"] > 0
  assert row["images_per_s"] == pytest.approx(1 / row["s_per_image"])
  text = capsys.readouterr().out
  assert "| dcdp-tweedie | sr4 | 2 | 16 | 2 |" in text and "bench_solvers.py" in text


def test_progress_bar_only_for_long_solves():
  """Short solves skip the bar (its host callbacks keep a program out of JAX's persistent
  cache); unknown length (converging solvers) or much work gets one."""
  from jaxir.priors import load_prior
  from jaxir.progress import SolveProfile
  prior = load_prior("mnist32")
  prof = lambda nfe: SolveProfile(**{f: None for f in SolveProfile._fields} | {"nfe": nfe})
  n = cli.PROGRESS_MIN_CALLS
  assert cli.wants_progress_bar(prof(None), 1, (32, 32), prior)
  assert not cli.wants_progress_bar(prof(182), 1, (32, 32), prior)  # the demo
  assert cli.wants_progress_bar(prof(n), 1, (32, 32), prior)
  assert cli.wants_progress_bar(prof(n // 4), 4, (32, 32), prior)
  assert cli.wants_progress_bar(prof(n // 4), 1, (64, 64), prior)  # 4x the trained area
  assert not cli.wants_progress_bar(prof(n // 4), 1, (16, 16), prior)
