"""Walsh-Hadamard compressed sensing (DDRM/DDNM/DeqIR `WalshHadamardCS`).

Each channel's H W pixels (row-major, index i W + j) are transformed by the
orthonormal Walsh-Hadamard transform Hₙ / sqrt(n), n = H W, and the
coefficients perm[0], ..., perm[m - 1] are measured, m = floor(ratio n):

  y[r, c] = (Hₙ x[:, :, c].ravel() / sqrt(n))[perm[r]],   r < m.

The official `fwht` is the in-place butterfly (blocks of 2h, first half +
second half, first half - second half, h = 1, 2, 4, ...) divided by img_dim =
sqrt(n): the Sylvester Hadamard matrix in its natural order, `scipy.linalg.hadamard(n)`
(rows in index order, not sorted by sequency). The same permutation serves
every channel. `ordering="sequency"` indexes the coefficients in Walsh
(sequency) order instead: coefficient k is the row with k sign changes.

SVD form: A = U diag(1) Vᵀ with V = the transform followed by the permutation
(Vᵀ x lists the coefficients in perm order), U = I, all m C singular values 1,
so `pinv` = `AT` (zero-fill the unmeasured coefficients, transform back).
Layout (the official's): `VT(x)` entry r * C + c is coefficient perm[r] of
channel c; the measurement `A(x)` has shape (m, C), `UT(y)` is y flattened.

The permutation is a pytree leaf: `op.replace(perm=p)` or stacking operators
with different permutations and `jax.vmap` work. The official draws it once per
run as `torch.randperm(image_size ** 2)` from PyTorch's global generator
(seeded by `torch.manual_seed(args.seed)`, default seed 666, `main.py`, then
advanced by everything drawn before the operator is built), so the official
permutation is reproducible only by exporting it from a run; pass it to
`WalshHadamardCS(in_shape, perm)`. `walsh_hadamard_cs(key, ...)` draws one
with `jax.random.permutation` instead.

The official's `ratio` is the integer compression factor (`compress_by =
round(1 / deg_scale)`, DeqIR `deg_scale = 0.5`) and it keeps C n // ratio
entries; here `ratio` is the kept fraction in (0, 1] and m = floor(ratio n),
the same count for ratio = 1 / k.

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022:
    `functions/svd_replacement.py` `WalshHadamardCS` (bahjat-kawar/ddrm).
  Wang et al., DDNM, ICLR 2023: `functions/svd_operators.py` `WalshHadamardCS`.
  Cao et al., DeqIR, CVPR 2024: caojiezhang/DeqIR `functions/svd_operators.py`,
    `runners/diffusion.py` (`cs_walshhadamard`, deg_scale 0.5).
  Beauchamp, "Walsh Functions and Their Applications", 1975 (sequency order).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.base import SVDOperator, check_image, check_in_shape

__all__ = ["WalshHadamardCS", "walsh_hadamard", "sequency_order", "walsh_hadamard_cs"]

_ORDERINGS = ("natural", "sequency")


def _is_pow2(v: int) -> bool:
  return v >= 1 and v & (v - 1) == 0


@functools.lru_cache(maxsize=32)
def sequency_order(n: int) -> np.ndarray:
  """Natural (Hadamard) row index of the Walsh function with k sign changes, k < n.

  Row k of the sequency-ordered Walsh matrix is row `sequency_order(n)[k]` of
  `scipy.linalg.hadamard(n)`: the bit reversal (over log2 n bits) of the Gray
  code k ^ (k >> 1).
  """
  if not _is_pow2(int(n)):
    raise ShapeError(f"sequency_order: n={n} must be a power of two.")
  bits = int(n).bit_length() - 1
  k = np.arange(n)
  g = k ^ (k >> 1)
  rev = np.zeros_like(g)
  for b in range(bits):
    rev |= ((g >> b) & 1) << (bits - 1 - b)
  rev.setflags(write=False)
  return rev


def walsh_hadamard(a, ordering: str = "natural"):
  """Orthonormal Walsh-Hadamard transform along axis 0 (length a power of two).

  Natural order: Hₙ a / sqrt(n) with Hₙ = `scipy.linalg.hadamard(n)`, by the
  O(n log n) butterfly the official `fwht` uses. Symmetric and its own inverse.
  Sequency order: the natural coefficients re-indexed by `sequency_order`.

  Args:
    a: array (n, ...), n a power of two.
    ordering: "natural" (DDRM/DDNM/DeqIR) or "sequency".

  Returns:
    array of a's shape and dtype.
  """
  n = a.shape[0]
  if not _is_pow2(n):
    raise ShapeError(f"walsh_hadamard: length {n} along axis 0 is not a power of two; "
                     "pad or crop to 2^k.")
  if ordering not in _ORDERINGS:
    raise ConfigError(f"walsh_hadamard: ordering={ordering!r}; use one of {_ORDERINGS}.")
  rest = a.shape[1:]
  h = 1
  while h < n:
    b = a.reshape((n // (2 * h), 2, h) + rest)
    a = jnp.stack([b[:, 0] + b[:, 1], b[:, 0] - b[:, 1]], axis=1)
    h *= 2
  a = a.reshape((n,) + rest) / jnp.sqrt(jnp.asarray(n, a.dtype))
  if ordering == "sequency":
    a = a[sequency_order(n)]
  return a


def _inverse_walsh_hadamard(a, ordering: str):
  """Inverse of `walsh_hadamard` (undo the re-indexing, then the involution)."""
  if ordering == "sequency":
    a = jnp.zeros_like(a).at[sequency_order(a.shape[0])].set(a)
  return walsh_hadamard(a, "natural")


class WalshHadamardCS(SVDOperator):
  """Walsh-Hadamard compressed sensing: keep `ratio` of each channel's WH coefficients.

  See the module docstring for the definition and layout. Measurement shape
  (m, C), m = floor(ratio H W).

  Attributes:
    in_shape: static (H, W, C), H and W powers of two (the official takes
      square images; any H W = 2^k works here).
    perm: (H W,) integer permutation of range(H W), a pytree leaf; the first m
      entries are the measured coefficients. Checked when concrete.
    ratio: static kept fraction in (0, 1] (DeqIR `deg_scale = 0.5`).
    ordering: static "natural" (official `fwht`) or "sequency".
  """
  perm: jax.Array
  ratio: float = pytree.field(pytree_node=False, default=0.5)
  ordering: str = pytree.field(pytree_node=False, default="natural")

  def __post_init__(self):
    shape = check_in_shape(self.in_shape, "WalshHadamardCS")
    H, W, _ = shape
    if not (_is_pow2(H) and _is_pow2(W)):
      raise ShapeError(f"WalshHadamardCS: image size {(H, W)} must have sides that are powers "
                       "of two (the fast transform needs H W = 2^k); crop or pad the image, "
                       "e.g. to 256x256.")
    object.__setattr__(self, "in_shape", shape)
    try:
      r = float(self.ratio)
    except (TypeError, ValueError):
      r = float("nan")
    if not (0.0 < r <= 1.0):
      raise ConfigError(f"WalshHadamardCS: ratio={self.ratio!r} must lie in (0, 1] (the kept "
                        "fraction of coefficients; DeqIR uses 0.5).")
    if math.floor(r * H * W + 1e-9) < 1:
      raise ConfigError(f"WalshHadamardCS: ratio={r} keeps no coefficient of {H * W}; use "
                        f"ratio >= {1 / (H * W):.3g}.")
    object.__setattr__(self, "ratio", r)
    if self.ordering not in _ORDERINGS:
      raise ConfigError(f"WalshHadamardCS: ordering={self.ordering!r}; use one of "
                        f"{_ORDERINGS} (the official is 'natural').")
    p = self.perm
    if isinstance(p, (list, tuple)):
      p = np.asarray(p)
    if not isinstance(p, (np.ndarray, jax.Array)):
      return  # a placeholder leaf (tree_map, vmap axis spec, eval_shape)
    if p.dtype == jax.dtypes.float0:
      return  # a symbolic-zero cotangent
    n = H * W
    if p.ndim < 1 or p.shape[-1] != n:
      raise ShapeError(f"WalshHadamardCS: perm has shape {tuple(p.shape)}; expected ({n},) "
                       f"(a permutation of the H W = {n} pixel indices).")
    if not jnp.issubdtype(p.dtype, jnp.integer):
      raise ConfigError(f"WalshHadamardCS: perm has dtype {p.dtype}; expected integers (a "
                        "permutation of range(H W)).")
    if p.ndim == 1 and not isinstance(p, jax.core.Tracer):
      if not np.array_equal(np.sort(np.asarray(p)), np.arange(n)):
        raise ConfigError("WalshHadamardCS: perm is not a permutation of range(H W) (repeated "
                          "or out-of-range indices); draw one with jax.random.permutation.")
    object.__setattr__(self, "perm", p)

  @property
  def m(self) -> int:
    """Measured coefficients per channel, floor(ratio H W)."""
    H, W, _ = self.in_shape
    return int(math.floor(self.ratio * H * W + 1e-9))

  def _check(self, x, shape, what):
    check_image(x, shape, f"WalshHadamardCS.{what}")

  def _coefs(self, x):
    H, W, C = self.in_shape
    return walsh_hadamard(x.reshape(H * W, C), self.ordering)

  def _image(self, c):
    return _inverse_walsh_hadamard(c, self.ordering).reshape(self.in_shape)

  def A(self, x):
    """(H, W, C) -> (m, C): the measured coefficients, in perm order."""
    self._check(x, self.in_shape, "A")
    return self._coefs(x)[self.perm[: self.m]]

  def AT(self, y):
    H, W, C = self.in_shape
    self._check(y, (self.m, C), "AT")
    c = jnp.zeros((H * W, C), y.dtype).at[self.perm[: self.m]].set(y)
    return self._image(c)

  def pinv(self, y):
    return self.AT(y)  # orthonormal rows: A⁺ = Aᵀ

  def singulars(self):
    return jnp.ones((self.m * self.in_shape[2],), jnp.float32)

  def VT(self, x):
    self._check(x, self.in_shape, "VT")
    return self._coefs(x)[self.perm].reshape(-1)

  def V(self, v):
    H, W, C = self.in_shape
    c = jnp.zeros((H * W, C), v.dtype).at[self.perm].set(v.reshape(H * W, C))
    return self._image(c)

  def UT(self, y):
    self._check(y, (self.m, self.in_shape[2]), "UT")
    return y.reshape(-1)

  def U(self, u):
    return u.reshape(self.m, self.in_shape[2])


def walsh_hadamard_cs(key, in_shape, ratio: float = 0.5,
                      ordering: str = "natural") -> WalshHadamardCS:
  """DeqIR `cs_walshhadamard` with a permutation drawn by `jax.random.permutation(key, H W)`.

  Defaults: ratio 0.5 (DeqIR `runners/diffusion.py` `deg_scale`), natural order
  (official `fwht`). The official draws its permutation with `torch.randperm`;
  see the module docstring to use that one instead.
  """
  shape = check_in_shape(in_shape, "walsh_hadamard_cs")
  perm = jax.random.permutation(key, shape[0] * shape[1])
  return WalshHadamardCS(shape, perm, ratio, ordering)
