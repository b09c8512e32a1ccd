"""Image files in and out: PNG/JPEG via Pillow, as (H, W, C) float32 in [-1, 1].

jaxir works on channels-last float32 images in [-1, 1]; `read_image` and
`write_image` convert from and to 8-bit files, `to_unit` / `from_unit` convert
between [-1, 1] and [0, 1] (the range `jaxir.metrics.psnr` / `ssim` expect).
Images have C = 3 (RGB) or C = 1 (grey, e.g. for the one-channel mnist32 prior):
`read_image(path, channels=1)` reads any file as grey (colour converted with
the ITU-R BT.601 luma weights `LUMA_WEIGHTS`), and `write_image` writes a
one-channel image as a grey (mode "L") file.
"""
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError

from jaxir.errors import ConfigError, ImageReadError, NaNError, ShapeError

__all__ = ["ImageReadError", "IMAGE_SUFFIXES", "LUMA_WEIGHTS", "to_grey", "to_channels",
           "to_unit", "from_unit", "check_size", "read_image", "list_images", "read_folder",
           "write_image", "side_by_side", "measurement_picture"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""R, G, B weights of grey = luma Y' (ITU-R BT.601; Pillow's `convert("L")` uses the same)."""

_GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N")
_COLOR_MODES = ("RGB", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _xp(x):
  return jnp if isinstance(x, (jax.Array, jax.core.Tracer)) else np


def to_unit(x, clip: bool = True):
  """Map images from [-1, 1] to [0, 1]: (x + 1) / 2, clipped unless `clip=False`.

  Works on NumPy and JAX arrays (and under jit); returns the same kind.
  """
  xp = _xp(x)
  u = (xp.asarray(x) + 1.0) / 2.0
  return xp.clip(u, 0.0, 1.0) if clip else u


def from_unit(x):
  """Map images from [0, 1] to [-1, 1]: 2 x - 1. NumPy in, NumPy out; JAX in, JAX out."""
  xp = _xp(x)
  return 2.0 * xp.asarray(x) - 1.0


def to_grey(x):
  """(..., 3) RGB -> (..., 1) grey with `LUMA_WEIGHTS` (any range; NumPy or JAX)."""
  xp = _xp(x)
  x = xp.asarray(x)
  if x.shape[-1] != 3:
    raise ShapeError(f"to_grey: image has {x.shape[-1]} channels (shape {x.shape}); expected "
                     "3 (RGB, channels-last).")
  w = xp.asarray(LUMA_WEIGHTS, x.dtype)
  return xp.sum(x * w, axis=-1, keepdims=True)


def to_channels(x, channels: int):
  """Convert (..., C) images with C in {1, 3} to `channels` (1 or 3) channels.

  RGB to grey uses `LUMA_WEIGHTS` (`to_grey`); grey to RGB replicates the
  channel; equal counts return `x` unchanged. NumPy or JAX, also under jit.
  """
  if channels not in (1, 3):
    raise ConfigError(f"channels={channels!r}; use 1 (grey) or 3 (RGB).")
  c = np.shape(x)[-1]
  if c not in (1, 3):
    raise ShapeError(f"image has {c} channels (shape {np.shape(x)}); expected 1 or 3 "
                     "(channels-last).")
  if c == channels:
    return x
  if channels == 1:
    return to_grey(x)
  xp = _xp(x)
  return xp.repeat(xp.asarray(x), 3, axis=-1)


def check_size(x, multiple_of: int | None, name: str = "image"):
  """Raise `ShapeError` unless H and W of an (..., H, W, C) array divide by `multiple_of`.

  A U-Net with k downsamplings needs multiples of 2**k (e.g. 32). Returns `x`.
  """
  if multiple_of is None or multiple_of <= 1:
    return x
  h, w = np.shape(x)[-3:-1]
  if h % multiple_of or w % multiple_of:
    fit = (h // multiple_of * multiple_of, w // multiple_of * multiple_of)
    raise ShapeError(f"{name} is {h}x{w}; the model needs height and width that are "
                     f"multiples of {multiple_of}. Crop or resize it, e.g. "
                     f"read_image(path, size={fit}).")
  return x


def _as_size(size):
  if size is None:
    return None
  hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
  if len(hw) != 2 or min(hw) < 1:
    raise ConfigError(f"size={size!r} is invalid; give an int or (height, width).")
  return int(hw[0]), int(hw[1])


def _center_crop_resize(img: Image.Image, size) -> Image.Image:
  """Centre-crop `img` to the aspect ratio of `size` (H, W), then resize (bicubic)."""
  th, tw = size
  w, h = img.size
  if (h, w) == (th, tw):
    return img
  if h * tw > w * th:   # too tall: crop rows
    ch, cw = max(1, round(w * th / tw)), w
  else:                  # too wide: crop columns
    ch, cw = h, max(1, round(h * tw / th))
  top, left = (h - ch) // 2, (w - cw) // 2
  img = img.crop((left, top, left + cw, top + ch))
  if (ch, cw) == (th, tw):
    return img
  return img.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=None)


def read_image(path, size=None, *, allow_gray: bool = True,
               multiple_of: int | None = None, channels: int = 3) -> np.ndarray:
  """Read a PNG/JPEG (any Pillow format) as an (H, W, channels) float32 array in [-1, 1].

  EXIF orientation is applied, alpha is dropped (not composited), 16-bit
  grayscale is scaled by 1/65535. With `channels=3` (default) grayscale is
  repeated to three channels; with `channels=1` (a grey prior such as mnist32)
  grayscale is kept and colour is converted to grey with `LUMA_WEIGHTS`,
  computed in float from the 8-bit values (before any resizing).

  Args:
    path: the file.
    size: None (keep), an int (square) or (height, width): centre-crop to that
      aspect ratio, then resize with bicubic filtering.
    allow_gray: if False, a grayscale file raises `ShapeError`.
    multiple_of: if given, H and W must be multiples of it (see `check_size`).
    channels: 3 (RGB) or 1 (grey).

  Returns:
    (H, W, channels) float32 NumPy array in [-1, 1].

  Raises:
    ImageReadError: the file is missing, not an image, truncated, or of an
      unsupported mode. ShapeError: grayscale with `allow_gray=False`, or a size
      that `multiple_of` rejects. ConfigError: `channels` not 1 or 3.
  """
  path = Path(path)
  size = _as_size(size)
  if channels not in (1, 3):
    raise ConfigError(f"read_image: channels={channels!r}; use 1 (grey) or 3 (RGB).")
  if not path.is_file():
    raise ImageReadError(f"image file {str(path)!r} does not exist (or is not a file); "
                         "check the path.")
  try:
    with Image.open(path) as img:
      img.load()
      img = ImageOps.exif_transpose(img)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise ImageReadError(f"cannot read {str(path)!r} as an image ({type(e).__name__}: "
                         f"{e}); is it a valid PNG/JPEG and not truncated?") from e
  mode = img.mode
  if mode in _GRAY_MODES:
    if not allow_gray:
      raise ShapeError(f"{str(path)!r} is a grayscale image (mode {mode}) but 3 RGB "
                       "channels are required; pass allow_gray=True to repeat the "
                       "channel, or convert the file to RGB.")
    if mode.startswith("I;16"):
      arr = np.asarray(img, np.float32) / 65535.0
      img = Image.fromarray(arr)
    else:
      img = img.convert("L")
  elif mode in _COLOR_MODES:
    img = img.convert("RGB")
    if channels == 1:  # luma in float, so no 8-bit rounding before resizing
      rgb = np.asarray(img, np.float32) / 255.0
      img = Image.fromarray(np.asarray(to_grey(rgb)[..., 0], np.float32))  # mode "F"
  else:
    raise ImageReadError(f"{str(path)!r} has pixel mode {mode!r}, which has no fixed "
                         "value range; save it as 8-bit RGB or grayscale PNG.")
  if size is not None:
    img = _center_crop_resize(img, size)
  arr = np.asarray(img, np.float32)
  arr = arr if img.mode == "F" else arr / 255.0
  if arr.ndim == 2:
    arr = np.repeat(arr[:, :, None], channels, axis=2)
  x = np.clip(arr, 0.0, 1.0) * 2.0 - 1.0
  return check_size(x.astype(np.float32), multiple_of, name=repr(str(path)))


def list_images(path) -> list[Path]:
  """Sorted image files (by suffix, see `IMAGE_SUFFIXES`) directly inside a folder."""
  path = Path(path)
  if not path.is_dir():
    raise ImageReadError(f"folder {str(path)!r} does not exist (or is not a folder).")
  return sorted(p for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_folder(path, size=None, *, allow_gray: bool = True,
                multiple_of: int | None = None, limit: int | None = None,
                channels: int = 3) -> np.ndarray:
  """Read every image of a folder (sorted by name, see `list_images`) as a batch.

  Args:
    path: the folder.
    size: as in `read_image`; needed when the files differ in size.
    allow_gray, multiple_of, channels: as in `read_image`.
    limit: read at most this many files.

  Returns:
    (N, H, W, channels) float32 NumPy array in [-1, 1].
  """
  files = list_images(path)[:limit]
  if not files:
    raise ImageReadError(f"folder {str(path)!r} holds no image files "
                         f"({', '.join(IMAGE_SUFFIXES)}).")
  images = [read_image(f, size, allow_gray=allow_gray, multiple_of=multiple_of,
                       channels=channels) for f in files]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    raise ShapeError(f"images in {str(path)!r} differ in size ({sorted(shapes)}); pass "
                     "size=(H, W) to crop and resize them to one size.")
  return np.stack(images)


def _to_uint8(x, name: str, keep_gray: bool = False) -> np.ndarray:
  """[-1, 1] float (..., H, W, C) with C in {1, 3} -> uint8 (uint8 kept).

  One channel is repeated to three unless `keep_gray`.
  """
  if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim in (3, 4) \
      and x.shape[-1] in (1, 3):
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 and not keep_gray else x
  x = np.asarray(x, np.float32)
  if x.ndim not in (3, 4) or x.shape[-1] not in (1, 3):
    raise ShapeError(f"{name} has shape {x.shape}; expected (H, W, C) or (N, H, W, C) "
                     "with C = 1 or 3 (channels-last). Transpose NCHW arrays with "
                     "x.transpose(0, 2, 3, 1).")
  if not np.all(np.isfinite(x)):
    raise NaNError(f"{name} contains NaN or infinite values; the restoration diverged "
                   "or the input was bad. Clean it (e.g. np.nan_to_num) before saving.")
  u8 = np.round(np.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)
  return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 and not keep_gray else u8


def write_image(path, x) -> Path:
  """Write an image in [-1, 1] (or uint8, as from `side_by_side`) as an 8-bit file.

  PNG recommended; the type follows the suffix.
  Values outside [-1, 1] are clipped. One channel (C = 1) is written as a grey
  (mode "L") file, three as RGB. A batch (N, H, W, C) with N > 1 is written as
  one horizontal strip (`side_by_side` without labels, RGB).

  Args:
    path: output file; parent folders are created.
    x: (H, W, C) or (N, H, W, C) with C = 1 or 3, in [-1, 1].

  Returns:
    The path written.

  Raises:
    NaNError: `x` holds NaN/inf. ShapeError: wrong rank or channel count.
    ConfigError: unknown file suffix.
  """
  path = Path(path)
  u8 = _to_uint8(x, f"image for {str(path)!r}", keep_gray=True)
  if u8.ndim == 4:
    u8 = u8[0] if u8.shape[0] == 1 else side_by_side(list(u8))
  if u8.shape[-1] == 1:
    u8 = u8[..., 0]  # Pillow writes a 2-D uint8 array as mode "L"
  path.parent.mkdir(parents=True, exist_ok=True)
  try:
    Image.fromarray(u8).save(path)
  except (ValueError, KeyError) as e:
    raise ConfigError(f"cannot write {str(path)!r} ({e}); use a suffix such as .png.") from e
  return path


def side_by_side(images, labels=None, *, pad: int = 4, label_height: int = 14) -> np.ndarray:
  """Arrange images in a row, optionally with a text label above each.

  Images of different heights are scaled to the tallest with nearest-neighbour
  interpolation (pixels stay visible, e.g. for a low-resolution measurement).

  Args:
    images: a sequence of (H, W, C) arrays (C = 1 or 3) in [-1, 1], or uint8
      (H, W, 3) arrays already in [0, 255]; or one (N, H, W, C) array.
    labels: None, or one string per image, drawn above it.
    pad: white border between and around images, in pixels.
    label_height: height of the label band, in pixels.

  Returns:
    (H', W', 3) uint8 array; save it with `PIL.Image.fromarray(a).save(...)`.
  """
  if isinstance(images, (np.ndarray, jax.Array)) and np.ndim(images) == 4:
    images = list(images)
  images = list(images)
  if not images:
    raise ConfigError("side_by_side: no images given.")
  if labels is not None and len(labels) != len(images):
    raise ConfigError(f"side_by_side: {len(labels)} labels for {len(images)} images; "
                      "give one label per image (or labels=None).")
  tiles = [im if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3
           and im.shape[-1] == 3 else _to_uint8(im, f"side_by_side image {i}")
           for i, im in enumerate(images)]
  height = max(t.shape[0] for t in tiles)
  scaled = []
  for t in tiles:
    if t.shape[0] != height:
      w = max(1, round(t.shape[1] * height / t.shape[0]))
      t = np.asarray(Image.fromarray(t).resize((w, height), Image.Resampling.NEAREST))
    scaled.append(t)
  top = pad + (label_height if labels is not None else 0)
  width = pad + sum(t.shape[1] + pad for t in scaled)
  canvas = np.full((top + height + pad, width, 3), 255, np.uint8)
  x0, lefts = pad, []
  for t in scaled:
    canvas[top:top + height, x0:x0 + t.shape[1]] = t
    lefts.append(x0)
    x0 += t.shape[1] + pad
  if labels is not None:
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    for left, text in zip(lefts, labels):
      draw.text((left, pad), str(text), fill=(0, 0, 0))
    canvas = np.asarray(pil)
  return canvas


def measurement_picture(y, in_shape):
  """An (H, W, C) picture in [-1, 1] of a measurement y, for side-by-side figures.

  Image-shaped measurements are shown as they are; smaller ones (super-resolution)
  are upsampled by pixel repetition; larger or complex ones (Fourier magnitudes)
  on a normalized log scale; one-channel ones (colorization) as grey.
  """
  import jax
  import jax.numpy as jnp
  H, W, C = in_shape
  y = jnp.asarray(y)
  if jnp.iscomplexobj(y) or y.shape[:2] != (H, W) and (y.shape[0] > H or y.shape[1] > W):
    a = jnp.log1p(jnp.abs(y))  # e.g. Fourier magnitudes: log scale
    a = 2 * (a - a.min()) / jnp.maximum(a.max() - a.min(), 1e-8) - 1
    y = jax.image.resize(a, (H, W, a.shape[-1]), "linear")
  elif y.shape[:2] != (H, W):
    fh, fw = H // y.shape[0], W // y.shape[1]
    y = jnp.repeat(jnp.repeat(y, fh, axis=0), fw, axis=1)
  if y.shape[-1] != C:
    y = jnp.broadcast_to(y[..., :1], (H, W, C))
  return jnp.clip(y, -1, 1)
