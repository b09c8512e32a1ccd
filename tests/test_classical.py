"""Classical baselines (jaxir.classical) against closed forms and independent references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.restoration import denoise_tv_chambolle

from jaxir import classical as C
from jaxir import io, metrics
from jaxir.errors import ConfigError
from jaxir.operators import (AvgPoolSR, BicubicSR, BlindBlur, BlindSR, Blur, CircularBlur,
                             Identity, Inpaint, NonBlind, PhaseRetrieval, deblur_gauss,
                             gaussian_kernel, motion_kernel)
from jaxir.operators.blind import mlp_kernel
from jaxir.priors.posterior import operator_matrix


def smooth_image(shape, seed=0):
  """A smooth test image in [-0.9, 0.9]: a few random low-frequency cosines."""
  H, W, C = shape
  rng = np.random.RandomState(seed)
  i, j = np.meshgrid(np.arange(H) / H, np.arange(W) / W, indexing="ij")
  x = np.zeros(shape)
  for c in range(C):
    for _ in range(4):
      a, b, ph = rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(0, 2 * np.pi)
      x[..., c] += np.cos(2 * np.pi * (a * i + b * j) + ph)
  x = x / np.abs(x).max() * 0.9
  return jnp.asarray(x, jnp.float32)


def psnr(a, b):
  return float(metrics.psnr(io.to_unit(jnp.clip(a, -1, 1)), io.to_unit(b)))


def tikhonov(op, y, nsr):
  """m + argmin_d ||A d - (y - A m)||^2 + nsr ||d||^2 (m: y's channel means), dense, float64."""
  a = np.asarray(operator_matrix(op), np.float64)
  y = np.asarray(y, np.float64)
  mean = np.broadcast_to(y.mean(axis=(0, 1), keepdims=True), op.in_shape).ravel()
  r = y.ravel() - a @ mean
  return (mean + np.linalg.solve(a.T @ a + nsr * np.eye(a.shape[1]), a.T @ r)).reshape(op.in_shape)


def test_wiener_is_the_per_frequency_closed_form_for_a_circular_blur():
  shape, nsr = (12, 10, 2), 3e-3
  rng = np.random.RandomState(0)
  kernel = jnp.asarray(np.asarray(motion_kernel(jax.random.key(3), 5, 0.5)))
  y = jnp.asarray(rng.normal(size=shape), jnp.float32)
  x = np.asarray(C.wiener_deconvolve(y, Blur(shape, kernel, "circular"), nsr))
  # The closed form per frequency, in NumPy: the periodic blur (cross-correlation with the
  # kernel centred at (2, 2)) has DFT H(f) = conj(K(f)); the fluctuation about the mean m
  # is restored as conj(H) (Y - M) / (|H|^2 + nsr).
  emb = np.zeros(shape[:2])
  for a in range(5):
    for b in range(5):
      emb[(a - 2) % shape[0], (b - 2) % shape[1]] += float(kernel[a, b])
  h = np.conj(np.fft.fft2(emb))[:, :, None]
  mean = np.asarray(y, np.float64).mean(axis=(0, 1), keepdims=True)  # A mean = mean (sum 1)
  ref = mean + np.fft.ifft2(np.conj(h) * np.fft.fft2(np.asarray(y, np.float64) - mean,
                                                     axes=(0, 1)) / (np.abs(h) ** 2 + nsr),
                            axes=(0, 1)).real
  np.testing.assert_allclose(x, ref, atol=1e-5)
  # ... which is the Tikhonov solution from the operator's dense matrix.
  np.testing.assert_allclose(x, tikhonov(Blur(shape, kernel, "circular"), y, nsr), atol=1e-5)
  # The gradient (1/f^2) signal model is Tikhonov with the periodic gradient as penalty.
  xg = np.asarray(C.wiener_deconvolve(y, Blur(shape, kernel, "circular"), nsr, spectrum="gradient"))
  a = np.asarray(operator_matrix(Blur(shape, kernel, "circular")), np.float64)
  n = int(np.prod(shape))
  idx = np.arange(n).reshape(shape)
  g = []
  for axis in (0, 1):  # forward differences with wrap-around, per channel
    d = np.zeros((n, n))
    d[idx.ravel(), np.roll(idx, -1, axis=axis).ravel()] += 1.0
    d[idx.ravel(), idx.ravel()] -= 1.0
    g.append(d)
  reg = g[0].T @ g[0] + g[1].T @ g[1]
  r = np.asarray(y, np.float64).ravel() - np.broadcast_to(mean, shape).ravel()
  refg = np.broadcast_to(mean, shape).ravel() + np.linalg.lstsq(a.T @ a + nsr * reg, a.T @ r,
                                                                rcond=None)[0]
  np.testing.assert_allclose(xg, refg.reshape(shape), atol=1e-4)
  # The SVD form (CircularBlur, whatever floor it puts on its singular values) gives the
  # Tikhonov solution of the operator it defines.
  op = CircularBlur(shape, kernel)
  np.testing.assert_allclose(np.asarray(C.wiener_deconvolve(y, op, nsr)), tikhonov(op, y, nsr),
                             atol=1e-4)


def test_wiener_for_separable_blurs_is_the_regularized_inverse():
  op = deblur_gauss((8, 8, 1))
  y = jnp.asarray(np.random.RandomState(1).normal(size=(8, 8, 1)), jnp.float32)
  np.testing.assert_allclose(np.asarray(C.wiener_deconvolve(y, op, 1e-2)),
                             tikhonov(op, y, 1e-2), atol=1e-4)


def test_grad_and_div_are_negative_adjoints():
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.normal(size=(7, 9, 2)), jnp.float32)
  p = jnp.asarray(rng.normal(size=(7, 9, 2, 2)), jnp.float32)
  lhs, rhs = float(jnp.vdot(C.image_grad(x), p)), -float(jnp.vdot(x, C.image_div(p)))
  assert abs(lhs - rhs) <= 1e-5 * np.linalg.norm(np.asarray(p)) * np.linalg.norm(np.asarray(x))


def test_tv_denoising_is_the_identity_as_the_weight_vanishes():
  y = smooth_image((16, 16, 2)) + 0.1 * jax.random.normal(jax.random.key(0), (16, 16, 2))
  np.testing.assert_allclose(np.asarray(C.tv_denoise(y, 0.0, 50)), np.asarray(y), atol=1e-6)
  for w, tol in ((1e-4, 1e-3), (1e-6, 1e-5)):
    assert float(jnp.max(jnp.abs(C.tv_denoise(y, w) - y))) < tol
    d = C.tv_restore(y, Identity(y.shape), w, box=False, x0=y)
    assert float(jnp.max(jnp.abs(d - y))) < 10 * tol


def test_tv_denoising_minimizes_the_rof_objective_as_scikit_image():
  y = smooth_image((16, 16, 2), seed=3) + 0.1 * jax.random.normal(jax.random.key(1), (16, 16, 2))
  w = 0.1
  ours = C.tv_denoise(y, w)
  # scikit-image's Chambolle (2004) projection algorithm for the same objective, run to
  # convergence (its `weight` is our w; per channel).
  ref = denoise_tv_chambolle(np.asarray(y, np.float64), weight=w, eps=1e-10,
                             max_num_iter=5000, channel_axis=-1)
  def f(u):
    return float(C.tv_objective(jnp.asarray(u, jnp.float32), y, w))

  assert f(ours) < f(y) - 0.1 * (f(y) - f(ref))  # the objective goes down ...
  assert f(ours) <= f(ref) * (1 + 1e-4)           # ... to scikit-image's minimum
  assert float(np.max(np.abs(np.asarray(ours) - ref))) < 1e-2
  # the general primal-dual solver with A = I reaches the same minimum
  assert abs(f(C.tv_restore(y, Identity(y.shape), w, 1000, box=False)) - f(ref)) < 1e-3 * f(ref)


def test_tv_deconvolution_decreases_its_objective_and_keeps_the_box():
  x = smooth_image((16, 16, 1), seed=4)
  op = Blur(x.shape, gaussian_kernel(5, 1.0), "reflect")
  y = op.A(x) + 0.02 * jax.random.normal(jax.random.key(2), x.shape)
  w = 0.01
  out = C.tv_restore(y, op, w, x0=y)
  def f(u):
    return float(C.tv_objective(u, y, w, op))

  assert f(out) < f(y) and f(out) < f(jnp.clip(C.wiener_deconvolve(y, op, 0.05), -1, 1))
  assert float(jnp.max(jnp.abs(out))) <= 1.0
  longer = C.tv_restore(y, op, w, 2000, x0=y)
  assert f(out) - f(longer) < 1e-3 * f(longer)  # 300 iterations: converged to 0.1 %


def _beats(name, task, op, x, sigma, baseline=None):
  """PSNR of the method (its per-task preset) and of the degraded input."""
  spec = C.get_method(name)
  assert spec.supports(op), (name, type(op).__name__)
  y = op.A(x)
  y = y + sigma * jax.random.normal(jax.random.key(5), y.shape)
  cfg = spec.config(task, sigma_y=sigma)
  out, info = jax.jit(spec.fn, static_argnums=4)(None, y, op, None, cfg)
  assert int(info.nfe) == 0 and np.isfinite(float(info.residual))
  before = psnr(io.measurement_picture(y, x.shape) if baseline is None else baseline(y), x)
  return psnr(out, x), before


@pytest.mark.parametrize("name,task,sigma", [
    ("bicubic", "sr4", 0.05), ("wiener", "gaussian_deblur", 0.05), ("tv", "gaussian_deblur", 0.05),
    ("tv", "denoise", 0.2), ("tv", "box_inpaint", 0.05), ("tv", "sr4", 0.05)])
def test_each_method_beats_the_degraded_input_on_a_smooth_image(name, task, sigma):
  x = smooth_image((32, 32, 3), seed=6)
  op = {"sr4": BicubicSR(x.shape, 4), "gaussian_deblur": Blur(x.shape, gaussian_kernel(9, 2.0)),
        "denoise": Identity(x.shape),
        "box_inpaint": Inpaint(x.shape, np.pad(np.zeros((8, 8)), 12, constant_values=1))}[task]
  after, before = _beats(name, task, op, x, sigma)
  assert after > before + 1.0, (name, task, after, before)


def test_measurement_row_is_the_clipped_measurement():
  x = smooth_image((32, 32, 1), seed=8)
  op = Blur(x.shape, gaussian_kernel(9, 2.0))
  y = op.A(x) + 0.5 * jax.random.normal(jax.random.key(1), x.shape)
  spec = C.get_method("measurement")
  out, info = spec.fn(None, y, NonBlind(op), None, spec.config("gaussian_deblur"))
  np.testing.assert_array_equal(np.asarray(out), np.clip(np.asarray(y), -1, 1))
  assert int(info.nfe) == 0
  np.testing.assert_allclose(float(info.residual), float(jnp.linalg.norm(op.A(out) - y)),
                             rtol=1e-5)


def test_bm3d_row_is_optional():
  spec = C.get_method("bm3d")
  op = Identity((32, 32, 1))
  if not C.bm3d_available():  # the package is not a dependency: the row reports itself off
    assert not spec.supports(op) and not spec.available()
    with pytest.raises(ConfigError, match="pip install bm3d"):
      C.bm3d_denoise(jnp.zeros((32, 32, 1)), 0.1)
  else:
    x = smooth_image((32, 32, 1), seed=7)
    after, before = _beats("bm3d", "denoise", op, x, 0.2)
    assert after > before + 1.0


def test_which_operators_each_method_takes():
  s = (32, 32, 1)
  blur = Blur(s, gaussian_kernel(5, 1.0))
  sr = BicubicSR(s, 4)
  cases = {
      "bicubic": [(sr, True), (AvgPoolSR(s, 4), True), (NonBlind(AvgPoolSR(s, 8)), True),
                  (BlindSR(s, mlp_kernel(jax.random.key(0), 7), 4), True), (blur, False)],
      "wiener": [(blur, True), (CircularBlur(s, gaussian_kernel(5, 1.0)), True),
                 (deblur_gauss(s), True), (NonBlind(blur), True), (sr, False),
                 (BlindBlur(s, mlp_kernel(jax.random.key(0), 7)), False)],
      "tv": [(blur, True), (sr, True), (Identity(s), True), (PhaseRetrieval(s), False),
             (BlindBlur(s, mlp_kernel(jax.random.key(0), 7)), False)],
      "measurement": [(blur, True), (NonBlind(blur), True), (Identity(s), True),
                      (BlindBlur(s, mlp_kernel(jax.random.key(0), 7)), True),
                      (Inpaint(s, np.ones(s[:2])), True), (sr, False), (PhaseRetrieval(s), False),
                      (BlindSR(s, mlp_kernel(jax.random.key(0), 7), 4), False)],
  }
  for name, items in cases.items():
    for op, want in items:
      assert C.get_method(name).supports(op) is want, (name, type(op).__name__)
  with pytest.raises(ConfigError, match="unknown classical method"):
    C.get_method("nope")
  with pytest.raises(ConfigError, match="no field 'bogus'"):
    C.get_method("tv").config("denoise", overrides=["bogus=1"])
  # parameters follow the task and its noise (documented rules)
  assert C.get_method("tv").config("denoise", sigma_y=0.2).weight == pytest.approx(0.16)
  cfg = C.get_method("wiener").config("gaussian_deblur")
  assert cfg.nsr == pytest.approx(30 * 0.05**2 + 1e-3) and cfg.spectrum == "gradient"
  assert C.get_method("wiener").config("gaussian_deblur", prior="mnist32").nsr == pytest.approx(
      3 * 0.05**2 + 1e-3)
  assert C.get_method("wiener").config("deblur_gauss").spectrum == "flat"


def test_vmap_over_images_and_operators_equals_a_loop():
  xs = jnp.stack([smooth_image((16, 16, 1), seed=s) for s in range(3)])
  ops = [Blur((16, 16, 1), gaussian_kernel(5, 0.5 + s)) for s in range(3)]
  ys = jnp.stack([op.A(x) for op, x in zip(ops, xs)])
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *ops)
  for name in ("wiener", "tv"):
    spec = C.get_method(name)
    cfg = spec.config("gaussian_deblur", sigma_y=0.05)
    batch, _ = jax.jit(jax.vmap(spec.fn, in_axes=(None, 0, 0, None, None)),
                       static_argnums=4)(None, ys, stacked, None, cfg)
    loop = jnp.stack([spec.fn(None, y, op, None, cfg)[0] for y, op in zip(ys, ops)])
    np.testing.assert_allclose(np.asarray(batch), np.asarray(loop), atol=1e-5)
