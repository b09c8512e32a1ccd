"""The one operator interface shared by every forward model.

An operator is an immutable `jaxir.pytree` dataclass pytree: arrays (kernels, masks) are
leaves, sizes and modes are static fields. Every method takes ONE image
`(H, W, C)` (or one measurement); batch with `jax.vmap`.

* `A(x)`      forward model, x of shape `in_shape`.
* `AT(y)`     exact adjoint; defaults to `jax.linear_transpose` of `A`.
* `pinv(y)`   pseudo-inverse; closed form where one exists, else CG on AᵀA.
* SVD form (`SVDOperator`, used by DDRM/DDNM/DeqIR-style solvers):
  `A = U diag(s) Vᵀ` with `VT(x) -> (n,)` spectral coefficients (first
  `len(s)` carry the singular values), `V` its inverse, `UT(y) -> (m,)`,
  `U(u) -> y`. Coefficients may be complex (FFT bases); `V`/`U` are unitary.

References:
  Kawar et al., "Denoising Diffusion Restoration Models" (DDRM), 2022 (H_functions).
  deepinv `physics/forward.py` (LinearPhysics / DecomposablePhysics split).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxir import pytree

from jaxir.errors import ShapeError

__all__ = ["Operator", "LinearOperator", "SVDOperator", "cg", "fixed_cg", "adjoint_error",
           "check_in_shape", "check_image", "safe_abs"]


def check_in_shape(in_shape, name: str) -> tuple:
  """`in_shape` as a tuple of three positive ints (H, W, C).

  Args:
    in_shape: the operator's image shape, any sequence of integers.
    name: the operator or function, for the message (e.g. "Blur").

  Returns:
    (H, W, C) as Python ints.

  Raises:
    ShapeError: `in_shape` is not three positive sizes (e.g. it has a batch axis).
  """
  try:
    shape = tuple(int(d) for d in in_shape)
  except (TypeError, ValueError):
    shape = None
  if shape is None or len(shape) != 3 or min(shape) < 1:
    raise ShapeError(f"{name}: in_shape={in_shape!r} must be (H, W, C) with positive "
                     "sizes (one channels-last image, no batch axis; batch with jax.vmap).")
  return shape


def check_image(a, shape, name: str, kind: str = "array"):
  """`a` unchanged if its shape is exactly `shape`, else `ShapeError`.

  Every operator method takes one image, measurement or coefficient vector;
  a batch is the commonest mistake, so the message names the fix.

  Args:
    a: the argument (array or abstract value; only its shape is read).
    shape: the expected shape.
    name: the method, for the message (e.g. "Blur.A").
    kind: what `a` is, for the message ("array", "image", "measurement").

  Raises:
    ShapeError: the shapes differ; the message holds both.
  """
  got, want = tuple(jnp.shape(a)), tuple(int(d) for d in shape)
  if got != want:
    raise ShapeError(f"{name} takes one {kind} of shape {want}, got {got}; "
                     "batch with jax.vmap.")
  return a


def safe_abs(z):
  """|z| of a complex array with zero gradient at z = 0 (as torch's `abs`), not NaN."""
  sq = z.real**2 + z.imag**2
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


class Operator(pytree.PyTreeNode):
  """A (possibly nonlinear) forward model y = A(x) on one HWC image.

  Attributes:
    in_shape: static (H, W, C) of the image the operator takes.
  """
  in_shape: tuple = pytree.field(pytree_node=False)

  linear = False

  def A(self, x):
    raise NotImplementedError

  def __call__(self, x):
    return self.A(x)

  @property
  def out_shape(self):
    """Shape of A(x), found by abstract evaluation (no FLOPs)."""
    return jax.eval_shape(self.A, jax.ShapeDtypeStruct(self.in_shape, jnp.float32)).shape


class LinearOperator(Operator):
  """A linear forward model with adjoint and pseudo-inverse."""

  linear = True

  def AT(self, y):
    """Adjoint Aᵀy, by default the exact linear transpose of `A`."""
    (x,) = jax.linear_transpose(self.A, jax.ShapeDtypeStruct(self.in_shape, y.dtype))(y)
    return x

  def pinv(self, y, *, maxiter: int = 100, tol: float = 1e-6):
    """A⁺y = argmin ||x|| s.t. AᵀA x = Aᵀy, by conjugate gradients from 0."""
    return cg(lambda v: self.AT(self.A(v)), self.AT(y), maxiter=maxiter, tol=tol)


class SVDOperator(LinearOperator):
  """A linear model given by its SVD, A = U diag(s) Vᵀ."""

  def singulars(self):
    """Singular values, shape (m,) with m = number of kept spectral entries."""
    raise NotImplementedError

  def VT(self, x):
    raise NotImplementedError

  def V(self, v):
    raise NotImplementedError

  def UT(self, y):
    raise NotImplementedError

  def U(self, u):
    raise NotImplementedError

  def svd(self):
    """(U, UT, s, V, VT): the factors as functions plus the singular values."""
    return self.U, self.UT, self.singulars(), self.V, self.VT

  def A(self, x):
    s = self.singulars()
    return self.U(s * self.VT(x)[: s.shape[0]])

  def AT(self, y):
    s = self.singulars()
    u = self.UT(y)
    n = int(np.prod(self.in_shape))
    v = jnp.zeros((n,), u.dtype).at[: s.shape[0]].set(s * u)
    return self.V(v)

  #: singular values at most `pinv_rcond * max(s)` count as zero in `pinv` (float32
  #: rounding of an exact zero; NumPy's `pinv` rule). Operators whose spectrum decays
  #: smoothly (blurs) set their own floor on `singulars()` (DDRM: 3e-2).
  pinv_rcond = 1e-5

  def pinv(self, y):
    s = self.singulars()
    u = self.UT(y)
    keep = s > self.pinv_rcond * jnp.max(jnp.abs(s))
    inv = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    n = int(np.prod(self.in_shape))
    v = jnp.zeros((n,), u.dtype).at[: s.shape[0]].set(inv * u)
    return self.V(v)





def cg(matvec, b, *, maxiter: int = 100, tol: float = 1e-6):
  """Conjugate gradients for a symmetric PSD `matvec`, started at zero."""
  x, _ = jax.scipy.sparse.linalg.cg(matvec, b, tol=tol, maxiter=maxiter)
  return x


def fixed_cg(matvec, b, x0, steps: int):
  """`steps` conjugate-gradient iterations for a symmetric PSD `matvec`, from x0.

  A fixed count in one `fori_loop` (jit, vmap and reverse-mode friendly); a step
  whose curvature p^T A p or residual is exactly zero (converged, or broken down
  in float32 on an ill-conditioned system) leaves the iterate unchanged instead
  of dividing by zero. Real arrays.
  """
  r = b - matvec(x0)
  rs = jnp.vdot(r, r)

  def body(_, carry):
    x, r, p, rs = carry
    ap = matvec(p)
    pap = jnp.vdot(p, ap)
    ok = (pap > 0) & jnp.isfinite(pap)
    alpha = jnp.where(ok, rs / jnp.where(ok, pap, 1.0), 0.0)
    x = x + alpha * p
    r = r - alpha * ap
    rs_new = jnp.vdot(r, r)
    beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1.0), 0.0)
    return x, r, r + beta * p, rs_new

  x, _, _, _ = jax.lax.fori_loop(0, int(steps), body, (x0, r, r, rs))
  return x


def adjoint_error(op: LinearOperator, key) -> jax.Array:
  """Relative error of the dot-product test |<Ax, y> - <x, Aᵀy>| / (|Ax||y|)."""
  kx, ky = jax.random.split(key)
  x = jax.random.normal(kx, op.in_shape)
  ax = op.A(x)
  y = jax.random.normal(ky, ax.shape, ax.dtype)
  lhs = jnp.vdot(ax, y)
  rhs = jnp.vdot(x, op.AT(y))
  return jnp.abs(lhs - rhs) / (jnp.linalg.norm(ax) * jnp.linalg.norm(y))
