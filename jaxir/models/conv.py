"""A drop-in `lax.conv_general_dilated` whose gradients are fast on CPU.

The forward pass is XLA's own, so inference is unchanged; only gradients take
another (mathematically identical) route, and only on the CPU backend:

* input gradient: a forward convolution of the output gradient with the
  flipped kernel. XLA's conv-backward-input runs about 2.2x slower inside a
  `lax.scan` on CPU (a DPS loop); the forward form does not.
* kernel gradient: XLA's own (route "mixed", the default). An earlier XLA
  computed it about 15x slower than the forward pass, and k*k matrix products
  of shifted input windows (route "matmul") were 4.9x faster; with jax 0.10.2
  on this project's 2-core AMD EPYC (2026-11-30, idle, `bench_train.py
  --breakdown`, mnist32 batch 32) the whole train step takes 1133 ms with
  "matmul", 844 ms with XLA's gradients for both ("xla") and 813 ms with
  "mixed" (natural64 batch 16: 1483 ms "xla", 1566 ms "mixed", within noise).

`JAXIR_CONV_GRAD=matmul|xla|mixed` picks the route at trace time (for
benchmarks; all three agree to float32 rounding, `tests/test_conv.py`).

Pass it to Flax: `nn.Conv(..., conv_general_dilated=conv_general_dilated)`, or
build the layer with `conv2d`, which both U-Nets use.
"""
from __future__ import annotations

import functools
import os

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv_general_dilated", "conv_nhwc", "conv2d"]


def _xla_conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(x, w, strides, padding):
  """NHWC x HWIO convolution; `padding` a tuple of (low, high) pairs."""
  return _xla_conv(x, w, strides, padding)


def _fwd(x, w, strides, padding):
  return _xla_conv(x, w, strides, padding), (x, w)


def _grad_route() -> str:
  """`JAXIR_CONV_GRAD`: "matmul" (dx as a forward conv, dw as k*k matmuls), "xla"
  (XLA's own conv gradients) or "mixed" (forward-conv dx, XLA's dw). Read at trace time."""
  return os.environ.get("JAXIR_CONV_GRAD", _DEFAULT_ROUTE)


_DEFAULT_ROUTE = "mixed"


def _bwd(strides, padding, res, g):
  x, w = res
  route = _grad_route()
  if route not in ("matmul", "xla", "mixed"):
    raise ValueError(f"JAXIR_CONV_GRAD={route!r}: use 'matmul', 'xla' or 'mixed'")
  if route == "xla":
    _, vjp = jax.vjp(lambda a, b: _xla_conv(a, b, strides, padding), x, w)
    return vjp(g)
  kh, kw = w.shape[:2]
  (pl_h, ph_h), (pl_w, ph_w) = padding
  sh, sw = strides
  # Input gradient as a forward convolution of the (dilated) output gradient with
  # the flipped, in/out-swapped kernel: XLA's own conv-backward-input runs about
  # 2x slower inside a while loop (lax.scan) on CPU; this form does not.
  r_h = (x.shape[1] + pl_h + ph_h - kh) % sh
  r_w = (x.shape[2] + pl_w + ph_w - kw) % sw
  dx = lax.conv_general_dilated(
      g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype), (1, 1),
      ((kh - 1 - pl_h, kh - 1 - ph_h + r_h), (kw - 1 - pl_w, kw - 1 - ph_w + r_w)),
      lhs_dilation=(sh, sw), dimension_numbers=("NHWC", "HWIO", "NHWC")).astype(x.dtype)
  if route == "mixed":
    _, vjp_w = jax.vjp(lambda b: _xla_conv(x, b, strides, padding), w)
    return dx, vjp_w(g)[0]
  xp = jnp.pad(x, ((0, 0), (pl_h, ph_h), (pl_w, ph_w), (0, 0)))
  ho, wo = g.shape[1:3]
  gc = g.astype(jnp.float32)
  rows = []
  for i in range(kh):
    cols = []
    for j in range(kw):
      win = lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + sh * (ho - 1) + 1,
                                         j + sw * (wo - 1) + 1, xp.shape[3]), (1, sh, sw, 1))
      cols.append(jnp.einsum("nhwc,nhwd->cd", win.astype(jnp.float32), gc))
    rows.append(jnp.stack(cols))
  dw = jnp.stack(rows).astype(w.dtype)
  return dx, dw


conv_nhwc.defvjp(_fwd, _bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the fast CPU kernel gradient where it applies.

  The fast route is taken for 2-D NHWC/HWIO convolutions without dilation or
  grouping, on the CPU backend; everything else goes
  to `lax.conv_general_dilated` unchanged.
  """
  if isinstance(padding, str) and lhs.ndim == 4:
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and feature_group_count == 1
           and batch_group_count == 1 and precision is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and _is_nhwc(dimension_numbers) and preferred_element_type is None)
  if plain:
    return conv_nhwc(lhs, rhs, tuple(int(s) for s in window_strides),
                     tuple((int(lo), int(hi)) for lo, hi in padding))
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, batch_group_count,
                                  precision, preferred_element_type)


def _is_nhwc(dn) -> bool:
  if dn is None:
    return False
  if isinstance(dn, lax.ConvDimensionNumbers):
    return tuple(dn.lhs_spec) == (0, 3, 1, 2) and tuple(dn.rhs_spec) == (3, 2, 0, 1) \
        and tuple(dn.out_spec) == (0, 3, 1, 2)
  return tuple(dn) == ("NHWC", "HWIO", "NHWC")


def conv2d(features: int, dtype: Any, name: str, kernel: int = 3, stride: int = 1,
           padding=None) -> nn.Conv:
  """A U-Net convolution layer: float32 parameters, this module's fast gradient.

  Args:
    features: output channels.
    dtype: compute dtype (float32 or bfloat16).
    name: the Flax module name (mirrors the PyTorch key).
    kernel: square kernel size.
    stride: the same stride along H and W.
    padding: ((top, bottom), (left, right)); default kernel // 2 on every side,
      as PyTorch's `Conv2d(..., padding=kernel // 2)` in both upstream U-Nets.

  Returns:
    An `nn.Conv` mapping (N, H, W, C) to (N, H', W', features).
  """
  pad = kernel // 2
  padding = ((pad, pad), (pad, pad)) if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                 dtype=dtype, param_dtype=jnp.float32,
                 conv_general_dilated=conv_general_dilated, name=name)
