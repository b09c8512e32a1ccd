"""One-channel (grey) images end to end: io, metrics, tasks, solvers and the command line.

A randomly initialized 1-channel mnist32 (`jaxir.train.configs.get_config("mnist32")`,
in_channels 1) is exported in the shipped format to a temporary folder and
loaded through `JAXIR_CHECKPOINTS`, as the retrained shipped prior will be.
Nothing caches a loaded prior (`jaxir.models.shipped.load_shipped` reads the
files on every call), so pointing the variable elsewhere is enough.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import jaxir
from jaxir import cli, io, metrics
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators import Colorization
from jaxir.solvers import dcdp, dcdp_preset, dps, dps_preset
from jaxir.tasks import TASKS, make_operator, prior_channels, simulate, stack_operators
from jaxir.train import configs, trainer

from test_shipped import upstream_net

EXAMPLE = cli.EXAMPLES / cli.DEMO["image"]


@pytest.fixture(scope="module")
def grey_ck(tmp_path_factory):
  d = tmp_path_factory.mktemp("grey_ck")
  cfg = configs.get_config("mnist32")
  assert cfg.channels == 1 and cfg.model["in_channels"] == 1
  model = trainer.build_model(cfg)
  params = _random_params(model, (1, 32, 32, 1))
  trainer.export_prior(model, params, cfg, str(d), name="mnist32")
  return d, model, params


def _random_params(model, x_shape):
  """Random weights of the right shapes (fan-in scaled kernels, unit norm scales).

  Cheaper than `model.init` (which compiles the whole network), and unlike it the
  output convolution is not zero, so eps is a non-trivial function of x and t.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(x_shape),
                          jnp.zeros((1,), jnp.int32))
  leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
  rng = np.random.default_rng(1)  # NumPy: one jitted draw per shape would compile hundreds
  out = []
  for path, s in leaves:
    z = rng.standard_normal(s.shape).astype(np.float32)
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      out.append(z / np.sqrt(np.prod(s.shape[:-1])))
    elif name == "scale":
      out.append(1.0 + 0.1 * z)
    else:
      out.append(0.02 * z)
  return jax.tree.unflatten(tree, [jnp.asarray(v) for v in out])


@pytest.fixture
def grey_env(grey_ck, monkeypatch):
  monkeypatch.setenv("JAXIR_CHECKPOINTS", str(grey_ck[0]))
  return grey_ck


def _u8(path):
  with Image.open(path) as im:
    return im.mode, np.asarray(im)


# ----------------------------------------------------------------- the prior ----

def test_grey_prior_loads_with_one_channel_and_equals_upstream_torch(grey_env):
  d, model, params = grey_env
  meta = jaxir.models.shipped_meta("mnist32")
  assert meta["channels"] == 1 and meta["model"]["in_channels"] == 1
  prior = jaxir.priors.load_prior("mnist32")
  assert prior_channels(prior) == 1
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 1))
  t = jnp.array([10, 600])
  eps = jax.jit(lambda p, x, t: p.eps(x, t))
  ours = np.asarray(eps(prior, x, t))
  assert ours.shape == (2, 32, 32, 1) and np.abs(ours).max() > 1e-2
  np.testing.assert_array_equal(ours, np.asarray(eps(prior.replace(params=params), x, t)))
  # Independent reference: guided-diffusion's UNetModel with in_channels=1 on the same file.
  from safetensors.torch import load_file
  net = upstream_net(meta["model"])
  net.load_state_dict(load_file(str(d / "mnist32.safetensors")), strict=True)
  with torch.no_grad():
    ref = net(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)).float(),
              torch.from_numpy(np.array(t))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, atol=2e-5 * max(1.0, np.abs(ref).max()))


def test_prior_channels_of_an_rgb_network_and_of_image_shape():
  model = trainer.build_model(configs.get_config("tiny"))  # in_channels 3; no weights needed
  assert prior_channels(jaxir.priors.model_prior(model, None)) == 3
  assert prior_channels(jaxir.priors.model_prior(model, None, image_shape=(8, 8, 1))) == 1
  assert prior_channels(jaxir.priors.make_prior(lambda p, x, t: x, None)) == 3  # no network


# ------------------------------------------------------------------------ io ----

def test_read_write_grey(tmp_path):
  rng = np.random.default_rng(0)
  g = rng.integers(0, 256, (12, 10), dtype=np.uint8)
  Image.fromarray(g).save(tmp_path / "g.png")
  x = io.read_image(tmp_path / "g.png", channels=1)
  assert x.shape == (12, 10, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x[..., 0], g / 127.5 - 1, atol=1e-6)
  # Written back as a grey (mode L) file with the same bytes.
  io.write_image(tmp_path / "g2.png", x)
  mode, u8 = _u8(tmp_path / "g2.png")
  assert mode == "L"
  np.testing.assert_array_equal(u8, g)
  # RGB to grey: the BT.601 luma of the 8-bit values, computed here by hand.
  rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "c.png")
  luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255.0
  np.testing.assert_allclose(io.read_image(tmp_path / "c.png", channels=1)[..., 0],
                             2 * luma - 1, atol=1e-5)
  # Pillow's own 8-bit conversion is the same weights, rounded.
  pil = np.asarray(Image.fromarray(rgb).convert("L")) / 127.5 - 1
  assert np.abs(io.read_image(tmp_path / "c.png", channels=1)[..., 0] - pil).max() <= 1 / 127.5
  # Default stays 3 channels; a batch folder reads grey too.
  assert io.read_image(tmp_path / "g.png").shape == (12, 10, 3)
  assert io.read_folder(tmp_path, size=8, channels=1).shape == (3, 8, 8, 1)
  with pytest.raises(ConfigError, match="channels"):
    io.read_image(tmp_path / "g.png", channels=2)


def test_read_resized_grey_and_to_channels(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (40, 30, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "c.png")
  # Resizing a float grey image equals converting the resized float RGB (bicubic is linear).
  g = io.read_image(tmp_path / "c.png", size=16, channels=1)
  c = io.read_image(tmp_path / "c.png", size=16)
  assert g.shape == (16, 16, 1)
  np.testing.assert_allclose(g, np.clip(io.to_grey(c), -1, 1), atol=2e-2)
  np.testing.assert_allclose(io.to_channels(c, 1), io.to_grey(c))
  np.testing.assert_array_equal(io.to_channels(g, 3), np.repeat(g, 3, -1))
  assert io.to_channels(c, 3) is c
  j = jax.jit(lambda v: io.to_channels(v, 1))(jnp.asarray(c))
  np.testing.assert_allclose(j, io.to_grey(c), atol=1e-6)


def test_grey_examples_read_as_one_channel():
  for p in sorted(cli.EXAMPLES.glob("mnist32_heldout_*.png")):
    x = io.read_image(p, channels=1)
    assert x.shape == (32, 32, 1)
    np.testing.assert_array_equal(io.read_image(p)[..., :1], x)


# ------------------------------------------------------------------- metrics ----

def test_metrics_on_one_channel():
  rng = np.random.default_rng(3)
  x = rng.uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
  y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  mse = np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.psnr(x, y), 10 * np.log10(1 / mse), rtol=1e-5)
  from skimage.metrics import structural_similarity
  want = [structural_similarity(a[..., 0], b[..., 0], gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
          for a, b in zip(x, y)]
  np.testing.assert_allclose(metrics.ssim(x, y), want, atol=1e-5)
  # LPIPS sees a grey image as R = G = B.
  xs, ys = 2 * x - 1, 2 * y - 1
  rep = metrics.lpips(np.repeat(xs, 3, -1), np.repeat(ys, 3, -1))
  np.testing.assert_allclose(metrics.lpips(xs, ys), rep, rtol=1e-6)
  lp = metrics.lpips_params()
  np.testing.assert_allclose(metrics.lpips_apply(lp, jnp.asarray(xs), jnp.asarray(ys)), rep,
                             rtol=1e-6)
  assert float(rep.min()) > 0
  with pytest.raises(ShapeError, match="channels"):
    metrics.lpips(np.zeros((1, 32, 32, 2)), np.zeros((1, 32, 32, 2)))


# --------------------------------------------------------------------- tasks ----

@pytest.mark.parametrize("name", sorted(set(TASKS) - {"colorize"}))
def test_every_task_but_colorize_takes_one_channel(name):
  xs = jax.random.uniform(jax.random.key(0), (2, 32, 32, 1), minval=-1, maxval=1)
  ops, ys = zip(*[simulate(name, jax.random.key(i), x) for i, x in enumerate(xs)])
  assert ops[0].in_shape == (32, 32, 1) and tuple(ys[0].shape) == tuple(ops[0].out_shape)
  batched = jax.vmap(lambda op, x: op.A(x))(stack_operators(ops), xs)
  for i in range(2):
    np.testing.assert_allclose(batched[i], ops[i].A(xs[i]), atol=1e-5)
  if hasattr(ops[0], "AT") and name != "phase_retrieval":  # adjoint: <A x, y> = <x, AT y>
    v = jax.random.normal(jax.random.key(5), ys[0].shape)
    lhs = jnp.vdot(ops[0].A(xs[0]), v)
    rhs = jnp.vdot(xs[0], ops[0].AT(v))
    assert abs(float(lhs - rhs)) <= 1e-4 * max(1.0, abs(float(lhs)))


def test_colorize_needs_three_channels():
  with pytest.raises(ShapeError, match="needs C = 3"):
    Colorization((8, 8, 1))
  with pytest.raises(ShapeError, match="RGB prior"):
    make_operator("colorize", jax.random.key(0), (32, 32, 1))
  assert Colorization((8, 8, 3)).A(jnp.ones((8, 8, 3))).shape == (8, 8, 1)


# ------------------------------------------------------------------- solvers ----

@pytest.fixture(scope="module")
def tiny_grey_prior():
  """A small random 1-channel ADM prior (the "tiny" architecture, 16x16, in_channels 1)."""
  cfg = configs.get_config("tiny")
  cfg = cfg.replace(channels=1, model={**cfg.model, "in_channels": 1})
  model = trainer.build_model(cfg)
  return jaxir.priors.model_prior(model, _random_params(model, (1, 16, 16, 1)))


@pytest.mark.parametrize("solver", ["dcdp", "dps"])
def test_solvers_on_one_channel_under_jit_and_vmap(tiny_grey_prior, solver):
  """Batch lanes are independent: swapping the images (and keys) swaps the results.

  (vmap against a per-image loop is checked on C = 1 Gaussian priors in
  tests/test_dcdp.py and tests/test_dps.py; here the network prior is C = 1 too.)
  """
  prior = tiny_grey_prior
  assert prior_channels(prior) == 1
  x = jnp.stack([jnp.asarray(io.read_image(p, size=16, channels=1))
                 for p in sorted(cli.EXAMPLES.glob("mnist32_heldout_*.png"))[:2]])
  ops, ys = zip(*[simulate("sr4", jax.random.key(i), xi) for i, xi in enumerate(x)])
  if solver == "dcdp":
    fn, cfg = dcdp.dcdp, dcdp_preset("sr4", K=2, T0=60, ddim_steps=3)
  else:
    fn, cfg = dps.dps, dps_preset("sr4", num_steps=3)
  keys = jax.random.split(jax.random.key(9), 2)
  run = jax.jit(jax.vmap(fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
  xb, info = run(keys, jnp.stack(ys), stack_operators(ops), prior, cfg)
  assert xb.shape == (2, 16, 16, 1) and bool(jnp.all(jnp.isfinite(xb)))
  assert int(np.asarray(info.nfe)[0]) > 0
  swapped, _ = run(keys[::-1], jnp.stack(ys[::-1]), stack_operators(ops[::-1]), prior, cfg)
  # Lanes agree to float32 rounding, which DPS's step normalized by ||y - A x0|| can grow
  # (2.7e-5 once in a fresh CI environment, 2026-12-01); the lanes differ by > 1e-2.
  np.testing.assert_allclose(swapped[::-1], xb, atol=1e-4)
  assert float(jnp.max(jnp.abs(xb[0] - xb[1]))) > 1e-2


# ---------------------------------------------------------------------- CLI ----

def test_demo_on_grey_prior_writes_grey_pngs(grey_env, tmp_path):
  out = tmp_path / "demo"
  assert cli.main(["demo", "--solver", "dcdp-tweedie", "--set", "K=2", "--set", "T0=50",
                   "--quiet", "--out", str(out)]) == 0
  stem = EXAMPLE.stem
  for suffix in ("restored", "measurement"):
    mode, u8 = _u8(out / f"{stem}_{suffix}.png")
    assert mode == "L" and u8.shape == (32, 32), suffix
  assert (out / f"{stem}_compare.png").is_file()
  rec = json.loads((out / "metrics.json").read_text())
  # The reported PSNR is that of the written grey picture against the grey example.
  got = io.read_image(out / f"{stem}_restored.png", channels=1)
  want = float(metrics.psnr(io.to_unit(got), io.to_unit(io.read_image(EXAMPLE, channels=1))))
  assert abs(rec["psnr"] - want) < 0.05, (rec["psnr"], want)


def test_restore_colour_input_on_grey_prior_uses_luma(grey_env, tmp_path, capsys):
  rgb = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  src = tmp_path / "in"
  src.mkdir()
  Image.fromarray(rgb).save(src / "c.png")
  out = tmp_path / "o"
  common = ["--prior", "mnist32", "--solver", "dcdp-tweedie", "--set", "K=2", "--set", "T0=50",
            "--quiet", "--out", str(out)]
  assert cli.main(["restore", str(src / "c.png"), "--task", "denoise", *common]) == 0
  mode, _ = _u8(out / "c_restored.png")
  assert mode == "L"
  rec = json.loads((out / "metrics.json").read_text())
  luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])[..., None] / 255.0
  got = io.to_unit(io.read_image(out / "c_restored.png", channels=1))
  assert abs(rec["psnr"] - float(metrics.psnr(got, luma))) < 0.05
  # Colorization cannot run on a grey prior: a clear error, exit status 2.
  assert cli.main(["restore", str(src / "c.png"), "--task", "colorize", *common]) == 2
  assert "needs C = 3" in capsys.readouterr().err
