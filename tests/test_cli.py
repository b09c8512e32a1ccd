"""The command line, the task registry and the shipped-prior loader.

A tiny random-weight prior is exported in the shipped format to a temporary
folder (`JAXIR_CHECKPOINTS`), so these tests do not depend on the trained
weights; tests/test_shipped.py checks the real shipped files.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxir
from jaxir import cli, io
from jaxir.errors import CheckpointError, ConfigError
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


def test_restore_folder_writes_outputs_and_matches_single(shipped_env, tmp_path):
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
  # Batched (vmap, batch 2) equals a single-image run of the same file and seed index.
  assert cli.main(["restore", str(src), "--batch", "1", "--out", str(tmp_path / "o2"),
                   *args]) == 0
  a = io.read_image(tmp_path / "o1" / "im2_restored.png")
  b = io.read_image(tmp_path / "o2" / "im2_restored.png")
  assert np.abs(a - b).max() <= 2 / 255 + 1e-6


def test_measured_input_and_clear_errors(shipped_env, tmp_path, capsys):
  src = _write_examples(tmp_path / "in", n=1, size=4)
  out = tmp_path / "o"
  common = ["--prior", "mnist32", "--solver", "dcdp-tweedie", "--set", "K=2", "--set",
            "T0=50", "--quiet", "--out", str(out)]
  assert cli.main(["restore", str(src / "im0.png"), "--task", "sr4", "--measured",
                   *common]) == 0
  assert io.read_image(out / "im0_restored.png").shape == (16, 16, 3)
  assert cli.main(["restore", str(src / "im0.png"), "--task", "motion_deblur", "--measured",
                   *common]) == 2
  assert "not supported for 'motion_deblur'" in capsys.readouterr().err
  assert cli.main(["restore", str(src / "im0.png"), "--task", "nope", *common]) == 2
  assert "jaxir tasks" in capsys.readouterr().err
  assert cli.main(["restore", str(tmp_path / "missing.png"), *common]) == 2
  assert "missing.png" in capsys.readouterr().err


def test_tasks_command_lists_every_task(capsys):
  assert cli.main(["tasks"]) == 0
  text = capsys.readouterr().out
  assert all(name in text for name in TASKS)
