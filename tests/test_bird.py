"""BIRD against the official code's recorded iterations and against closed forms.

References used here, none of them the code under test:
  * `../shared/fixtures/bird/bird_blind_deblur.npz`: the official BIRD code
    (hamadichihaoui/BIRD) run step by step with the upstream `ddpm_tiny_a` U-Net;
  * the official configs' values and timesteps (`configs/*.yml`, diffusers'
    `DDIMScheduler.set_timesteps`);
  * closed forms on a Gaussian prior (eps linear in x, no clipping active):
    g is affine, the official gradient path gives dg/dz = sqrt(1 / abar_first) I,
    and the full path equals finite differences;
  * vmap against a loop; the lowest recorded loss for best-loss selection.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import FIXTURES, ddpm_tiny_prior, nhwc, rel_err
from jaxir.diffusion import get_schedule
from jaxir.errors import ConfigError, ShapeError
from jaxir.operators.blind import (BlindBlur, LogitsKernel, MLPKernel, NonBlind, mlp_eta_from_torch,
                                   mlp_kernel)
from jaxir.operators.blur import Blur
from jaxir.operators.kernels import gaussian_kernel
from jaxir.priors.analytic import gaussian_prior, sample_prior
from jaxir.solvers import bird as bird_mod
from jaxir.solvers.bird import (BIRD_PRESETS, BIRDConfig, bird, bird_init, bird_nfe, bird_preset,
                                bird_step, bird_timesteps, generate)

FIX = str(FIXTURES)


@pytest.fixture(scope="module")
def ddpm_prior():
  return ddpm_tiny_prior()


def gauss_prior(h, c=1, std=0.2, length=2.0):
  """A correlated Gaussian prior on (h, h, c) images: clipping to [-1, 1] hardly acts."""
  ii, jj = np.meshgrid(np.arange(h), np.arange(h), indexing="ij")
  p = np.stack([ii.ravel(), jj.ravel()], 1)
  d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
  cov = std ** 2 * np.exp(-d2 / (2 * length ** 2)) + 1e-4 * np.eye(h * h)
  return gaussian_prior(np.zeros((h, h, c), np.float32), np.kron(cov, np.eye(c)))


# ---------------------------------------------------------------- fixture

def test_fixture_settings():
  d = np.load(f"{FIX}/bird/bird_blind_deblur.npz")
  np.testing.assert_array_equal(bird_timesteps(int(d["delta_t"]))[::-1], d["timesteps"])
  p = BIRD_PRESETS["blind_deblur"]
  assert (p.lr_z, p.lr_eta, p.delta_t) == (float(d["lr_z"]), float(d["lr_k"]), int(d["delta_t"]))


def test_fixture_step_by_step(ddpm_prior):
  """From the recorded z0 and MLP weights, every iteration's g(z), kernel, loss and z."""
  d = np.load(f"{FIX}/bird/bird_blind_deblur.npz")
  k = int(d["kernel_size"])
  deg = BlindBlur((32, 32, 3), MLPKernel(code=jnp.asarray(d["code"]), size=k, hidden=1000))
  eta = mlp_eta_from_torch({n[5:].replace("_", "."): d[n] for n in d.files
                            if n.startswith("mlp0_")})
  config = bird_preset("blind_deblur", iterations=3)
  y = jnp.asarray(nhwc(d["y"])[0])
  state = bird_init(jnp.asarray(nhwc(d["z0"])[0]), eta, config, deg)
  step = jax.jit(lambda s: bird_step(s, y, deg, ddpm_prior, config))
  radius = math.sqrt(32 * 32 * 3)
  for i in range(3):
    kern = deg.kernel(state.eta)
    state, loss, x0 = step(state)
    # g(z): ten clipped float32 DDIM steps; a 1e-6 change of eps moves the clipped
    # chain by ~5e-5 (see test_ddpm), hence 3e-4. The rest is at float32 rounding.
    assert rel_err(x0, nhwc(d["x0_hat"][i])[0]) <= 3e-4, i
    assert rel_err(kern, d["kernel"][i]) <= 2e-6, i
    assert abs(float(loss) - d["loss"][i]) <= 2e-6 * d["loss"][i], i
    assert rel_err(state.z, nhwc(d["z_after"][i])[0]) <= 2e-6, i
    assert abs(float(jnp.linalg.norm(state.z)) - radius) <= 1e-5 * radius
    assert abs(float(np.linalg.norm(d["z_after"][i])) - radius) <= 1e-5 * radius


# ---------------------------------------------------------------- closed forms

def test_timesteps_presets_and_nfe():
  np.testing.assert_array_equal(bird_timesteps(100), np.arange(10) * 100)
  np.testing.assert_array_equal(bird_timesteps(50), np.arange(20) * 50)
  np.testing.assert_array_equal(bird_timesteps(200), [0, 200, 400, 600, 800])
  np.testing.assert_array_equal(bird_timesteps(250), [0, 250, 500, 750])
  np.testing.assert_array_equal(bird_timesteps(300), [0, 333, 666])  # T // n spacing
  official = {"blind_deblur": (100, 0.003), "denoise": (200, 0.01), "inpaint": (200, 0.01),
              "sr8": (100, 0.001), "non_uniform_deblur": (25, 0.002), "paper": (200, 0.003)}
  for name, (n, lr) in official.items():
    p = bird_preset(name)
    assert (p.iterations, p.lr_z, p.delta_t, p.grad_through_unet) == (n, lr, 100, False)
  assert bird_nfe(bird_preset("blind_deblur")) == 101 * 10
  assert bird_preset("blind_deblur", iterations=7).iterations == 7
  with pytest.raises(ConfigError, match="unknown BIRD preset"):
    bird_preset("nope")
  with pytest.raises(ConfigError, match="iterations"):
    BIRDConfig(iterations=0)


def test_gradient_paths_closed_form():
  """Gaussian prior, no clipping: official path dg/dz = sqrt(1/abar_900); full path = FD."""
  prior = gauss_prior(6)
  z = jax.random.normal(jax.random.key(0), (6, 6, 1))
  v = jax.random.normal(jax.random.key(1), (6, 6, 1))
  off = BIRDConfig(delta_t=100)
  x, vjp = jax.vjp(lambda z: generate(prior, z, off), z)
  assert float(jnp.abs(x).max()) < 0.9  # clipping inactive
  abar = float(get_schedule("linear").alphas_cumprod[900])
  np.testing.assert_allclose(vjp(v)[0], v / math.sqrt(abar), rtol=2e-4)
  full = BIRDConfig(delta_t=100, grad_through_unet=True)
  g = lambda z: generate(prior, z, full)
  _, vjp_full = jax.vjp(g, z)
  # g is affine for a Gaussian prior: the central difference is exact up to rounding.
  fd = (g(z + v) - g(z - v)) / 2.0
  np.testing.assert_allclose(jnp.vdot(vjp_full(v)[0], v), jnp.vdot(fd, v), rtol=2e-3)
  # The forward value does not depend on the gradient path; the gradients do.
  np.testing.assert_allclose(g(z), x, rtol=1e-6, atol=1e-6)  # float32 rounding
  assert float(jnp.abs(vjp_full(v)[0] - vjp(v)[0]).max()) > 1e-2


H = 12
SMALL = BIRDConfig(iterations=30, lr_z=0.05, lr_eta=0.01, delta_t=250)


@pytest.fixture(scope="module")
def problem():
  prior = gauss_prior(H)
  x_true = sample_prior(jax.random.key(5), prior, 2)
  ks = jnp.stack([gaussian_kernel(5, 1.0), gaussian_kernel(5, 1.6)])
  ys = jnp.stack([Blur((H, H, 1), ks[i], "zeros").A(x_true[i]) for i in range(2)])
  return prior, x_true, ks, ys


def test_vmap_equals_loop_and_sphere(problem):
  prior, _, _, ys = problem
  degs = [BlindBlur((H, H, 1), mlp_kernel(jax.random.key(i), 5, hidden=32)) for i in range(2)]
  keys = jax.random.split(jax.random.key(1), 2)
  cfg = dataclass_replace(SMALL, iterations=6)
  solve = jax.jit(functools.partial(bird, prior=prior, config=cfg))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *degs)
  xb, ib = jax.jit(jax.vmap(functools.partial(bird, prior=prior, config=cfg)))(keys, ys, stacked)
  for i in range(2):
    x, info = solve(keys[i], ys[i], degs[i])
    np.testing.assert_allclose(xb[i], x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ib.loss[i], info.loss, rtol=1e-4)
    # Adam divides by sqrt(v): float rounding of near-zero kernel gradients (vmap vs one
    # image) moves single entries by ~1e-5 of their ~0.05 (seen with jax 0.10.2, 2026-12-01).
    np.testing.assert_allclose(ib.kernel[i], info.kernel, rtol=1e-4, atol=5e-5)
    assert abs(float(jnp.linalg.norm(info.z)) - H) <= 1e-4 * H  # sqrt(d) = sqrt(144)
  assert int(ib.nfe[0]) == (6 + 1) * 4


def dataclass_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


def psnr(a, b):
  return float(10 * jnp.log10(4.0 / jnp.mean((a - b) ** 2)))


def test_nonblind_beats_blind_and_best_loss(problem):
  prior, x_true, ks, ys = problem
  key = jax.random.key(3)
  blind = BlindBlur((H, H, 1), LogitsKernel(5))
  known = NonBlind(Blur((H, H, 1), ks[0], "zeros"))
  xb, ib = jax.jit(functools.partial(bird, prior=prior, config=SMALL))(key, ys[0], blind)
  xn, inn = jax.jit(functools.partial(bird, prior=prior, config=SMALL))(key, ys[0], known)
  assert float(inn.final_loss) < float(ib.final_loss)
  assert psnr(xn, x_true[0]) >= psnr(xb, x_true[0])
  assert float(ib.loss[-1]) < float(ib.loss[0])  # the blind fit makes progress
  # Best-loss selection returns the evaluated iterate with the lowest loss.
  cfg = dataclass_replace(SMALL, best_loss=True, lr_z=0.3, iterations=40)  # a bumpy curve
  x, info = jax.jit(functools.partial(bird, prior=prior, config=cfg))(key, ys[0], known)
  curve = np.append(np.asarray(info.loss), float(info.final_loss))
  assert int(info.best_iteration) == int(np.argmin(curve)) < cfg.iterations  # not the last
  np.testing.assert_allclose(known.loss(info.eta, x, ys[0]), curve.min(), rtol=1e-5)


def test_bad_inputs(problem):
  prior, _, _, ys = problem
  with pytest.raises(ShapeError, match="measurement"):
    bird(jax.random.key(0), ys, NonBlind(Blur((H, H, 1), gaussian_kernel(5, 1.0), "zeros")),
         prior, SMALL)
  with pytest.raises(ShapeError, match="one latent"):
    generate(prior, jnp.zeros((1, H, H, 1)), SMALL)
  assert bird_mod.bird is bird


def test_bird_noise_statistics():
  """Official model on [0, 1]: u (1 + 0.096 g) + 0.01 n; on [-1, 1] mean y, std 2 sqrt(...)."""
  from jaxir.operators.noise import bird_noise
  for level in (-0.6, 0.0, 0.8):
    y = jnp.full((200, 200, 3), level, jnp.float32)
    out = np.asarray(bird_noise(jax.random.key(0), y), np.float64)
    u = (level + 1) / 2
    std = 2 * math.sqrt((0.096 * u) ** 2 + 0.01 ** 2)
    assert abs(out.mean() - level) < 4 * std / math.sqrt(out.size)
    assert abs(out.std() / std - 1) < 0.01
  y = jax.random.uniform(jax.random.key(1), (8, 8, 3), minval=-1, maxval=1)
  np.testing.assert_allclose(bird_noise(jax.random.key(2), y, 0.0, 0.0), y, atol=1e-6)
  with pytest.raises(ConfigError, match="speckle"):
    bird_noise(jax.random.key(0), y, speckle=-1.0)


def test_inversion_start_fits_from_the_first_step(problem):
  # z_init="inversion": z is the DDIM inversion of y (same shape as the image here), put on
  # the sphere. With a prior whose eps ignores x, g(invert(x)) = x exactly, and the inversion
  # start begins near y, far below the loss of a noise start; it costs one chain more.
  from jaxir.operators.denoise import Identity
  from jaxir.priors.base import make_prior
  prior, x_true, _, ys = problem
  c = jax.random.normal(jax.random.key(7), (H, H, 1))
  const = make_prior(lambda p, x, t: jnp.broadcast_to(p, x.shape), c)
  x = jnp.clip(x_true[0], -0.9, 0.9)
  cfg = dataclass_replace(SMALL, z_init="inversion")
  np.testing.assert_allclose(generate(const, bird_mod.invert(const, x, cfg), cfg), x, atol=1e-4)
  known = NonBlind(Identity((H, H, 1)))
  y = x  # the const prior's latents of [-1, 1] images lie near the sphere ||z|| = sqrt(d)
  _, inv = jax.jit(functools.partial(bird, prior=const, config=cfg))(jax.random.key(0), y, known)
  _, noi = jax.jit(functools.partial(bird, prior=const, config=SMALL))(jax.random.key(0), y, known)
  assert float(inv.loss[0]) < 0.5 * float(noi.loss[0])
  assert abs(float(jnp.linalg.norm(inv.z)) - H) <= 1e-4 * H
  assert int(inv.nfe) == bird_nfe(cfg) == bird_nfe(SMALL) + len(bird_timesteps(cfg.delta_t))
  with pytest.raises(ConfigError, match="z_init"):
    BIRDConfig(z_init="zeros")


def test_radius_init_keeps_the_inverted_norm(problem):
  # radius="init": the inversion start is not rescaled, so with the const-eps prior (where
  # g(invert(x)) = x exactly) the first loss is the exact fit, zero up to rounding, while the
  # sqrt(d) sphere moves it; z keeps its initial norm after every step.
  from jaxir.operators.denoise import Identity
  from jaxir.priors.base import make_prior
  prior, x_true, _, _ = problem
  c = jax.random.normal(jax.random.key(7), (H, H, 1))
  const = make_prior(lambda p, x, t: jnp.broadcast_to(p, x.shape), c)
  y = jnp.clip(x_true[0], -0.9, 0.9)
  known = NonBlind(Identity((H, H, 1)))
  cfg = dataclass_replace(SMALL, z_init="inversion", radius="init", iterations=5)
  z_inv = bird_mod.invert(const, y, cfg)
  _, info = jax.jit(functools.partial(bird, prior=const, config=cfg))(jax.random.key(0), y, known)
  _, sph = jax.jit(functools.partial(bird, prior=const, config=dataclass_replace(
      cfg, radius="sqrt_d")))(jax.random.key(0), y, known)
  assert float(info.loss[0]) < 1e-8 < float(sph.loss[0])
  r = float(jnp.linalg.norm(z_inv))
  assert abs(r - H) > 1e-3 * H  # the inverted latent is off the sqrt(d) sphere here
  assert abs(float(jnp.linalg.norm(info.z)) - r) <= 1e-4 * r
  with pytest.raises(ConfigError, match="radius"):
    BIRDConfig(radius="unit")
