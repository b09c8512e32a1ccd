"""PyTorch <-> Flax parameter layouts, and the shape check of a state dict.

Every architecture stores the same kinds of tensors: a Flax `kernel` is a conv
(HWIO, PyTorch OIHW), a 1-D conv (WIO, PyTorch OIW) or a dense layer ((in, out),
PyTorch (out, in)); `scale`, `bias` and `embedding` keep their layout. The maps
are pure transposes, so a round trip is bit-exact.

References:
  pytorch/pytorch `torch/nn/modules/conv.py`, `linear.py` (weight layouts).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxir.errors import CheckpointError
from jaxir.models.named_configs import NAMED_CONFIGS

__all__ = ["torch_shape", "to_torch_layout", "from_torch_layout", "check_state_dict_shapes"]

# ndim -> axes that take a Flax kernel to the PyTorch weight, and back.
_TO_TORCH = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}
_FROM_TORCH = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}


def torch_shape(leaf: str, shape: tuple) -> tuple:
  """PyTorch shape of Flax parameter `leaf` ('kernel', 'bias', ...) of `shape`."""
  shape = tuple(shape)
  if leaf == "kernel" and len(shape) in _TO_TORCH:
    return tuple(shape[i] for i in _TO_TORCH[len(shape)])
  return shape


def _permute(leaf: str, a: np.ndarray, axes: dict) -> np.ndarray:
  if leaf == "kernel" and a.ndim in axes:
    return np.ascontiguousarray(np.transpose(a, axes[a.ndim]))
  return a


def to_torch_layout(leaf: str, a: np.ndarray) -> np.ndarray:
  """Flax parameter `leaf` in PyTorch's layout: HWIO -> OIHW, WIO -> OIW, (in, out) -> (out, in)."""
  return _permute(leaf, a, _TO_TORCH)


def from_torch_layout(leaf: str, a: np.ndarray) -> np.ndarray:
  """The inverse of `to_torch_layout`: a PyTorch weight as Flax parameter `leaf`."""
  return _permute(leaf, a, _FROM_TORCH)


def check_state_dict_shapes(got: Mapping[str, tuple], expected: Mapping[str, tuple],
                            what: str = "model") -> None:
  """Compare {key: shape} of a checkpoint against the model's, raising one error.

  Works on shapes only, so full-size checkpoints can be checked without arrays.

  Raises:
    CheckpointError: listing every missing key, every unexpected key and every
      key whose shape differs (expected vs got).
  """
  got = {k: tuple(int(d) for d in s) for k, s in got.items()}
  missing = [k for k in expected if k not in got]
  unexpected = [k for k in got if k not in expected]
  wrong = [(k, tuple(expected[k]), got[k]) for k in expected
           if k in got and tuple(expected[k]) != got[k]]
  if not (missing or unexpected or wrong):
    return
  lines = [f"checkpoint does not match the {what}: {len(missing)} missing, {len(unexpected)} "
           f"unexpected, {len(wrong)} wrongly shaped key(s)."]
  if missing:
    lines.append("  missing: " + ", ".join(missing))
  if unexpected:
    lines.append("  unexpected: " + ", ".join(unexpected))
  for k, e, g in wrong:
    lines.append(f"  wrong shape: {k}: expected {e}, got {g}")
  lines.append("Check that the config matches the checkpoint (named configs: "
               f"{sorted(NAMED_CONFIGS)}).")
  raise CheckpointError("\n".join(lines))
