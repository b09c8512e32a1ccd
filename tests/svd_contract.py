"""The contract every SVD-form operator is tested against, shared by the operator test files.

`svd_probe(op, key)` computes, in one compiled call, everything the checks compare (one
compile per operator: eager dispatch and repeated compiles dominated those files' runtime);
the `check_*` functions assert the contract on its result:

* the adjoint identity <A x, y> = <x, Aᵀ y> and Aᵀ = `jax.linear_transpose(A)`;
* the direct A, Aᵀ, A⁺ equal `SVDOperator`'s generic forms U diag(s) Vᵀ;
* V and U have orthonormal columns (dense Jacobians);
* A A⁺ A = A;
* `vmap` equals a loop, and (for one operator per class) `jit` equals eager.

Each test file adds what is particular to its operators (SVD against numpy, fixtures).
"""
import jax
import jax.numpy as jnp
import numpy as np

from jaxir.operators import SVDOperator, adjoint_error
from jaxir.operators.inpaint import Inpaint


def rel(a, b):
  """max |a - b| / max |b|, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def svd_maps(op, x):
  """(A x, Aᵀ A x, A⁺ A x, Vᵀ x, V Vᵀ x, Uᵀ A x): what vmap and eager are compared on."""
  y = op.A(x)
  return y, op.AT(y), op.pinv(y), op.VT(x), op.V(op.VT(x)), op.UT(y)


def _inputs(op):
  """Host-drawn test vectors (no PRNG in the compiled probe)."""
  rng = np.random.default_rng(1)
  n_s = jax.eval_shape(op.singulars).shape[0]
  return dict(x=rng.standard_normal(op.in_shape, np.float32),
              y=rng.standard_normal(op.out_shape, np.float32),
              u=rng.standard_normal((n_s,), np.float32),
              xs=rng.standard_normal((2,) + op.in_shape, np.float32))


def _probe(op, key, inp):
  x, y, u, xs = inp["x"], inp["y"], inp["u"], inp["xs"]
  # The generic SVD forms act on the range of A; an inpainting y must be masked first.
  y_range = op.A(y) if isinstance(op, Inpaint) else y
  s = op.singulars()
  ax = op.A(x)
  (at_lin,) = jax.linear_transpose(op.A, jax.ShapeDtypeStruct(op.in_shape, jnp.float32))(y)
  return dict(
      ax=ax, s=s,
      adjoint_error=adjoint_error(op, key),
      at=op.AT(y), at_lin=at_lin,
      svd_a=SVDOperator.A(op, x), svd_at=SVDOperator.AT(op, y_range),
      svd_pinv=SVDOperator.pinv(op, y_range), at_range=op.AT(y_range),
      pinv_range=op.pinv(y_range), pinv_y=op.pinv(y),
      usvt=op.U(s * op.VT(x)[: s.shape[0]]),
      vvt=op.V(op.VT(x)), utu=op.UT(op.U(u)),
      apa=op.A(op.pinv(ax)), apy=op.A(op.pinv(y)),
      dense_a=jax.jacfwd(op.A)(jnp.zeros(op.in_shape)),
      dense_vt=jax.jacfwd(op.VT)(jnp.zeros(op.in_shape)),
      dense_ut=jax.jacfwd(op.UT)(jnp.zeros(op.out_shape)),
      batched=jax.vmap(lambda v: svd_maps(op, v))(xs),
      looped=[svd_maps(op, v) for v in xs],
  )


def svd_probe(op, key) -> dict:
  """The inputs (x, y, u, xs) and every compared quantity, as NumPy arrays."""
  inp = _inputs(op)
  out = jax.tree.map(np.asarray, jax.jit(_probe)(op, key, inp))
  return {**inp, **out}


def check_adjoint(r):
  assert float(r["adjoint_error"]) <= 1e-5
  assert rel(r["at"], r["at_lin"]) <= 1e-5  # hand-written AT = linear_transpose(A)


def check_generic_forms(r):
  """U diag(s) Vᵀ x = A x, and the direct A, Aᵀ, A⁺ equal the base class's SVD forms."""
  assert rel(r["usvt"], r["ax"]) <= 1e-5
  assert rel(r["svd_a"], r["ax"]) <= 1e-5
  assert rel(r["svd_at"], r["at_range"]) <= 1e-5
  assert rel(r["svd_pinv"], r["pinv_range"]) <= 1e-5


def check_factors_orthonormal(r):
  n = r["x"].size
  vt = r["dense_vt"].astype(np.float64).reshape(n, n)
  np.testing.assert_allclose(vt @ vt.T, np.eye(n), atol=2e-6)
  assert rel(r["vvt"], r["x"]) <= 1e-5  # V(Vᵀ x) = x
  m = r["s"].shape[0]
  ut = r["dense_ut"].astype(np.float64).reshape(m, -1)
  np.testing.assert_allclose(ut @ ut.T, np.eye(m), atol=2e-6)
  assert rel(r["utu"], r["u"]) <= 1e-5


def check_pinv_identities(r, full_row_rank: bool):
  assert rel(r["apa"], r["ax"]) <= 1e-5  # A A⁺ A = A
  if full_row_rank:
    assert rel(r["apy"], r["y"]) <= 1e-5  # A A⁺ = I


def check_vmap_equals_loop(op, r, eager: bool):
  """vmap = a loop; with `eager`, also jit = eager (slow: one operator per class)."""
  for i, ref in enumerate(r["looped"]):
    for got_b, want in zip(r["batched"], ref):
      assert rel(got_b[i], want) <= 1e-6
  if eager:
    for got, want in zip(r["looped"][0], svd_maps(op, jnp.asarray(r["xs"][0]))):
      assert rel(got, want) <= 1e-6
