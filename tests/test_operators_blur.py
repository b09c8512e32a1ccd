"""Blur, circular blur, kernels, phase retrieval and noise against DPS and scipy/torch."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from PIL import Image, ImageDraw, ImageFilter

from jaxir.errors import ConfigError, KernelError, ShapeError
from jaxir.operators import adjoint_error
from jaxir.operators.blur import Blur, CircularBlur, gaussian_blur, motion_blur
from jaxir.operators.kernels import (gaussian_kernel, kernel_from_logits,
                                     kernel_to_logits, motion_kernel,
                                     motion_trajectory, trajectory_kernel,
                                     validate_kernel)
from jaxir.operators.noise import gaussian_noise, poisson_noise
from jaxir.operators.phase_retrieval import PhaseRetrieval
from references import FIXTURES

FIX = f"{FIXTURES}/operators/dps_operators.npz"
SHAPE = (32, 24, 3)  # non-square, to catch H/W mix-ups
SCIPY_MODE = {"reflect": "mirror", "zeros": "constant", "circular": "wrap"}


@pytest.fixture(scope="module")
def dps():
  return np.load(FIX)


def _nhwc(a):
  return jnp.asarray(a.transpose(0, 2, 3, 1))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def _kernel(seed, size=7):
  """A random asymmetric non-negative kernel (mass 0.5 at the centre)."""
  k = np.random.default_rng(seed).uniform(size=(size, size))
  k = 0.5 * k / k.sum()
  k[size // 2, size // 2] += 0.5
  return jnp.asarray(k, jnp.float32)


def _image(seed, shape=SHAPE):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


# ----------------------------------------------------------------- kernels

def test_gaussian_kernel_matches_dps_fixture_and_scipy(dps):
  np.testing.assert_array_equal(np.asarray(gaussian_kernel(61, 3.0)), dps["gauss_kernel"])
  for size, sigma in [(9, 1.5), (7, 3.0), (21, 10.0), (5, 0.0)]:  # incl. folded tails
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    ref = ndi.gaussian_filter(delta, sigma).astype(np.float32)
    np.testing.assert_allclose(np.asarray(gaussian_kernel(size, sigma)), ref,
                               rtol=0, atol=1e-7)


def test_validate_kernel_errors():
  good = gaussian_kernel(7, 1.0)
  assert validate_kernel(good) is good
  bad = {"even": jnp.ones((8, 8)) / 64, "non-square": jnp.ones((7, 5)) / 35,
         "negative": good.at[0, 0].set(-0.1).at[3, 3].add(0.1),
         "sum": 2.0 * good, "nan": good.at[1, 1].set(jnp.nan), "rank": jnp.ones(9) / 9}
  for name, k in bad.items():
    with pytest.raises(KernelError):
      validate_kernel(k, name=name)
  with pytest.raises(KernelError):
    gaussian_kernel(60, 3.0)
  with pytest.raises(KernelError):
    Blur(SHAPE, jnp.ones((8, 8)) / 64)
  with pytest.raises(KernelError):
    CircularBlur(SHAPE, jnp.ones((6, 6)) / 36)
  with pytest.raises(KernelError):  # reflection needs pad < image side
    Blur((8, 8, 1), jnp.ones((17, 17)) / 289)
  with pytest.raises(ConfigError):
    Blur(SHAPE, good, "mirror")
  with pytest.raises(ShapeError):
    Blur(SHAPE, good).A(jnp.zeros((24, 32, 3)))


def test_kernel_from_logits_is_a_differentiable_psf():
  logits = jax.random.normal(jax.random.key(0), (5, 5))
  k = kernel_from_logits(logits)
  validate_kernel(k, atol=1e-5)
  assert bool(jnp.all(k > 0))
  np.testing.assert_allclose(kernel_from_logits(logits.reshape(-1)), k, rtol=1e-6)
  target = _kernel(1, 5)
  np.testing.assert_allclose(kernel_from_logits(kernel_to_logits(target)), target,
                             atol=1e-6)
  with pytest.raises(KernelError):
    kernel_from_logits(jnp.zeros(24))
  # Softmax Jacobian in closed form: dk_i/dz_j = k_i (delta_ij - k_j).
  v = jax.random.normal(jax.random.key(1), (5, 5))
  _, jvp = jax.jit(lambda z, t: jax.jvp(kernel_from_logits, (z,), (t,)))(logits, v)
  np.testing.assert_allclose(jvp, k * (v - jnp.sum(k * v)), atol=1e-6)


def _pil_kernel(path, size):
  """motionblur's rendering with PIL: line, GaussianBlur, Lanczos resize, L."""
  big = 2 * size
  diag = math.hypot(big, big)
  img = Image.new("RGB", (big, big))
  ImageDraw.Draw(img).line(xy=[(p.real, p.imag) for p in path], width=int(diag / 150))
  img = img.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01)))
  img = img.resize((size, size), resample=Image.LANCZOS).convert("L")
  k = np.asarray(img, np.float64)
  return k / k.sum()


def test_motion_kernel_reproducible_valid_and_rendered_like_pil(dps):
  k1 = motion_kernel(jax.random.key(7))
  k2 = motion_kernel(jax.random.key(7))
  k3 = motion_kernel(jax.random.key(8))
  assert k1.shape == dps["motion_kernel"].shape
  np.testing.assert_array_equal(k1, k2)
  assert float(jnp.abs(k1 - k3).max()) > 1e-3
  for k in (k1, k3, motion_kernel(jax.random.key(9), 15, 1.0)):
    assert float(k.min()) >= 0.0
    validate_kernel(k, atol=1e-5)
  # Rendering of the same path by upstream's PIL pipeline: PIL rounds to 8 bits
  # after every stage, we once at the end, so they agree to about 2% in L1.
  for seed in range(3):
    path = motion_trajectory(jax.random.key(seed), 61, 0.5)
    ours = np.asarray(trajectory_kernel(path, 61), np.float64)
    assert np.abs(ours - _pil_kernel(path, 61)).sum() < 0.03


def test_motion_trajectory_statistics():
  # intensity 0: every angle is 0, so the path is a straight segment.
  path = motion_trajectory(jax.random.key(0), 61, 0.0)
  pts = np.stack([path.real, path.imag], 1)
  sv = np.linalg.svd(pts - pts.mean(0), compute_uv=False)
  assert sv[1] < 1e-9 * max(sv[0], 1.0)
  # Path length law: sum of steps reaches L = 0.75 D (U(0,1) + U(0, I^2)),
  # overshooting by less than one step (mean 1.1 * (1 - I) D / 31 <~ 0.02 D).
  # The first step is not visible in the path, so compare within 0.05 D.
  size, inten = 61, 0.5
  diag = math.hypot(2 * size, 2 * size)
  lengths = [np.abs(np.diff(motion_trajectory(jax.random.key(s), size, inten))).sum()
             for s in range(200)]
  expected = 0.75 * (0.5 + inten**2 / 2)
  assert abs(np.mean(lengths) / diag - expected) < 0.05
  # The mean of the path points sits at the kernel centre.
  np.testing.assert_allclose(np.mean(motion_trajectory(jax.random.key(3), size, inten)),
                             size + 1j * size, atol=1e-9)


# ----------------------------------------------------------------- blur

def test_blur_matches_dps_fixtures(dps):
  x = _nhwc(dps["x256"])
  blur = jax.jit(jax.vmap(lambda op, im: op.A(im), (None, 0)))
  for kname, yname in [("gauss_kernel", "gauss_256"), ("motion_kernel", "motion_256")]:
    op = Blur((256, 256, 3), jnp.asarray(dps[kname]))
    assert _rel(blur(op, x), _nhwc(dps[yname])) < 1e-5
  # The convenience constructor builds the same operator.
  np.testing.assert_array_equal(gaussian_blur((256, 256, 3)).kernel, dps["gauss_kernel"])


@pytest.mark.parametrize("padding", ["reflect", "zeros", "circular"])
def test_blur_matches_scipy(padding):
  k = np.asarray(_kernel(0))
  x = np.asarray(_image(1))
  y = Blur(SHAPE, jnp.asarray(k), padding).A(jnp.asarray(x))
  ref = np.stack([ndi.correlate(x[..., c].astype(np.float64), k.astype(np.float64),
                                mode=SCIPY_MODE[padding]) for c in range(3)], -1)
  assert _rel(y, ref) < 1e-5
  if padding != "reflect":  # adjoint = convolution with the same border
    op = Blur(SHAPE, jnp.asarray(k), padding)
    ref_t = np.stack([ndi.convolve(x[..., c].astype(np.float64), k.astype(np.float64),
                                   mode=SCIPY_MODE[padding]) for c in range(3)], -1)
    assert _rel(op.AT(jnp.asarray(x)), ref_t) < 1e-5


def test_blur_reflect_matches_torch_dps_layer():
  """DPS Blurkernel: ReflectionPad2d(k // 2) then grouped Conv2d (no flip)."""
  k = np.asarray(_kernel(2, 9))
  x = np.asarray(_image(3))
  xt = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
  w = torch.from_numpy(np.repeat(k[None, None], 3, 0))
  ref = torch.nn.functional.conv2d(torch.nn.ReflectionPad2d(4)(xt), w, groups=3)
  ref = ref[0].numpy().transpose(1, 2, 0)
  assert _rel(Blur(SHAPE, jnp.asarray(k)).A(jnp.asarray(x)), ref) < 1e-5


def test_adjoint_dot_product():
  k = _kernel(4)
  big = jax.random.normal(jax.random.key(2), (33, 33))  # wraps around a 32x24 grid
  ops = [Blur(SHAPE, k, p) for p in ("reflect", "zeros", "constant", "circular")]
  ops += [CircularBlur(SHAPE, k), Blur(SHAPE, big, "zeros"), CircularBlur(SHAPE, big)]
  errs = jax.jit(lambda key: jnp.stack([adjoint_error(op, key) for op in ops]))(
      jax.random.key(0))
  assert float(errs.max()) <= 1e-5, errs


def test_circular_blur_svd():
  k = _kernel(5)  # centre mass 0.5 dominates: |K_hat| >= 0.5 (1 - max_f!=0 |R_hat|) > 0
  op = CircularBlur(SHAPE, k)
  x, y = _image(6), _image(7)
  U, UT, s, V, VT = op.svd()
  n = math.prod(SHAPE)
  assert s.shape == (n,) and float(s.min()) >= 0.0
  # Orthonormal bases: norms preserved, V VT = I, U UT = I on real images.
  np.testing.assert_allclose(jnp.linalg.norm(VT(x)), jnp.linalg.norm(x), rtol=1e-5)
  np.testing.assert_allclose(V(VT(x)), x, atol=1e-5)
  np.testing.assert_allclose(U(UT(y)), y, atol=1e-5)
  # U diag(s) VT is circular correlation (scipy 'wrap'), and so is Blur circular.
  ref = np.stack([ndi.correlate(np.asarray(x[..., c], np.float64), np.asarray(k, np.float64),
                                mode="wrap") for c in range(3)], -1)
  assert _rel(U(s * VT(x)), ref) < 1e-5
  assert _rel(Blur(SHAPE, k, "circular").A(x), ref) < 1e-5
  # Singular values are |DFT| of the wrapped kernel (numpy reference).
  emb = np.zeros(SHAPE[:2])
  for a in range(7):
    for b in range(7):
      emb[(a - 3) % SHAPE[0], (b - 3) % SHAPE[1]] += float(k[a, b])
  ref_s = np.repeat(np.abs(np.fft.fft2(emb))[:, :, None], 3, 2).reshape(-1)
  np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-6)
  # Closed-form pseudo-inverse for a kernel with no spectral zero.
  assert float(s.min()) > 1e-2
  np.testing.assert_allclose(op.A(op.pinv(y)), y, atol=1e-4)
  np.testing.assert_allclose(op.pinv(op.A(x)), x, atol=1e-4)


def test_vmap_and_jit():
  xs = jnp.stack([_image(s) for s in range(3)])
  for op in (Blur(SHAPE, _kernel(8)), CircularBlur(SHAPE, _kernel(8))):
    loop = jnp.stack([op.A(x) for x in xs])
    np.testing.assert_allclose(jax.vmap(op.A)(xs), loop, atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda o, x: o.A(x))(op, xs[0]), loop[0], atol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda o, x: o.AT(x))(op, xs[1]), op.AT(xs[1]),
                               atol=1e-6)


@pytest.mark.parametrize("cls", [Blur, CircularBlur])
def test_grad_wrt_kernel_matches_finite_differences(cls):
  """Blind family: op.replace(kernel=k) inside the loss, d/dk by autodiff."""
  shape = (16, 12, 3)
  x, y = _image(9, shape), _image(10, shape)
  op = cls(shape, _kernel(11, 5))

  def loss(k):
    return 0.5 * jnp.sum((op.replace(kernel=k).A(x) - y) ** 2)

  k0 = _kernel(12, 5)
  eps = 1e-2  # the loss is quadratic in k, so central differences are exact
  vs = jax.random.normal(jax.random.key(0), (3,) + k0.shape)

  @jax.jit
  def directional(k, v):
    fd = (loss(k + eps * v) - loss(k - eps * v)) / (2 * eps)
    return jnp.vdot(jax.grad(loss)(k), v), fd

  for v in vs:
    ad, fd = directional(k0, v)
    np.testing.assert_allclose(ad, fd, rtol=2e-3)


def test_motion_blur_constructor():
  op = motion_blur(jax.random.key(5), SHAPE, size=15, intensity=0.5)
  np.testing.assert_array_equal(op.kernel, motion_kernel(jax.random.key(5), 15, 0.5))
  assert op.A(_image(0)).shape == SHAPE


# ----------------------------------------------------------------- phase retrieval

def test_phase_retrieval_matches_dps_fixture(dps):
  x = _nhwc(dps["x256"])
  op = PhaseRetrieval((256, 256, 3), oversample=2.0)
  assert op.out_shape == (384, 384, 3)
  assert _rel(jax.jit(jax.vmap(op.A))(x), _nhwc(dps["pr_256"])) < 1e-5


def test_phase_retrieval_odd_size_matches_fastmri_shifts():
  """Odd sizes: ifftshift rolls by (n + 1) // 2, fftshift by n // 2 (fastMRI)."""
  x = np.asarray(_image(0, (15, 13, 2)))
  op = PhaseRetrieval((15, 13, 2), oversample=2.0)
  ph, pw = int(2.0 / 8 * 15), int(2.0 / 8 * 13)
  xt = torch.nn.functional.pad(torch.from_numpy(x.transpose(2, 0, 1).copy()), (pw, pw, ph, ph))
  h, w = xt.shape[-2:]
  z = torch.roll(xt.to(torch.complex128), ((h + 1) // 2, (w + 1) // 2), (-2, -1))
  z = torch.fft.fftn(z, dim=(-2, -1), norm="ortho")
  z = torch.roll(z, (h // 2, w // 2), (-2, -1)).abs().numpy().transpose(1, 2, 0)
  assert _rel(jax.jit(op.A)(jnp.asarray(x)), z) < 1e-5
  g = jax.jit(jax.grad(lambda v: jnp.sum(op.A(v))))(jnp.zeros((15, 13, 2)))
  assert bool(jnp.all(jnp.isfinite(g)))


# ----------------------------------------------------------------- noise

def test_gaussian_noise():
  y = jnp.zeros((64, 64, 3))
  n1 = gaussian_noise(jax.random.key(0), y, 0.05)
  np.testing.assert_array_equal(n1, gaussian_noise(jax.random.key(0), y, 0.05))
  assert not np.array_equal(n1, gaussian_noise(jax.random.key(1), y, 0.05))
  assert abs(float(jnp.std(n1)) / 0.05 - 1) < 0.03
  with pytest.raises(ConfigError):
    gaussian_noise(jax.random.key(0), y, -1.0)


def test_poisson_noise_follows_dps_convention():
  # y = 0 -> y01 = 0.5, N ~ Poisson(127.5 * rate), out = 2 N / (255 rate) - 1:
  # mean 0, variance 2 / (255 rate); clipping at +-1 is far in the tails.
  y = jnp.zeros((64, 64, 3))
  noise = jax.jit(poisson_noise)
  for rate in (1.0, 4.0):
    out = noise(jax.random.key(0), y, rate)
    np.testing.assert_array_equal(out, noise(jax.random.key(0), y, rate))
    var = 2.0 / (255.0 * rate)
    assert abs(float(jnp.mean(out))) < 5 * math.sqrt(var / out.size)
    assert abs(float(jnp.var(out)) / var - 1) < 0.05
    # Values lie on the lattice 2 n / (255 rate) - 1.
    n = (np.asarray(out, np.float64) + 1) * 255.0 * rate / 2
    np.testing.assert_allclose(n, np.round(n), atol=1e-3)
  # Out-of-range inputs are clipped first: y <= -1 gives exactly -1 (no photons).
  out = noise(jax.random.key(1), jnp.full((64, 64, 3), -1.5), 1.0)
  np.testing.assert_array_equal(out, -1.0)
  with pytest.raises(ConfigError):
    poisson_noise(jax.random.key(0), y, 0.0)
