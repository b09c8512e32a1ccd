"""Inpainting: y = x * mask (1 = observed pixel), and DPS's mask generators.

Convention (DPS `InpaintingOperator`): the measurement keeps the image's shape
(H, W, C) with the missing entries set to zero, so y = mask * x and Aᵀ = A.

References:
  Chung et al., "Diffusion Posterior Sampling" (DPS), ICLR 2023:
    `guided_diffusion/measurements.py` `InpaintingOperator`; `util/img_utils.py`
    `mask_generator`, `random_sq_bbox`; `configs/inpainting*_config.yaml`.
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `Inpainting` (kept entries first).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.errors import ConfigError, RangeError, ShapeError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["Inpaint", "box_mask", "random_mask"]


class Inpaint(SVDOperator):
  """Masking operator y = mask * x, with a {0, 1} mask (1 = observed).

  SVD form (DDRM's `Inpainting`): V = U = the permutation P that lists the
  observed entries first, then the missing ones, each in ascending (H, W, C)
  flat order. So that the operator stays jit/vmap friendly with a traced mask,
  every length is n = H W C: `singulars()` is 1 on the observed entries and 0
  on the missing ones (m = n; the zeros pair with the missing entries), `VT(x)`
  = P x, `UT(y)` = P y (both flat, length n). P is computed once, when the
  operator is built (a stable argsort of the mask: NumPy for a concrete mask,
  `jnp.argsort` for a traced one), and stored as the int32 leaf `perm`; there
  are no boolean-mask (dynamic) shapes. `op.replace(mask=m)` recomputes it.

  Every method takes exactly one array: an (H, W, C) image or measurement, or
  an (H W C,) coefficient vector; any other shape, a batch included, raises
  `ShapeError` (batch with `jax.vmap`).

  Attributes:
    in_shape: static (H, W, C).
    mask: 0/1 array (bool, int or float) of shape (H, W) or (H, W, 1) (shared by
      all channels) or (H, W, C); stored broadcast to (H, W, C). A concrete mask
      is checked on construction (shape, values), a traced one by shape only.
      The mask is data, not a parameter: gradients with respect to it (which
      are not 0/1) cannot be rebuilt into an `Inpaint`.
    perm: int32 (H W C,) flat indices, observed entries first (computed from
      the mask; leave it None). A stacked operator (4-D mask) holds one row per
      mask.
  """
  mask: jax.Array
  perm: jax.Array | None = None

  def __post_init__(self):
    shape = check_in_shape(self.in_shape, "Inpaint")
    object.__setattr__(self, "in_shape", shape)
    m = self.mask
    if isinstance(m, (list, tuple)):
      m = np.asarray(m)
    if not isinstance(m, (np.ndarray, jax.Array)):
      return  # a placeholder leaf (tree_map, vmap axis spec, eval_shape), not a mask
    if m.dtype == jax.dtypes.float0:
      return  # a symbolic-zero cotangent
    if m.ndim == 4:  # a batch of operators (vmap output, or masks stacked by hand)
      if self.perm is None:
        object.__setattr__(self, "perm", _observed_first(m.reshape(m.shape[0], -1)))
      return
    H, W, C = shape
    if tuple(m.shape) not in ((H, W), (H, W, 1), (H, W, C)):
      raise ShapeError(f"Inpaint: mask has shape {tuple(m.shape)}; expected {(H, W)}, "
                       f"{(H, W, 1)} or {(H, W, C)} for in_shape={shape}.")
    if not isinstance(m, jax.core.Tracer):
      a = np.asarray(m)
      if not np.all((a == 0) | (a == 1)):
        raise RangeError("Inpaint: mask values must be 0 (missing) or 1 (observed); got "
                         f"values in [{a.min():.3g}, {a.max():.3g}]. Threshold a soft "
                         "mask first, e.g. (mask > 0.5).")
    if tuple(m.shape) != shape:  # store it as (H, W, C), so vmap stacks a 4-D mask
      xp = np if isinstance(m, np.ndarray) else jnp
      m = xp.broadcast_to(m.reshape(H, W, -1), shape)
    object.__setattr__(self, "mask", m)
    if self.perm is None:
      object.__setattr__(self, "perm", _observed_first(m.reshape(-1)))

  def full_mask(self, dtype=jnp.float32):
    """The mask broadcast to `in_shape`, as `dtype`."""
    return jnp.asarray(self.mask, dtype)

  def replace(self, **updates):
    """A copy with fields replaced; a new `mask` gets its own permutation."""
    if "mask" in updates and "perm" not in updates:
      updates["perm"] = None
    return dataclasses.replace(self, **updates)

  def _perm(self):
    """Flat indices: observed entries first, then missing, each ascending."""
    if self.perm is None:  # only reachable for a hand-built placeholder operator
      return _observed_first(self.full_mask().reshape(-1))
    return self.perm

  def _n(self):
    return (math.prod(self.in_shape),)

  def A(self, x):
    check_image(x, self.in_shape, "Inpaint.A")
    return x * self.full_mask(x.dtype)

  def AT(self, y):
    check_image(y, self.in_shape, "Inpaint.AT")
    return y * self.full_mask(y.dtype)

  def pinv(self, y):
    check_image(y, self.in_shape, "Inpaint.pinv")
    return y * self.full_mask(y.dtype)

  def singulars(self):
    return self.full_mask().reshape(-1)[self._perm()]

  def VT(self, x):
    check_image(x, self.in_shape, "Inpaint.VT")
    return x.reshape(-1)[self._perm()]

  def V(self, v):
    check_image(v, self._n(), "Inpaint.V")
    return jnp.zeros_like(v).at[self._perm()].set(v).reshape(self.in_shape)

  def UT(self, y):
    check_image(y, self.in_shape, "Inpaint.UT")
    return y.reshape(-1)[self._perm()]

  def U(self, u):
    check_image(u, self._n(), "Inpaint.U")
    return jnp.zeros_like(u).at[self._perm()].set(u).reshape(self.in_shape)


def _observed_first(mask_flat):
  """Stable argsort of `mask == 0` along the last axis, int32 (observed first).

  NumPy for a concrete mask (computed once, on the host), `jnp.argsort` for a
  traced one.
  """
  if isinstance(mask_flat, jax.core.Tracer):
    return jnp.argsort(mask_flat == 0, axis=-1, stable=True).astype(jnp.int32)
  missing = np.asarray(mask_flat) == 0
  return np.argsort(missing, axis=-1, kind="stable").astype(np.int32)


def box_mask(key, in_shape, box=128, margin=(16, 16)):
  """DPS 'box' inpainting mask: a box of zeros at a uniformly random place.

  As DPS's `random_sq_bbox`: top t ~ U{margin_h, ..., H - margin_h - box_h - 1}
  and left l likewise (numpy `randint`'s exclusive upper end); the mask is 0 on
  rows t..t+box_h-1, columns l..l+box_w-1, in every channel, and 1 elsewhere.
  DPS's configs use box 128 (`mask_len_range` [128, 129]) and margin (16, 16) on
  256 x 256 images.

  Args:
    key: `jax.random` key.
    in_shape: (H, W, C) of the image.
    box: int or (box_h, box_w), the box size in pixels.
    margin: (margin_h, margin_w) in pixels.

  Returns:
    (H, W, C) float32 mask, 1 = observed.
  """
  H, W, C = check_in_shape(in_shape, "box_mask")
  bh, bw = (box, box) if np.ndim(box) == 0 else box
  mh, mw = (margin, margin) if np.ndim(margin) == 0 else margin
  bh, bw, mh, mw = int(bh), int(bw), int(mh), int(mw)
  if min(bh, bw) < 1 or min(mh, mw) < 0 or H - mh - bh <= mh or W - mw - bw <= mw:
    raise ConfigError(f"box_mask: box {(bh, bw)} with margin {(mh, mw)} does not fit "
                      f"{(H, W)}; need margin < size - margin - box on both axes "
                      "(use a smaller box or margin).")
  kt, kl = jax.random.split(key)
  t = jax.random.randint(kt, (), mh, H - mh - bh)
  left = jax.random.randint(kl, (), mw, W - mw - bw)
  rows = jnp.arange(H)[:, None]
  cols = jnp.arange(W)[None, :]
  inside = (rows >= t) & (rows < t + bh) & (cols >= left) & (cols < left + bw)
  return jnp.broadcast_to(jnp.where(inside, 0.0, 1.0)[..., None], (H, W, C))


def random_mask(key, in_shape, missing=0.7):
  """DPS 'random' inpainting mask: a fixed fraction of pixels missing.

  As DPS's `mask_generator._retrieve_random`: exactly int(H W missing) pixel
  positions, drawn uniformly without replacement, are 0 in every channel (DPS
  draws `missing` from `mask_prob_range`, (0.7, 0.71) in its config; pass the
  value here).

  Args:
    key: `jax.random` key.
    in_shape: (H, W, C) of the image.
    missing: fraction of pixels to remove, in [0, 1].

  Returns:
    (H, W, C) float32 mask, 1 = observed.
  """
  H, W, C = check_in_shape(in_shape, "random_mask")
  if not 0.0 <= float(missing) <= 1.0:
    raise ConfigError(f"random_mask: missing={missing} must be a fraction in [0, 1].")
  k = int(H * W * float(missing))
  drop = jax.random.choice(key, H * W, (k,), replace=False)
  flat = jnp.ones((H * W,), jnp.float32).at[drop].set(0.0)
  return jnp.broadcast_to(flat.reshape(H, W, 1), (H, W, C))
