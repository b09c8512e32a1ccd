"""BIRD: blind image restoration by fast diffusion inversion, one jit-compiled solve.

BIRD searches the initial noise z of a short deterministic DDIM chain
g(z) (delta_t apart, x0 clipped at every step) together with the unknown
degradation's parameters eta:

  min_{z, eta} loss(H_eta(g(z)), y)   with ||z||^2 = d,

by Adam on z and on eta (each with its own learning rate), rescaling z to norm
sqrt(d) after every step. Every iterate g(z) is a sample of the prior.

As the official code runs it (hamadichihaoui/BIRD): z ~ N(0, I) (not rescaled
before the first step); each iteration computes x0 = g(z) and the kernel, the
mean squared error, one Adam step on z and on eta (torch defaults: betas 0.9,
0.999, eps 1e-8), then z <- z sqrt(d) / sqrt(||z||^2 + 1e-9). The U-Net runs
under `torch.no_grad`, so gradients reach z only through the DDIM algebra
(`grad_through_unet=False`, the default); `True` backpropagates through the
U-Net as the paper writes it, with `jax.checkpoint` around each call.

g(z) is `jaxir.diffusion.ddim.ddim_sample` over the official timesteps
(`DDIMScheduler.set_timesteps(T // delta_t)`: 0, r, ..., (n - 1) r with
n = T // delta_t, r = T // n; for delta_t = 100: 900, 800, ..., 0) with
`clip_denoised=True`: guided-diffusion's clipping recomputes eps from the clipped
x0, which is diffusers' `use_clipped_model_output=True`, and the step after
t = 0 uses abar = 1 (`set_alpha_to_one=True`), returning the clipped x0.

Differences from the official script: it saves x0 of iteration 90 of 100 (every
10th iteration, while still optimizing); jaxir returns g(z) of the final iterate
(z after the last step, one extra chain: NFE = (N + 1) n), or with
`best_loss=True` the evaluated iterate with the lowest loss.

References:
  Chihaoui, Lemkhenter, Favaro, "Blind Image Restoration via Fast Diffusion
  Inversion", NeurIPS 2024 (arXiv:2405.19572). Official code: hamadichihaoui/BIRD
  (`blind_deblurring.py`, `ddim_inversion_utils.py`, `utils.py`, `configs/*.yml`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxir.diffusion.ddim import ddim_invert, ddim_sample
from jaxir.errors import ConfigError, ShapeError
from jaxir.solvers.common import callable_module, check_measurement, preset

__all__ = ["BIRDConfig", "BIRDInfo", "BIRDState", "BIRD_PRESETS", "bird_preset",
           "bird_timesteps", "bird_nfe", "generate", "invert", "project_sphere", "bird_optimizers",
           "bird_init", "bird_step", "bird"]


@dataclasses.dataclass(frozen=True)
class BIRDConfig:
  """BIRD hyperparameters (defaults: the paper's text; presets: the official configs).

  Attributes:
    iterations: Adam steps N (paper's text: 200; official blind deblurring: 100,
      `configs/blind_deblurring.yml` `Optimization_steps`).
    lr_z: Adam learning rate on z (paper and official blind deblurring `lr_img`: 0.003).
    lr_eta: Adam learning rate on eta; None uses the degradation's own `lr`
      (the MLP kernel's is the official `lr_blur`: 0.0002).
    delta_t: DDIM step size (paper and every official config: 100, i.e. 10
      U-Net calls starting at t = 900).
    grad_through_unet: backpropagate through the U-Net (paper's formulation)
      instead of holding its output constant (official code: False).
    best_loss: return the evaluated iterate with the lowest loss instead of
      the final one (jaxir option; off as in the official code).
    norm_eps: added to ||z||^2 before the square root in the projection
      (official: 1e-9).
    z_init: "noise" (official: z ~ N(0, I) from the key) or "inversion" (jaxir
      option: z = the deterministic DDIM inversion (`ddim_invert`, same
      timesteps) of a first estimate, put on the sphere: y itself when it has the
      image's shape (deblurring, denoising, inpainting), else the operator's
      pseudo-inverse of y; len(timesteps) more U-Net calls).
    radius: the sphere z is kept on: "sqrt_d" (paper and official: ||z|| =
      sqrt(d) after every step) or "init" (jaxir option: the norm of the initial
      z, kept; with `z_init="inversion"` the inverted latent is then not rescaled.
      Inversions of photos land at 0.94-0.98 sqrt(d), and putting them on the
      sqrt(d) sphere costs g about 6-10 dB on natural64, because the first DDIM
      step divides by sqrt(abar_t) ~ 0.01-0.02).
  """
  iterations: int = 200
  lr_z: float = 0.003
  lr_eta: float | None = None
  delta_t: int = 100
  grad_through_unet: bool = False
  best_loss: bool = False
  norm_eps: float = 1e-9
  z_init: str = "noise"  # official blind_deblurring.py: torch.randn
  radius: str = "sqrt_d"  # official: z * sqrt(d) / ||z|| after every step

  def __post_init__(self):
    if self.z_init not in ("noise", "inversion"):
      raise ConfigError(f"BIRD z_init must be 'noise' or 'inversion'; got {self.z_init!r}.")
    if self.radius not in ("sqrt_d", "init"):
      raise ConfigError(f"BIRD radius must be 'sqrt_d' or 'init'; got {self.radius!r}.")
    if self.iterations < 1 or self.delta_t < 1:
      raise ConfigError(f"BIRD needs iterations >= 1 and delta_t >= 1; got "
                        f"iterations={self.iterations}, delta_t={self.delta_t}.")
    if not self.lr_z > 0 or (self.lr_eta is not None and not self.lr_eta >= 0):
      raise ConfigError(f"BIRD needs lr_z > 0 and lr_eta >= 0 (or None); got lr_z={self.lr_z}, "
                        f"lr_eta={self.lr_eta}.")


BIRD_PRESETS: dict[str, BIRDConfig] = {
    # The paper's text (N = 200, lr 0.003, delta_t 100).
    "paper": BIRDConfig(),
    # configs/blind_deblurring.yml: Optimization_steps 100, lr_img 0.003, lr_blur 0.0002
    # (41x41 MLP kernel at 256x256; use BlindBlur(..., mlp_kernel(...))).
    "blind_deblur": BIRDConfig(iterations=100, lr_z=0.003, lr_eta=2e-4),
    # configs/denoising.yml: 200 steps, lr 0.01 (H = identity).
    "denoise": BIRDConfig(iterations=200, lr_z=0.01),
    # configs/inpainting.yml: 200 steps, lr 0.01 (known mask).
    "inpaint": BIRDConfig(iterations=200, lr_z=0.01),
    # configs/super_resolution.yml: 100 steps, lr 0.001, x8 by 8x8 average pooling
    # (AdaptiveAvgPool2d: jaxir's AvgPoolSR(scale=8)).
    "sr8": BIRDConfig(iterations=100, lr_z=0.001),
    # configs/blind_non_uniform_deblurring.yml: 25 steps, lr 0.002. The official
    # script fits g(z) to the blurry image itself (H = identity: use
    # NonBlind(Identity(shape))). It models no blur at all: it only projects the
    # blurry photo onto the prior's range in 25 short steps, which removes blur
    # only as far as the prior cannot produce it; it cannot estimate a
    # spatially varying kernel nor deblur what the prior can represent.
    "non_uniform_deblur": BIRDConfig(iterations=25, lr_z=0.002),
}


def bird_preset(name: str, **overrides) -> BIRDConfig:
  """A named preset (`BIRD_PRESETS`), optionally with fields replaced."""
  return preset(BIRD_PRESETS, name, "BIRD", **overrides)


def bird_timesteps(delta_t: int, num_timesteps: int = 1000) -> np.ndarray:
  """The official DDIM timesteps, ascending: arange(n) * (T // n), n = T // delta_t."""
  n = int(num_timesteps) // int(delta_t)
  if n < 1:
    raise ConfigError(f"delta_t={delta_t} exceeds the prior's {num_timesteps} timesteps.")
  return np.arange(n, dtype=np.int64) * (int(num_timesteps) // n)


def bird_nfe(config: BIRDConfig, num_timesteps: int = 1000) -> int:
  """U-Net calls of one solve: n per chain, N + 1 chains (1010 for the N = 100 preset),
  n more with `z_init="inversion"`."""
  n = len(bird_timesteps(config.delta_t, num_timesteps))
  return (config.iterations + 1 + (config.z_init == "inversion")) * n


def _model_fn(prior, grad_through_unet: bool):
  if grad_through_unet:
    call = jax.checkpoint(prior.apply_fn)
    return lambda x, t: call(prior.params, x, t)
  return lambda x, t: jax.lax.stop_gradient(prior.model(x, t))


def generate(prior, z, config: BIRDConfig = BIRDConfig()):
  """g(z): the deterministic clipped DDIM chain from z at t = T - delta_t down to x0.

  Args:
    prior: a `jaxir.priors.Prior` (its own `Schedule` gives the alphas).
    z: (H, W, C) latent.
    config: reads `delta_t` and `grad_through_unet`.

  Returns:
    (H, W, C) x0 in [-1, 1].
  """
  if z.ndim != 3:
    raise ShapeError(f"generate takes one latent (H, W, C), got {z.shape}; batch with jax.vmap.")
  T = prior.schedule.num_timesteps
  ts = bird_timesteps(config.delta_t, T)
  x = ddim_sample(_model_fn(prior, config.grad_through_unet), z[None], ts, eta=0.0,
                  clip_denoised=True, num_timesteps=T, schedule=prior.schedule)
  return x[0]


def invert(prior, x, config: BIRDConfig = BIRDConfig()):
  """z whose g(z) is about x: `ddim_invert` of x (H, W, C) over g's timesteps (U-Net output
  held constant under differentiation, as in g's official gradient path)."""
  if x.ndim != 3:
    raise ShapeError(f"invert takes one image (H, W, C), got {x.shape}; batch with jax.vmap.")
  T = prior.schedule.num_timesteps
  model = lambda v, t: jax.lax.stop_gradient(prior.model(v, t))
  return ddim_invert(model, x[None], bird_timesteps(config.delta_t, T), num_timesteps=T,
                     schedule=prior.schedule)[0]


def _first_estimate(y, op, shape):
  """y when it has the image's shape, else op.pinv(y) (for `z_init="inversion"`)."""
  if tuple(jnp.shape(y)) == tuple(shape):
    return jnp.clip(y, -1.0, 1.0)
  if not hasattr(op, "pinv"):
    raise ConfigError(f"z_init='inversion' needs a first image estimate: y has shape "
                      f"{tuple(jnp.shape(y))}, not the image's {tuple(shape)}, and "
                      f"{type(op).__name__} has no pinv. Use z_init='noise'.")
  return jnp.clip(op.pinv(y), -1.0, 1.0)


def project_sphere(z, radius, eps: float = 1e-9):
  """z * radius / sqrt(||z||^2 + eps) (official projection after every step)."""
  return z * (radius / jnp.sqrt(jnp.sum(z * z) + eps))


def bird_optimizers(config: BIRDConfig, degradation):
  """(Adam on z, Adam on eta) with torch's defaults (betas 0.9/0.999, eps 1e-8)."""
  lr_eta = degradation.lr if config.lr_eta is None else config.lr_eta
  return optax.adam(config.lr_z), optax.adam(lr_eta)


class BIRDState(NamedTuple):
  """Optimization state: latent z (H, W, C), parameters eta, the two Adam states."""
  z: jax.Array
  eta: Any
  opt_z: Any
  opt_eta: Any


def bird_init(z, eta, config: BIRDConfig, degradation) -> BIRDState:
  """State at given z and eta (fresh Adam moments)."""
  oz, oe = bird_optimizers(config, degradation)
  return BIRDState(z, eta, oz.init(z), oe.init(eta))


def bird_step(state: BIRDState, y, degradation, prior, config: BIRDConfig):
  """One BIRD iteration, in the official order.

  x0 = g(z); loss = degradation.loss(eta, x0, y); one Adam step on z and on
  eta from the loss's gradients; z rescaled to norm sqrt(d) (`radius="init"`: to the norm
  it had, which every step keeps, so it stays the initial z's).

  Returns:
    (new_state, loss, x0): loss and x0 of the state given (before the step).
  """
  oz, oe = bird_optimizers(config, degradation)

  def objective(z, eta):
    x0 = generate(prior, z, config)
    return degradation.loss(eta, x0, y), x0

  (loss, x0), (gz, ge) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
      state.z, state.eta)
  uz, opt_z = oz.update(gz, state.opt_z, state.z)
  ue, opt_eta = oe.update(ge, state.opt_eta, state.eta)
  radius = math.sqrt(state.z.size) if config.radius == "sqrt_d" else jnp.linalg.norm(state.z)
  z = project_sphere(optax.apply_updates(state.z, uz), radius, config.norm_eps)
  eta = optax.apply_updates(state.eta, ue)
  return BIRDState(z, eta, opt_z, opt_eta), loss, x0


class BIRDInfo(NamedTuple):
  """Diagnostics of a BIRD solve.

  Attributes:
    eta: the estimated degradation parameters (of the returned image).
    kernel: (k, k) the estimated kernel, or None for degradations without one.
    loss: (N,) loss of g(z) at each iteration (before its step).
    final_loss: loss of the final iterate (z, eta after the last step).
    best_iteration: index of the returned iterate (N: the final one).
    nfe: U-Net calls (int32 scalar), (N + 1) * T // delta_t.
    z: (H, W, C) latent of the final iterate.
  """
  eta: Any
  kernel: Any
  loss: jax.Array
  final_loss: jax.Array
  best_iteration: jax.Array
  nfe: jax.Array
  z: jax.Array


def bird(key, y, degradation, prior, config: BIRDConfig = BIRDConfig()):
  """Restore one image with BIRD, estimating the degradation jointly.

  Pure and jit-able as a whole (`config` static); `jax.vmap` over (key, y,
  degradation) restores a batch, each image with its own unknown degradation.

  Args:
    key: `jax.random` key (z ~ N(0, I) and the degradation's `init`).
    y: one measurement, shape `degradation.operator(eta).out_shape`.
    degradation: a blind degradation (`jaxir.operators.blind`): `init`,
      `operator`, `kernel`, `loss`, `lr`; `NonBlind(op)` for a known operator.
    prior: a `jaxir.priors.Prior`.
    config: `BIRDConfig` (see `BIRD_PRESETS`).

  Returns:
    (x, info): (H, W, C) g(z) of the final iterate (or of the lowest-loss one
    with `best_loss`), and a `BIRDInfo`.

  References:
    Chihaoui et al., BIRD, NeurIPS 2024, Algorithm 1; official `blind_deblurring.py`.
  """
  kz, ke = jax.random.split(key)
  eta0 = degradation.init(ke)
  op0 = degradation.operator(eta0)
  shape = tuple(op0.in_shape)
  check_measurement(y, op0, prior=prior)
  if config.z_init == "inversion":
    z0 = invert(prior, _first_estimate(y, op0, shape), config)
    if config.radius == "sqrt_d":
      z0 = project_sphere(z0, math.sqrt(math.prod(shape)), config.norm_eps)
  else:
    z0 = jax.random.normal(kz, shape, jnp.float32)
  state = bird_init(z0, eta0, config, degradation)
  best0 = (jnp.asarray(jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), eta0,
           jnp.asarray(0, jnp.int32))

  def body(carry, i):
    state, best = carry
    new, loss, x0 = bird_step(state, y, degradation, prior, config)
    if config.best_loss:
      take = loss < best[0]
      best = jax.tree.map(lambda a, b: jnp.where(take, a, b), (loss, x0, state.eta, i), best)
    return (new, best), loss

  (state, best), losses = jax.lax.scan(body, (state, best0),
                                       jnp.arange(config.iterations, dtype=jnp.int32))
  x = generate(prior, state.z, config)
  final_loss = degradation.loss(state.eta, x, y)
  eta, it = state.eta, jnp.asarray(config.iterations, jnp.int32)
  if config.best_loss:
    take = best[0] < final_loss
    x, eta, it = jax.tree.map(lambda a, b: jnp.where(take, a, b), (best[1], best[2], best[3]),
                              (x, eta, it))
  info = BIRDInfo(eta=eta, kernel=degradation.kernel(eta), loss=losses, final_loss=final_loss,
                  best_iteration=it,
                  nfe=jnp.asarray(bird_nfe(config, prior.schedule.num_timesteps), jnp.int32),
                  z=state.z)
  return x, info


callable_module(__name__, bird)
