"""Function-preserving growth of an ADM U-Net: more residual blocks per level.

`deepen_state_dict` turns the guided-diffusion state dict of a trained U-Net
with `num_res_blocks = n` into one with `n + k` blocks per level that computes
the same function, so a deeper prior resumes from a trained shallower one
instead of from scratch (`experiments/grow_prior.py`).

How: each level's encoder gets k blocks after its last one whose output
convolution (and attention `proj_out`) is zero, so each is the identity; the
decoder gets k blocks right after its first block of the level, each reading
(h, skip) through a 1x1 skip convolution [I | 0] with a zero output
convolution, so each passes h through and ignores its (duplicated) skip. The
new blocks' other weights come from a fresh initialization (`fresh`): they start
training at once, as in Net2Net-style growth (Chen, Goodfellow, Shlens 2016).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxir.errors import ConfigError

__all__ = ["deepen_state_dict", "deepened_kwargs"]


def _levels(kwargs: Mapping) -> int:
  mult = kwargs["channel_mult"]
  if isinstance(mult, str):
    mult = [m for m in mult.split(",") if m.strip()]
  if not mult:
    raise ConfigError("channel_mult is empty; give the create_model kwargs of an ADM U-Net "
                      "with an explicit channel_mult such as '1,2,4'.")
  return len(mult)


def deepened_kwargs(kwargs: Mapping, num_res_blocks: int) -> dict:
  """`kwargs` (guided-diffusion create_model arguments) with more residual blocks."""
  if num_res_blocks <= int(kwargs["num_res_blocks"]):
    raise ConfigError(f"num_res_blocks {num_res_blocks} must exceed the model's "
                      f"{kwargs['num_res_blocks']}.")
  return {**dict(kwargs), "num_res_blocks": int(num_res_blocks)}


def _block_maps(levels: int, n: int, m: int):
  """(encoder map, decoder map, new encoder blocks, new decoder blocks): index maps
  old block index -> new index for `input_blocks` / `output_blocks`."""
  enc, dec, new_enc, new_dec = {0: 0}, {}, [], []
  i_old = i_new = 1
  for level in range(levels):
    for b in range(m):
      if b < n:
        enc[i_old] = i_new
        i_old += 1
      else:
        new_enc.append(i_new)
      i_new += 1
    if level != levels - 1:  # the downsampling block
      enc[i_old] = i_new
      i_old += 1
      i_new += 1
  j_old = j_new = 0
  for _ in range(levels):
    for b in range(m + 1):
      if 1 <= b <= m - n:
        new_dec.append(j_new)
      else:
        dec[j_old] = j_new
        j_old += 1
      j_new += 1
  return enc, dec, new_enc, new_dec


def deepen_state_dict(state_dict: Mapping[str, np.ndarray], kwargs: Mapping,
                      num_res_blocks: int, fresh: Mapping[str, np.ndarray]) -> dict:
  """The state dict of the same function with `num_res_blocks` blocks per level.

  Args:
    state_dict: guided-diffusion `UNetModel` state dict (name -> array) of the model
      built by `kwargs`.
    kwargs: its create_model arguments (`channel_mult` given explicitly).
    num_res_blocks: the new block count per level (> kwargs["num_res_blocks"]).
    fresh: the state dict of a freshly initialized model with
      `deepened_kwargs(kwargs, num_res_blocks)`: supplies the new blocks' weights
      (their output convolutions are zeroed here) and fixes the expected key set.

  Returns:
    A state dict with exactly `fresh`'s keys and shapes.
  """
  n = int(kwargs["num_res_blocks"])
  enc, dec, new_enc, new_dec = _block_maps(_levels(kwargs), n, int(num_res_blocks))
  out = {}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[0] in ("input_blocks", "output_blocks"):
      table = enc if parts[0] == "input_blocks" else dec
      parts[1] = str(table.get(int(parts[1]), -1))
    new_key = ".".join(parts)
    if new_key not in fresh or tuple(fresh[new_key].shape) != tuple(np.shape(value)):
      raise ConfigError(f"growing the U-Net: {key} -> {new_key} does not fit the deeper "
                        "model; are `kwargs` the checkpoint's create_model arguments?")
    out[new_key] = np.asarray(value, dtype=fresh[new_key].dtype)
  new_prefixes = ([f"input_blocks.{i}." for i in new_enc]
                  + [f"output_blocks.{j}." for j in new_dec])
  for key, value in fresh.items():
    if key in out:
      continue
    if not key.startswith(tuple(new_prefixes)):
      raise ConfigError(f"growing the U-Net: {key} is neither in the checkpoint nor in a new "
                        "block; the checkpoint does not match `kwargs`.")
    value = np.array(value)
    if ".out_layers.3." in key or ".proj_out." in key:  # the identity: zero residual branch
      value = np.zeros_like(value)
    elif key.startswith("output_blocks.") and ".skip_connection." in key:
      value = np.zeros_like(value)
      if key.endswith("weight"):  # (C, 2C, 1, 1): pass h (the first C inputs) through
        c = value.shape[0]
        value[:, :c, 0, 0] = np.eye(c, dtype=value.dtype)
    out[key] = value
  return out
