"""Separable blurs (DDRM `Deblurring`/`Deblurring2D`) and Walsh-Hadamard CS in SVD form.

References: scipy.ndimage.correlate1d with zero padding, dense matrices built
here from the kernels by loops and factored by numpy's SVD, scipy.linalg.hadamard,
Walsh rows sorted by their counted sign changes, jax.linear_transpose.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from jaxir.errors import ConfigError, KernelError, ShapeError
from jaxir.operators import SVDOperator
from jaxir.operators.separable import (SeparableBlur, ddrm_gaussian_taps, deblur_aniso,
                                       deblur_gauss, deblur_uni)
from jaxir.operators.walsh_hadamard import (WalshHadamardCS, sequency_order, walsh_hadamard,
                                            walsh_hadamard_cs)
from jaxir.tasks import TASKS, make_operator
from svd_contract import (check_adjoint, check_factors_orthonormal, check_generic_forms,
                          check_pinv_identities, check_vmap_equals_loop, rel, svd_probe)

# rbg keys: cheap to compile on CPU (see test_operators_sr.py).
KEY = jax.random.key(0, impl="rbg")
RNG = np.random.default_rng(0)


def _perm(n, seed):
  return np.random.default_rng(seed).permutation(n).astype(np.int32)


OPERATORS = {
    "deblur_gauss": lambda: deblur_gauss((16, 16, 3)),
    "deblur_uni_rect": lambda: deblur_uni((16, 12, 2)),
    "deblur_aniso": lambda: deblur_aniso((16, 16, 2)),
    "full_taps_t0": lambda: SeparableBlur((12, 16, 3), (0.1, 0.6, 0.3), (0.2, 0.2, 0.5, 0.05, 0.05),
                                          threshold=0.0, drop_last_tap=False),
    "even_kernel": lambda: SeparableBlur((8, 8, 3), (0.25, 0.5, 0.15, 0.1)),
    "ddrm_tiling": lambda: deblur_gauss((8, 8, 3), ddrm_tiling=True),
    "wh_natural": lambda: walsh_hadamard_cs(KEY, (16, 16, 3), 0.5),
    "wh_sequency_rect": lambda: WalshHadamardCS((8, 16, 2), _perm(128, 1), 0.25, "sequency"),
    "wh_full": lambda: WalshHadamardCS((4, 4, 1), _perm(16, 2), 1.0),
}
BLURS = [k for k in OPERATORS if not k.startswith("wh")]


@pytest.fixture(params=list(OPERATORS), scope="module")
def probe(request):
  op = OPERATORS[request.param]()
  return request.param, op, svd_probe(op, KEY)


def test_adjoint(probe):
  check_adjoint(probe[2])


def test_pinv_reproduces_the_measurement(probe):
  """A A⁺ A = A (the blurs' kept products go down to threshold² ~ 1e-3; measured
  errors stay below 4e-7)."""
  check_pinv_identities(probe[2], full_row_rank=False)


def test_svd_reconstruction_and_generic_forms(probe):
  """U diag(s) Vᵀ x = A x, and the direct A, Aᵀ, A⁺ equal the base class's SVD forms."""
  check_generic_forms(probe[2])


def test_factors_orthonormal(probe):
  check_factors_orthonormal(probe[2])


def test_singular_values_match_numpy(probe):
  """Sorted singulars (zeros included) = numpy's SVD of the dense A; A⁺ = numpy's pinv.

  All operators but `ddrm_tiling` act on each channel alike, so their dense A is
  block diagonal with one block repeated C times: checked, then the SVD is taken
  of that block (the full SVD otherwise: 192 x 192)."""
  name, op, r = probe
  C = op.in_shape[2]
  y = r["y"].reshape(-1, C).astype(np.float64)
  a = r["dense_a"].astype(np.float64).reshape(-1, C, r["x"].size // C, C)
  if name == "ddrm_tiling":
    a, C, y = a.reshape(-1, r["x"].size), 1, y.reshape(-1, 1)
  else:
    for c in range(C):
      for d in range(C):
        if c == d:
          np.testing.assert_array_equal(a[:, c, :, d], a[:, 0, :, 0])
        else:
          assert not np.any(a[:, c, :, d])
    a = a[:, 0, :, 0]
  u, sv, vt = np.linalg.svd(a, full_matrices=False)
  s = np.sort(r["s"].astype(np.float64))[::-1]
  assert s.shape == (C * sv.size,)
  np.testing.assert_allclose(s, np.repeat(sv, C), atol=1e-6)
  keep = sv > 1e-6
  ref = vt[keep].T @ ((u[:, keep].T @ y) / sv[keep][:, None])
  assert rel(r["pinv_y"].reshape(ref.shape), ref) <= 1e-5


def test_vmap_equals_loop_and_jit_equals_eager(probe):
  name, op, r = probe
  # eager dispatch is slow: one operator per class
  check_vmap_equals_loop(op, r, eager=name in ("deblur_aniso", "wh_sequency_rect"))


# ------------------------------------------------------------------- separable blur


def _loop_matrix(kernel, n, drop_last_tap=True):
  """The official construction, written out: M[i, j] = kernel[j - i + k//2]."""
  k = len(kernel)
  hi = k // 2 if drop_last_tap else k // 2 + 1
  m = np.zeros((n, n))
  for i in range(n):
    for j in range(i - k // 2, i + hi):
      if 0 <= j < n:
        m[i, j] = kernel[j - i + k // 2]
  return m


def _truncated(m, threshold):
  u, s, vt = np.linalg.svd(m)
  return (u * np.where(s < threshold, 0.0, s)) @ vt


def _correlate(x, kh, kw):
  y = scipy.ndimage.correlate1d(x.astype(np.float64), kh, axis=0, mode="constant")
  return scipy.ndimage.correlate1d(y, kw, axis=1, mode="constant")


@pytest.mark.parametrize("kh,kw,drop", [
    ((0.1, 0.6, 0.3), (0.2, 0.2, 0.5, 0.05, 0.05), False),  # all taps, odd
    ((0.1, 0.6, 0.3), (0.2, 0.2, 0.5, 0.05, 0.05), True),   # official: last tap dropped
    ((0.25, 0.5, 0.15, 0.1), (0.3, 0.7), True),              # even: all taps, centre k//2
])
def test_blur_equals_correlate1d_with_zero_padding(kh, kw, drop):
  x = RNG.standard_normal((12, 10, 2)).astype(np.float32)
  op = SeparableBlur(x.shape, kh, kw, threshold=0.0, drop_last_tap=drop)
  ch, cw = np.array(kh), np.array(kw)
  if drop and len(kh) % 2:
    ch[-1] = 0.0
  if drop and len(kw) % 2:
    cw[-1] = 0.0
  want = _correlate(x, ch, cw)
  got = jax.jit(op.A)(jnp.asarray(x))
  assert rel(got, want) <= 1e-6
  assert rel(jax.jit(SVDOperator.A)(op, jnp.asarray(x)), want) <= 1e-5


@pytest.mark.parametrize("make", [deblur_gauss, deblur_uni, deblur_aniso])
def test_official_operators_equal_thresholded_loop_matrices(make):
  """A = (M_h thresholded) x (M_w thresholded)ᵀ with M from the official loop and
  1-D singular values < 3e-2 zeroed; the threshold only removes a small part."""
  x = RNG.standard_normal((16, 16, 3)).astype(np.float32)
  op = make(x.shape)
  kh, kw = np.array(op.kernel_h), np.array(op.kernel_w)
  mh, mw = _loop_matrix(kh, 16), _loop_matrix(kw, 16)
  th, tw = _truncated(mh, 3e-2), _truncated(mw, 3e-2)
  want = np.einsum("ih,hwc,jw->ijc", th, x.astype(np.float64), tw)
  assert rel(jax.jit(op.A)(jnp.asarray(x)), want) <= 1e-6
  exact = np.einsum("ih,hwc,jw->ijc", mh, x.astype(np.float64), mw)
  assert 0 < rel(want, exact) < 0.1
  # singulars: sorted outer products of the thresholded 1-D values, each repeated per channel
  sh = np.linalg.svd(mh, compute_uv=False)
  sw = np.linalg.svd(mw, compute_uv=False)
  prod = np.sort(np.outer(np.where(sh < 3e-2, 0, sh), np.where(sw < 3e-2, 0, sw)).ravel())[::-1]
  np.testing.assert_allclose(op.singulars(), np.repeat(prod, 3), atol=1e-7)
  raw = np.sort(np.outer(sh, sw).ravel())[::-1]
  s_raw = np.asarray(op.singulars_unthresholded())[::3]
  np.testing.assert_allclose(np.sort(s_raw)[::-1], raw, atol=1e-7)


def test_official_kernels():
  g = np.exp(-0.5 * (np.arange(-2, 3) / 10.0) ** 2)
  np.testing.assert_allclose(deblur_gauss((8, 8, 3)).kernel_h, g / g.sum(), rtol=1e-12)
  assert deblur_gauss((8, 8, 3)).kernel_w == deblur_gauss((8, 8, 3)).kernel_h
  np.testing.assert_allclose(deblur_uni((8, 8, 3)).kernel_h, np.full(9, 1 / 9), rtol=1e-12)
  op = deblur_aniso((8, 8, 3))
  for k, sigma in ((op.kernel_h, 1.0), (op.kernel_w, 20.0)):
    e = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    np.testing.assert_allclose(k, e / e.sum(), rtol=1e-12)
  np.testing.assert_allclose(ddrm_gaussian_taps(3, 1.0).sum(), 1.0, rtol=1e-12)


def test_layout_is_rank_major_channel_minor():
  """Vᵀ x entry r*C + c: channel c's coefficient of rank r; singulars repeat per channel."""
  op = deblur_aniso((8, 8, 3))
  s = np.asarray(op.singulars())
  np.testing.assert_array_equal(s[0::3], s[1::3])
  np.testing.assert_array_equal(s[0::3], s[2::3])
  assert np.all(np.diff(s[0::3]) <= 0)
  x = RNG.standard_normal((8, 8, 3)).astype(np.float32)
  x1 = x.copy()
  x1[..., 1:] = 0  # only channel 0: the other channels' coefficients vanish
  v = np.asarray(jax.jit(op.VT)(x1)).reshape(64, 3)
  assert np.max(np.abs(v[:, 1:])) == 0 and np.max(np.abs(v[:, 0])) > 0


def test_ddrm_tiling_reproduces_the_official_pairing():
  """ddrm_tiling: singulars tiled [s, s, s] (DDRM's repeat(1, 3)) against the same Vᵀ: a
  consistent SVD (registry tests) that is not the blur."""
  op = deblur_gauss((8, 8, 3))
  tiled = deblur_gauss((8, 8, 3), ddrm_tiling=True)
  s = np.asarray(op.singulars())[0::3]
  np.testing.assert_array_equal(tiled.singulars(), np.tile(s, 3))
  x = RNG.standard_normal((8, 8, 3)).astype(np.float32)
  maps = jax.jit(lambda o, v: (o.VT(v), o.A(v)))
  (vt_tiled, a_tiled), (vt, a) = maps(tiled, x), maps(op, x)
  np.testing.assert_array_equal(vt_tiled, vt)
  assert rel(a_tiled, a) > 0.05


def test_blur_bad_input():
  with pytest.raises(KernelError, match="odd length"):
    SeparableBlur((8, 8, 3), (0.5, 0.5), drop_last_tap=False)
  with pytest.raises(KernelError, match="1 tap"):
    SeparableBlur((8, 8, 3), (1.0,))
  SeparableBlur((8, 8, 3), (1.0,), drop_last_tap=False)  # identity, allowed
  with pytest.raises(KernelError, match="1-D kernel"):
    SeparableBlur((8, 8, 3), np.ones((3, 3)) / 9)
  with pytest.raises(KernelError, match="NaN"):
    SeparableBlur((8, 8, 3), (0.5, np.nan, 0.5))
  with pytest.raises(KernelError, match="kernel_w"):
    SeparableBlur((8, 8, 3), (0.5, 0.5), np.ones((2, 2)))
  with pytest.raises(ConfigError, match="threshold"):
    deblur_gauss((8, 8, 3), threshold=-1.0)
  with pytest.raises(ShapeError, match=r"\(H, W, C\)"):
    deblur_gauss((8, 8))
  with pytest.raises(KernelError, match="sigma"):
    deblur_gauss((8, 8, 3), sigma=0.0)
  with pytest.raises(ShapeError, match="batch with jax.vmap"):
    deblur_uni((8, 8, 3)).A(jnp.zeros((2, 8, 8, 3)))


# ------------------------------------------------------------------ Walsh-Hadamard


@pytest.mark.parametrize("n", [1, 2, 16, 256])
def test_walsh_hadamard_equals_scipy_hadamard(n):
  a = RNG.standard_normal((n, 3)).astype(np.float32)
  h = scipy.linalg.hadamard(n).astype(np.float64) / np.sqrt(n)
  nat, seq = jax.jit(lambda v: (walsh_hadamard(v), walsh_hadamard(v, "sequency")))(a)
  assert rel(nat, h @ a) <= 1e-6
  # sequency order: the rows sorted by their number of sign changes (0, 1, ..., n-1)
  changes = (np.diff(scipy.linalg.hadamard(n), axis=1) != 0).sum(axis=1)
  np.testing.assert_array_equal(np.sort(changes), np.arange(n))
  np.testing.assert_array_equal(sequency_order(n), np.argsort(changes))
  assert rel(seq, h[np.argsort(changes)] @ a) <= 1e-6


def test_wh_cs_equals_dense_hadamard_rows():
  """y[r, c] = (H_n x_c / sqrt(n))[perm[r]] with row-major pixels, r < ratio n (official)."""
  x = RNG.standard_normal((16, 8, 3)).astype(np.float32)
  perm = _perm(128, 3)
  h = scipy.linalg.hadamard(128).astype(np.float64) / np.sqrt(128)
  for ordering, rows in (("natural", h), ("sequency", h[sequency_order(128)])):
    op = WalshHadamardCS(x.shape, perm, 0.5, ordering)
    want = (rows @ x.reshape(128, 3).astype(np.float64))[perm[:64]]
    assert op.out_shape == (64, 3)
    y, v = jax.jit(lambda o, a: (o.A(a), o.VT(a)))(op, x)
    assert rel(y, want) <= 1e-6
    # the layout: VT entry r*C + c is coefficient perm[r] of channel c
    full = (rows @ x.reshape(128, 3).astype(np.float64))[perm]
    assert rel(v, full.reshape(-1)) <= 1e-6
  assert WalshHadamardCS(x.shape, perm, 1 / 3).m == 128 // 3  # official n // compress_by


def test_wh_permutation_is_a_leaf():
  """Operators with different permutations stack and vmap; the key decides the draw."""
  a, b = (walsh_hadamard_cs(jax.random.key(i, impl="rbg"), (8, 8, 3)) for i in (0, 1))
  assert not np.array_equal(a.perm, b.perm)
  np.testing.assert_array_equal(a.perm, walsh_hadamard_cs(jax.random.key(0, impl="rbg"),
                                                          (8, 8, 3)).perm)
  ops = jax.tree.map(lambda *p: jnp.stack(p), a, b)
  x = jnp.asarray(RNG.standard_normal((2, 8, 8, 3)).astype(np.float32))
  apply = jax.jit(lambda op, v: op.A(v))
  got = jax.jit(jax.vmap(apply))(ops, x)
  np.testing.assert_array_equal(got[0], apply(a, x[0]))
  np.testing.assert_array_equal(got[1], apply(b, x[1]))
  assert len(jax.tree.leaves(a)) == 1


def test_wh_bad_input():
  perm = _perm(64, 0)
  with pytest.raises(ShapeError, match="powers of two"):
    walsh_hadamard_cs(KEY, (12, 16, 3))
  with pytest.raises(ShapeError, match="powers of two"):
    WalshHadamardCS((8, 6, 3), _perm(48, 0))
  for bad in (0.0, -0.5, 1.5, float("nan")):
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
      WalshHadamardCS((8, 8, 3), perm, bad)
  with pytest.raises(ConfigError, match="keeps no coefficient"):
    WalshHadamardCS((8, 8, 3), perm, 0.001)
  with pytest.raises(ShapeError, match=r"expected \(64,\)"):
    WalshHadamardCS((8, 8, 3), _perm(32, 0))
  dup = perm.copy()
  dup[0] = dup[1]
  with pytest.raises(ConfigError, match="not a permutation"):
    WalshHadamardCS((8, 8, 3), dup)
  with pytest.raises(ConfigError, match="integers"):
    WalshHadamardCS((8, 8, 3), perm.astype(np.float32))
  with pytest.raises(ConfigError, match="ordering"):
    WalshHadamardCS((8, 8, 3), perm, 0.5, "dyadic")
  with pytest.raises(ShapeError, match=r"\(32, 3\)"):
    WalshHadamardCS((8, 8, 3), perm).AT(jnp.zeros((64, 3)))
  with pytest.raises(ShapeError, match="power of two"):
    walsh_hadamard(jnp.zeros((12, 2)))


# -------------------------------------------------------------------------- tasks


def test_tasks_registered():
  shape = (32, 32, 3)
  for name, cls in (("deblur_gauss", SeparableBlur), ("deblur_uni", SeparableBlur),
                    ("deblur_aniso", SeparableBlur), ("cs_wh", WalshHadamardCS)):
    assert name in TASKS and TASKS[name].sigma_y == 0.0
    assert isinstance(make_operator(name, KEY, shape), cls)
  assert make_operator("deblur_aniso", KEY, shape).kernel_w == deblur_aniso(shape).kernel_w
  assert make_operator("cs_wh", KEY, shape).m == 512
