"""Blind degradations against independent references.

References used here, none of them the code under test:
  * PyTorch: the official kernel MLP built as `utils.fcn` does (nn.Sequential of
    Linear, ReLU6, Linear, Softmax) and `F.conv2d(..., padding="same")`;
  * scipy.ndimage.correlate with zero padding (blur, then decimation by slicing);
  * closed forms: the isotropic Gaussian, the principal axis of a line, the
    maximum-likelihood noise level (RMS residual), nn.Linear's init bounds;
  * the dot-product (adjoint) test, vmap against a loop, jit against no-jit.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import torch

from jaxir.errors import ConfigError, KernelError, ShapeError
from jaxir.operators.base import adjoint_error
from jaxir.operators.blind import (BlindBlur, BlindDenoise, BlindSR, BlurDecimate, GaussianKernel,
                                   LinearMotionKernel, LogitsKernel, MLPKernel, NonBlind,
                                   mlp_eta_from_torch, mlp_kernel)
from jaxir.operators.blur import Blur
from jaxir.operators.kernels import gaussian_kernel

SHAPE = (16, 16, 3)
K = 7


def families():
  return {"mlp": mlp_kernel(jax.random.key(3), K, hidden=64),
          "logits": LogitsKernel(K),
          "gauss": GaussianKernel(K, init_sigma=1.3),
          "motion": LinearMotionKernel(K, init_length=0.6)}


def degradations():
  out = {f"blur-{n}": BlindBlur(SHAPE, f) for n, f in families().items()}
  out |= {f"sr2-{n}": BlindSR(SHAPE, f, 2) for n, f in families().items()}
  out["nonblind-blur"] = NonBlind(Blur(SHAPE, gaussian_kernel(K, 1.0), "zeros"))
  out["denoise"] = BlindDenoise(SHAPE, 0.2)
  return out


@jax.jit
def perturbed(eta, key, scale=0.3):
  """eta moved off its initial value, so tests see a non-trivial kernel."""
  leaves, tree = jax.tree.flatten(eta)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape) * (
      1.0 if a.ndim == 0 else jnp.std(a) + 1.0) for a, k in zip(leaves, keys)])


@pytest.mark.parametrize("name", list(families()))
def test_kernels_are_psfs(name):
  fam = families()[name]
  kernel = jax.jit(lambda key, i: fam.kernel(perturbed(fam.init(key), key, 0.3 * i)))
  for i in range(3):
    k = np.asarray(kernel(jax.random.key(i), i), np.float64)
    assert k.shape == (K, K)
    assert k.min() >= 0.0 and abs(k.sum() - 1.0) < 1e-5


@pytest.mark.parametrize("name", list(degradations()))
def test_operator_adjoint_and_shapes(name):
  deg = degradations()[name]
  eta = perturbed(deg.init(jax.random.key(0)), jax.random.key(1))
  op = deg.operator(eta)
  assert tuple(op.in_shape) == SHAPE
  want = (8, 8, 3) if name.startswith("sr2") else SHAPE
  assert tuple(op.out_shape) == want
  assert float(adjoint_error(op, jax.random.key(2))) <= 1e-5


@pytest.mark.parametrize("name", list(degradations()))
def test_vmap_over_eta_equals_loop_and_jit(name):
  deg = degradations()[name]
  etas = [perturbed(deg.init(jax.random.key(i)), jax.random.key(5 + i)) for i in range(3)]
  x = jax.random.uniform(jax.random.key(9), (3,) + SHAPE, minval=-1, maxval=1)
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *etas)
  apply = lambda e, xi: deg.operator(e).A(xi)
  batched = jax.jit(jax.vmap(apply))(stacked, x)
  for i in range(3):
    np.testing.assert_allclose(batched[i], apply(etas[i], x[i]), rtol=1e-5, atol=1e-6)
  if deg.kernel(etas[0]) is not None and jax.tree.leaves(etas[0]):
    ks = jax.vmap(deg.kernel)(stacked)
    for i in range(3):
      np.testing.assert_allclose(ks[i], deg.kernel(etas[i]), rtol=1e-5, atol=1e-7)


def test_vmap_over_degradations_with_own_codes():
  """Each image's MLP code is a leaf: a stack of degradations vmaps like a loop."""
  degs = [BlindBlur(SHAPE, mlp_kernel(jax.random.key(i), K, hidden=32)) for i in range(2)]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *degs)
  keys = jax.random.split(jax.random.key(0), 2)
  ks = jax.vmap(lambda d, k: d.kernel(d.init(k)))(stacked, keys)
  for i in range(2):
    np.testing.assert_allclose(ks[i], degs[i].kernel(degs[i].init(keys[i])), rtol=1e-5, atol=1e-8)


def test_mlp_matches_official_torch_fcn():
  """Kernel = the official fcn's output (nn.Sequential) with the same weights, reshaped."""
  torch.manual_seed(0)
  size, hidden = 9, 100
  net = torch.nn.Sequential(torch.nn.Linear(200, hidden), torch.nn.ReLU6(),
                            torch.nn.Linear(hidden, size * size), torch.nn.Softmax(dim=0))
  code = torch.rand(200) * 0.1
  with torch.no_grad():
    net[0].bias.add_(2.0)  # make the ReLU6 cap active on some units
    want = net(code).view(size, size).numpy()
  eta = mlp_eta_from_torch(net.state_dict())
  fam = MLPKernel(code=jnp.asarray(code.numpy()), size=size, hidden=hidden)
  np.testing.assert_allclose(fam.kernel(eta), want, rtol=2e-5, atol=1e-8)
  with pytest.raises(KernelError, match="lacks"):
    mlp_eta_from_torch({"0.weight": np.zeros((2, 2))})


def test_mlp_init_follows_torch_linear_conventions():
  fam = mlp_kernel(jax.random.key(0), 41)
  code = np.asarray(fam.code)
  assert code.shape == (200,) and code.min() >= 0 and code.max() < 0.1
  eta = fam.init(jax.random.key(1))
  shapes = {"w1": (1000, 200), "b1": (1000,), "w2": (41 * 41, 1000), "b2": (41 * 41,)}
  fan_in = {"w1": 200, "b1": 200, "w2": 1000, "b2": 1000}
  for name, shape in shapes.items():
    a = np.asarray(eta[name], np.float64)
    bound = 1.0 / math.sqrt(fan_in[name])
    assert a.shape == shape and np.abs(a).max() <= bound
    assert abs(a.std() - bound / math.sqrt(3.0)) < 0.1 * bound  # uniform on [-b, b]
  # As torch's init, the first kernel is close to uniform.
  k = np.asarray(fam.kernel(eta))
  assert k.max() / k.min() < 2.0


def test_blindblur_is_official_same_conv():
  """operator(eta).A equals per-channel F.conv2d(..., padding='same') (zero pad, no flip)."""
  fam = LogitsKernel(K)
  eta = jax.random.normal(jax.random.key(0), (K, K))
  x = np.asarray(jax.random.uniform(jax.random.key(1), SHAPE, minval=-1, maxval=1))
  k = np.asarray(fam.kernel(eta))
  xt = torch.from_numpy(np.transpose(x, (2, 0, 1))[:, None].copy())
  want = torch.nn.functional.conv2d(xt, torch.from_numpy(k.copy())[None, None], padding="same")
  want = np.transpose(want[:, 0].numpy(), (1, 2, 0))
  got = BlindBlur(SHAPE, fam).operator(eta).A(jnp.asarray(x))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def test_blur_decimate_against_scipy():
  kern = np.asarray(LinearMotionKernel(K).kernel({"length": 0.7, "angle": 0.4}))
  x = np.asarray(jax.random.normal(jax.random.key(0), SHAPE))
  full = np.stack([scipy.ndimage.correlate(x[..., c].astype(np.float64), kern, mode="constant")
                   for c in range(3)], -1)
  for s in (1, 2, 4):
    got = BlurDecimate(SHAPE, jnp.asarray(kern), s).A(jnp.asarray(x))
    np.testing.assert_allclose(got, full[::s, ::s], rtol=1e-5, atol=1e-5)
  with pytest.raises(ShapeError, match="divisible"):
    BlurDecimate(SHAPE, jnp.asarray(kern), 3)


def test_gaussian_family_closed_form():
  sigma = 1.7
  k = np.asarray(GaussianKernel(K).kernel({"log_sigma": jnp.log(sigma)}), np.float64)
  r = np.arange(K) - K // 2
  g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
  np.testing.assert_allclose(k, g / g.sum(), rtol=1e-5)
  # Gradient reaches sigma (the family is differentiable).
  grad = jax.grad(lambda e: GaussianKernel(K).kernel(e)[K // 2, K // 2])({"log_sigma": 0.0})
  assert float(grad["log_sigma"]) < 0


@pytest.mark.parametrize("angle", [0.0, 0.5, 1.2, 2.6])
def test_motion_family_principal_axis(angle):
  """The second moments of the rendered line point along `angle` (rows pointing down)."""
  fam = LinearMotionKernel(15)
  k = np.asarray(fam.kernel({"length": 0.8, "angle": angle}), np.float64)
  r = np.arange(15) - 7
  cols, rows = np.meshgrid(r, r)
  up = -rows
  m = np.array([[np.sum(k * cols * cols), np.sum(k * cols * up)],
                [np.sum(k * cols * up), np.sum(k * up * up)]])
  w, v = np.linalg.eigh(m)
  axis = v[:, 1]
  est = math.atan2(axis[1], axis[0]) % math.pi
  assert min(abs(est - angle % math.pi), math.pi - abs(est - angle % math.pi)) < 0.05
  assert abs(np.sum(k * cols)) < 1e-4 and abs(np.sum(k * rows)) < 1e-4  # centred
  # A length-12 line: variance along it (12^2 / 12 = 12) plus the splat's 0.25.
  assert abs(w[1] - ((0.8 * 15) ** 2 / 12 * (1 + 2 / 30) + 0.25)) < 0.6


def test_nonblind_is_degenerate():
  op = Blur(SHAPE, gaussian_kernel(K, 1.0), "zeros")
  deg = NonBlind(op)
  eta = deg.init(jax.random.key(0))
  assert jax.tree.leaves(eta) == []
  assert deg.operator(eta) is op
  np.testing.assert_array_equal(deg.kernel(eta), op.kernel)


def test_blind_denoise_sigma_is_rms_residual():
  deg = BlindDenoise(SHAPE, 0.1)
  x = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  y = x + 0.07 * jax.random.normal(jax.random.key(1), SHAPE)
  rms = float(jnp.sqrt(jnp.mean((x - y) ** 2)))
  g = jax.grad(lambda e: deg.loss(e, x, y))({"log_sigma": jnp.log(rms)})
  assert abs(float(g["log_sigma"])) < 1e-5
  g_lo = jax.grad(lambda e: deg.loss(e, x, y))({"log_sigma": jnp.log(0.5 * rms)})
  assert float(g_lo["log_sigma"]) < 0  # pushes sigma up towards the RMS


def test_bad_inputs_raise_named_errors():
  with pytest.raises(KernelError, match="odd"):
    mlp_kernel(jax.random.key(0), 8)
  with pytest.raises(KernelError, match="odd"):
    LogitsKernel(4).init(jax.random.key(0))
  with pytest.raises(ShapeError, match="H, W, C"):
    BlindBlur((16, 16), LogitsKernel(3))
  with pytest.raises(ConfigError, match="init_sigma"):
    GaussianKernel(3, init_sigma=0.0).init(jax.random.key(0))
  with pytest.raises(ConfigError, match="init_sigma"):
    BlindDenoise(SHAPE, -1.0)
