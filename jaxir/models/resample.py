"""Up- and downsampling layers shared by the ADM and DDPM U-Nets, NHWC.

Both upstream U-Nets halve the image with a stride-2 3x3 convolution (or 2x2
average pooling) and double it by nearest-neighbour repetition, optionally
followed by a 3x3 convolution. They differ only in the downsampling conv's
padding and the key of its weights, which are fields here:

  guided-diffusion `Downsample`: pad 1 on every side, key `op`
    (`Downsample(channels, use_conv)`, the defaults).
  ermongroup `Downsample`: pad right and bottom by 1, key `conv`
    (`pad=((0, 1), (0, 1)), conv_name="conv"`).

References:
  openai/guided-diffusion `guided_diffusion/unet.py` (`Upsample`, `Downsample`).
  ermongroup/ddim `models/diffusion.py` (`Upsample`, `Downsample`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxir.errors import ShapeError
from jaxir.models.conv import conv2d

__all__ = ["check_unet_input", "upsample_nearest", "avg_pool2", "Upsample", "Downsample"]


def check_unet_input(x, in_channels: int, levels: int) -> None:
  """Raise a ShapeError unless x is (N, H, W, in_channels) with H, W multiples of
  2**(levels - 1), the sizes a U-Net with `levels` resolutions halves exactly."""
  if x.ndim != 4 or x.shape[-1] != in_channels:
    raise ShapeError(f"x has shape {x.shape}; this network takes {in_channels}-channel "
                     f"images, (N, H, W, {in_channels}) (NHWC): build the operator and "
                     "images with that channel count.")
  f = 2 ** (levels - 1)
  if x.shape[1] % f or x.shape[2] % f:
    raise ShapeError(f"H, W = {x.shape[1:3]} must be multiples of {f} for {levels} levels; "
                     "pad or resize the image.")


def upsample_nearest(x):
  """(N, H, W, C) -> (N, 2H, 2W, C), each pixel repeated 2x2 (PyTorch 'nearest')."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x):
  """(N, H, W, C) -> (N, H/2, W/2, C), the mean of each 2x2 block, summed in float32."""
  # Four strided slices, not a reshape-and-mean: XLA CPU pulls a reduce into a
  # YNNPACK fusion together with the convolution after it, which then ran
  # slower than XLA's own convolution.
  h = x.astype(jnp.float32)
  s = ((h[:, 0::2, 0::2] + h[:, 0::2, 1::2]) + h[:, 1::2, 0::2]) + h[:, 1::2, 1::2]
  return (s * 0.25).astype(x.dtype)


class Upsample(nn.Module):
  """Nearest x2 upsampling, then a 3x3 conv (key `conv`) when `use_conv`.

  Attributes:
    channels: the conv's output channels; None keeps the input's.
    use_conv: apply the 3x3 conv after upsampling.
    dtype: compute dtype of the conv.
  """
  channels: int | None = None
  use_conv: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = upsample_nearest(x)
    if not self.use_conv:
      return x
    return conv2d(self.channels or x.shape[-1], self.dtype, "conv")(x)


class Downsample(nn.Module):
  """Halve H and W: a stride-2 3x3 conv when `use_conv`, else 2x2 average pooling.

  Attributes:
    channels: the conv's output channels; None keeps the input's.
    use_conv: convolve (else average-pool, no parameters).
    dtype: compute dtype of the conv.
    pad: the conv's ((top, bottom), (left, right)) zero padding: 1 everywhere
      in guided-diffusion, ((0, 1), (0, 1)) in ermongroup's model.
    conv_name: the conv's module name (upstream key): "op" in guided-diffusion,
      "conv" in ermongroup's model.
  """
  channels: int | None = None
  use_conv: bool = True
  dtype: Any = jnp.float32
  pad: tuple = ((1, 1), (1, 1))
  conv_name: str = "op"

  @nn.compact
  def __call__(self, x):
    if not self.use_conv:
      return avg_pool2(x)
    return conv2d(self.channels or x.shape[-1], self.dtype, self.conv_name, stride=2,
                  padding=self.pad)(x)
