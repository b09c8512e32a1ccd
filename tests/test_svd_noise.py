"""SVD forms as DDRM uses them: real orthonormal factors and spectral noise injection.

DDRM (and DDNM/DiffPIR) add noise in the spectral domain, x = V(v + sigma z)
with z ~ N(0, I), and expect pixel noise of std sigma. That holds when V is a
REAL orthonormal basis; a complex FFT basis of which only the real part is kept
gives half the variance. Checked for every SVD operator in jaxir:

  * exactly: the dense Jacobians of VT / UT are orthogonal, V = VTᵀ, U = UTᵀ,
    U diag(s) VT = A, all maps real (float32, not complex);
  * by Monte Carlo: V(z) and U(z) for z ~ N(0, I) have unit variance in every
    pixel (N = 4000 draws: the per-entry variance estimate has sd sqrt(2/N) =
    0.022, so the max over entries (at most 192) is held to 0.15, about 7 sd;
    the mean over all d entries, sd sqrt(2/(N d)), to 5 sd, between 0.008 and
    0.035 here; the half-variance bug gives 0.5);
  * batched or wrongly shaped inputs raise `ShapeError` naming the shape and
    "batch with jax.vmap".
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jaxir.errors import ConfigError, ShapeError
from jaxir.operators import (AvgPoolSR, BicubicSR, Blur, CircularBlur, Colorization, Identity,
                             Inpaint, SVDOperator, gaussian_kernel, matrix_operator)
from jaxir.operators.separable import deblur_gauss
from jaxir.operators.walsh_hadamard import walsh_hadamard_cs

KEY = jax.random.key(0, impl="rbg")  # cheap to compile on CPU (see test_operators_sr.py)
N_MC = 4000


def _kernel(seed, size):
  k = np.random.default_rng(seed).uniform(size=(size, size))
  return jnp.asarray(k / k.sum(), jnp.float32)


def _mask(shape, seed):
  return (np.random.default_rng(seed).random(shape) > 0.4).astype(np.float32)


OPERATORS = {
    "identity": lambda: Identity((4, 6, 3)),
    "inpaint": lambda: Inpaint((6, 4, 3), _mask((6, 4, 3), 0)),
    "colorization": lambda: Colorization((4, 6, 3)),
    "avgpool_sr": lambda: AvgPoolSR((8, 4, 2), 2),
    "bicubic_sr": lambda: BicubicSR((8, 12, 2), 4),
    "circular_blur_even": lambda: CircularBlur((8, 6, 2), _kernel(1, 3)),
    "circular_blur_odd": lambda: CircularBlur((7, 5, 1), _kernel(2, 5)),  # default floor
    "separable_blur": lambda: deblur_gauss((8, 8, 2)),
    "walsh_hadamard_cs": lambda: walsh_hadamard_cs(KEY, (8, 8, 1), 0.5),
    "matrix": lambda: matrix_operator(np.random.default_rng(3).standard_normal((10, 24)),
                                      (2, 4, 3)),
}


def _probe(op, x, y, zv, zu):
  s = op.singulars()
  n, m = x.size, s.shape[0]
  vt = jax.jacfwd(op.VT)(jnp.zeros(op.in_shape)).reshape(n, n)
  v = jax.jacfwd(op.V)(jnp.zeros((n,))).reshape(n, n)
  ut = jax.jacfwd(op.UT)(jnp.zeros(op.out_shape)).reshape(m, -1)
  u = jax.jacfwd(op.U)(jnp.zeros((m,))).reshape(-1, m)
  dense_a = jax.jacfwd(op.A)(jnp.zeros(op.in_shape)).reshape(-1, n)
  pix_v = jax.vmap(op.V)(zv).reshape(zv.shape[0], -1)
  pix_u = jax.vmap(op.U)(zu).reshape(zu.shape[0], -1)
  return dict(s=s, vt=vt, v=v, ut=ut, u=u, dense_a=dense_a,
              coef_x=op.VT(x), coef_y=op.UT(y), back_x=op.V(op.VT(x)), back_y=op.U(op.UT(y)),
              var_v=jnp.mean(pix_v ** 2, axis=0), var_u=jnp.mean(pix_u ** 2, axis=0),
              mean_v=jnp.mean(pix_v, axis=0))


@pytest.fixture(params=list(OPERATORS), scope="module")
def probe(request):
  op = OPERATORS[request.param]()
  rng = np.random.default_rng(1)
  n = int(np.prod(op.in_shape))
  m = jax.eval_shape(op.singulars).shape[0]
  x = rng.standard_normal(op.in_shape).astype(np.float32)
  y = rng.standard_normal(op.out_shape).astype(np.float32)
  zv = rng.standard_normal((N_MC, n)).astype(np.float32)
  zu = rng.standard_normal((N_MC, m)).astype(np.float32)
  out = jax.jit(_probe)(op, x, y, zv, zu)
  out = {k: np.asarray(v) for k, v in out.items()}
  return request.param, op, dict(x=x, y=y, **out)


def test_factors_are_real_and_orthonormal(probe):
  name, op, r = probe
  n, m = r["x"].size, r["s"].shape[0]
  for key in ("s", "coef_x", "coef_y", "back_x", "back_y"):
    assert r[key].dtype == np.float32, (key, r[key].dtype)
  assert np.all(r["s"] >= 0)
  assert r["coef_x"].shape == (n,) and r["coef_y"].shape == (m,)
  vt, ut = r["vt"].astype(np.float64), r["ut"].astype(np.float64)
  assert ut.shape == (m, m)  # every operator here has as many measurements as singulars
  np.testing.assert_allclose(vt @ vt.T, np.eye(n), atol=2e-6)
  np.testing.assert_allclose(ut @ ut.T, np.eye(m), atol=2e-6)
  np.testing.assert_allclose(r["v"], vt.T, atol=1e-6)  # V is the transpose (= inverse) of VT
  np.testing.assert_allclose(r["u"], ut.T, atol=1e-6)
  np.testing.assert_allclose(r["back_x"], r["x"], atol=1e-5)  # V(VT x) = x
  np.testing.assert_allclose(r["back_y"], r["y"], atol=1e-5)  # U(UT y) = y
  # <VT x, VT x'> = <x, x'> for two images (here: x and the first row of the identity)
  x2 = np.zeros(n)
  x2[0] = 1.0
  np.testing.assert_allclose(r["coef_x"] @ (vt @ x2), r["x"].reshape(-1) @ x2, atol=1e-5)
  # the SVD reconstructs A: U diag(s) VT[:m]
  usv = (r["u"].astype(np.float64) * r["s"]) @ vt[:m]
  scale = np.abs(r["dense_a"]).max()
  np.testing.assert_allclose(usv, r["dense_a"], atol=1e-5 * scale)


def test_spectral_noise_has_unit_pixel_variance(probe):
  """DDRM's noise injection: V(z), z ~ N(0, I), is N(0, I) in pixel space (and U(z) in
  measurement space). Tolerances in the module docstring."""
  name, op, r = probe
  for var in (r["var_v"], r["var_u"]):
    pooled_tol = 5 * np.sqrt(2.0 / (N_MC * var.size))
    assert abs(var.mean() - 1.0) < pooled_tol, (name, var.mean(), pooled_tol)
    assert np.max(np.abs(var - 1.0)) < 0.15, (name, var.min(), var.max())
  assert np.max(np.abs(r["mean_v"])) < 0.1  # sd 1/sqrt(N) = 0.016 per pixel


def _image_inputs(op):
  """(method, argument) pairs with a leading batch axis of 2, and with one extra pixel."""
  x = np.zeros(op.in_shape, np.float32)
  y = np.zeros(op.out_shape, np.float32)
  xb, yb = np.stack([x, x]), np.stack([y, y])
  calls = [("A", xb), ("VT", xb), ("AT", yb), ("UT", yb), ("pinv", yb)]
  wrong = np.zeros((op.in_shape[0] + 1,) + tuple(op.in_shape[1:]), np.float32)
  calls += [("A", wrong), ("VT", wrong)]
  return calls


@pytest.mark.parametrize("name", list(OPERATORS))
def test_batched_input_raises_shape_error(name):
  op = OPERATORS[name]()
  for method, arg in _image_inputs(op):
    with pytest.raises(ShapeError, match="batch with jax.vmap") as info:
      getattr(op, method)(jnp.asarray(arg))
    assert str(tuple(arg.shape)) in str(info.value), (method, str(info.value))


@pytest.mark.parametrize("name", ["identity", "inpaint", "colorization", "avgpool_sr",
                                  "bicubic_sr", "circular_blur_even"])
def test_batched_coefficients_raise_shape_error(name):
  op = OPERATORS[name]()
  n = int(np.prod(op.in_shape))
  m = jax.eval_shape(op.singulars).shape[0]
  for method, size in (("V", n), ("U", m)):
    with pytest.raises(ShapeError, match="batch with jax.vmap"):
      getattr(op, method)(jnp.zeros((2, size)))


# ------------------------------------------------------------------------- inpainting


def _primitives(fn, *args):
  """Names of every primitive in fn's jaxpr, nested jaxprs (jit, cond, ...) included."""
  names = set()

  def walk(jaxpr):
    for e in jaxpr.eqns:
      names.add(e.primitive.name)
      for p in e.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            walk(inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return names


def test_inpaint_permutation_is_computed_once():
  shape = (6, 4, 3)
  mask = _mask(shape, 0)
  op = Inpaint(shape, mask)
  want = np.argsort(mask.reshape(-1) == 0, kind="stable")
  assert isinstance(op.perm, np.ndarray) and op.perm.dtype == np.int32
  np.testing.assert_array_equal(op.perm, want)
  x = jnp.zeros(shape)
  for fn, args in ((op.VT, (x,)), (op.UT, (x,)), (op.singulars, ()),
                   (op.V, (jnp.zeros(x.size),)), (op.U, (jnp.zeros(x.size),))):
    assert "sort" not in _primitives(fn, *args)  # no argsort per call
  per_call = lambda v: v.reshape(-1)[jnp.argsort(jnp.asarray(mask).reshape(-1) == 0, stable=True)]
  assert "sort" in _primitives(per_call, x)  # (the check sees a sort inside jnp.argsort's jit)
  # a new mask gets its own permutation
  mask2 = _mask(shape, 5)
  op2 = op.replace(mask=mask2)
  np.testing.assert_array_equal(op2.perm, np.argsort(mask2.reshape(-1) == 0, kind="stable"))
  # a traced mask (operator built inside jit/vmap) sorts once, at construction
  build = jax.jit(jax.vmap(lambda m: Inpaint(shape, m)))
  ops = build(jnp.stack([mask, mask2]))
  np.testing.assert_array_equal(ops.perm, np.stack([op.perm, op2.perm]))
  xs = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
  got = jax.vmap(lambda o, v: o.VT(v))(ops, xs)
  np.testing.assert_array_equal(got[1], xs[1].reshape(-1)[op2.perm])
  # stacked by hand (4-D mask): one permutation per row
  np.testing.assert_array_equal(Inpaint(shape, np.stack([mask, mask2])).perm, ops.perm)


# ---------------------------------------------------------------------- circular blur


def test_circular_blur_floor_and_exactness():
  """Singular values |DFT(kernel)| floored at 3e-2 (DDRM `Deblurring`'s ZERO); the operator
  is the floored blur; threshold 0 is the plain periodic blur (scipy 'wrap')."""
  shape = (16, 12, 2)
  k = gaussian_kernel(9, 1.5)
  op = CircularBlur(shape, k)
  assert op.threshold == 3e-2
  emb = np.zeros(shape[:2])
  kn = np.asarray(k, np.float64)
  for a in range(9):
    for b in range(9):
      emb[(a - 4) % shape[0], (b - 4) % shape[1]] += kn[a, b]
  t = np.conj(np.fft.fft2(emb))
  mag = np.abs(t)
  floored = np.where(mag < 3e-2, 0.0, mag)
  s = np.asarray(op.singulars()).reshape(shape)
  np.testing.assert_allclose(s, np.repeat(floored[:, :, None], 2, 2), atol=1e-6)
  n_zero = int((mag < 3e-2).sum())
  assert 0 < n_zero < mag.size  # the floor is active here
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  tf = np.where(mag < 3e-2, 0.0, t)
  want = np.fft.ifft2(tf[:, :, None] * np.fft.fft2(x, axes=(0, 1)), axes=(0, 1)).real
  np.testing.assert_allclose(op.A(jnp.asarray(x)), want, atol=1e-5)
  # pinv inverts on the kept frequencies only
  pinv_want = np.fft.ifft2(np.where(mag < 3e-2, 0.0, 1.0 / np.where(mag < 3e-2, 1.0, t))[:, :, None]
                           * np.fft.fft2(want, axes=(0, 1)), axes=(0, 1)).real
  np.testing.assert_allclose(op.pinv(jnp.asarray(want, jnp.float32)), pinv_want, atol=1e-4)
  np.testing.assert_allclose(SVDOperator.pinv(op, jnp.asarray(want, jnp.float32)), pinv_want,
                             atol=1e-4)
  # no floor: the plain periodic correlation, and the same as Blur(..., "circular")
  plain = CircularBlur(shape, k, threshold=0.0)
  ref = np.stack([scipy.ndimage.correlate(x[..., c].astype(np.float64), kn, mode="wrap")
                  for c in range(2)], -1)
  np.testing.assert_allclose(plain.A(jnp.asarray(x)), ref, atol=1e-5)
  np.testing.assert_allclose(Blur(shape, k, "circular").A(jnp.asarray(x)), ref, atol=1e-5)
  # from_blur keeps the kernel
  conv = CircularBlur.from_blur(Blur(shape, k))
  np.testing.assert_array_equal(conv.kernel, k)
  assert conv.threshold == 3e-2
  for bad in (-1.0, float("nan"), "x"):
    with pytest.raises(ConfigError, match="threshold"):
      CircularBlur(shape, k, threshold=bad)
