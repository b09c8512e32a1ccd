"""DeqIR: the whole DDNM restoration chain as one fixed point, solved in parallel.

The sequential chain (`jaxir.solvers.ddnm`) visits T slot timesteps t_0 > ... >
t_{T-1} (`deqir_timesteps`); slot i takes the state x_i at t_i (x_0 := x_T) and
produces x_{i+1}, one DDIM step below. With P = A^+ A (a projector) and
z_i = x_i / sqrt(abar(t_i)), one step reads

    z_{i+1} = (I - P) z_i + d_i,   d_i = z_{i+1} - (I - P) z_i,

where d_i depends on x_i only through the network's eps(x_i, t_i). Since
(I - P) P = 0, the recursion unrolls in closed form:

    z_{i+1} = (I - P) z_0 + sum_{j <= i} (I - P) d_j + P d_i.

`joint_map` evaluates this for all slots at once: every slot's input (x_T, then
the previous iterate's slots 0..T-2) goes through the network in ONE batch, the
ONE DDNM step (`jaxir.solvers.ddnm.ddnm_step`: `ddim_step` with DDNM's range-space
correction, or DDNM+'s noise-aware one when `sigma_y` > 0) is vmapped over the slot
axis to give each slot's one-step output, d follows, and a weighted cumulative
sum over slots replaces each slot's null-space component by the unrolled one.
The map is lower-triangular in the slots, so Picard iteration from any start
equals the sequential chain after exactly T iterations. `deqir_solve` finds the
fixed point with `jaxir.fixed_point` (Anderson with per-slot weights by default,
the official solver). Under `jax.vmap` over images the network call batches
images x slots into one call.

Initialization optimization (DEQ inversion, `optimize_init`): Adam on x_T
through the fixed point, gradients by implicit differentiation or the phantom
gradient; the loss is by default the measurement misfit of the network's last
x0 prediction before the range-space correction ("measurement": the corrected
output fits y exactly, so its own misfit is zero), or ||x_0 - x_gt||^2
("ground_truth", the official code's choice, for reproducing the paper's tables).

References:
  Cao, Shi, Zhang, Zhang, Timofte, Van Gool, "Deep Equilibrium Diffusion
  Restoration with Parallel Sampling" (DeqIR), CVPR 2024. Official code:
  caojiezhang/DeqIR (`functions/ddim_anderson.py`: `compute_multi_step_sr`,
  `anderson`, `fp_implicit_iters_anderson`; `runners/diffusion.py`:
  `get_additional_anderson_args_sr`, `get_timestep_sequence_sr`;
  `functions/latent_space_opt_anderson.py`: `find_source_noise_deq_sr`; `main.py`).
  Wang et al., DDNM, ICLR 2023.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxir.diffusion.ddim import x0_from_eps
from jaxir.errors import ConfigError, ShapeError
from jaxir.fixed_point import Anderson, Picard, fixed_point
from jaxir.solvers.common import callable_module, check_measurement
from jaxir.solvers.ddnm import (_check_linear, ddnm_step, draw_start, spectrum, step_alphas,
                                uniform_timesteps)

__all__ = ["DeqIRConfig", "DEQIR_PRESETS", "DeqIRInfo", "deqir_timesteps", "joint_map",
           "deqir_solver", "solve_slots", "deqir_solve", "init_loss", "optimize_init", "deqir"]

_SOLVERS = ("anderson", "picard")
_GRADS = ("implicit", "phantom")
_LOSSES = ("measurement", "ground_truth")


@dataclasses.dataclass(frozen=True)
class DeqIRConfig:
  """DeqIR settings (defaults: the official code's effective values).

  Attributes:
    T: slots = respaced steps (README `--timesteps 25`).
    etw: eps weight sqrt(1 - etw^2) (README `--etw 0.1`).
    nw: injected-noise weight (`main.py` `--nw` default 0).
    sigma_y: measurement noise std on the [-1, 1] scale. 0 (the official code,
      which has no noise model): the range-space correction A^+ y passes the
      noise through, so a noisy y comes back noisy (denoising returns y itself).
      > 0: every slot's step is DDNM+'s noise-aware step (`jaxir.solvers.ddnm.
      ddnm_step`, eta = nw, this etw), as issue 15 asks; with nw = 0 it is
      deterministic, the predicted eps carrying DDNM+'s fresh-noise share as in a
      DDIM step (one shared draw instead gave 2x the optimal error on inpainting).
      Needs an SVD operator. The chain stays one deterministic map of x_T, so the
      fixed point, Picard's exactness after T and the gradients hold.
    solver: "anderson" or "picard" (official: Anderson).
    m, lam, beta, tol, max_iter: Anderson history, ridge, mixing, relative
      tolerance and loop bound (`ddim_anderson.py` `fp_implicit_iters_anderson`:
      lam 1e-3, beta 1.0, tol 1e-3 hard-coded; `main.py`: m 5,
      `--max_anderson_iters` 15). Picard uses tol, max_iter, beta.
    per_slot: one set of Anderson weights per slot (official: `X` is
      (slots, m, d)); False: one set for all slots.
    triangular: with per_slot, slot i's weights minimize the residual of
      slots 0..i (the slots it depends on and itself): Tang et al.'s
      triangular Anderson (ParaTAA, ICML 2024), not in the official code.
      Far fewer map evaluations on long chains
      (`experiments/results/deqir_convergence.md`); the preset "taa".
    init_steps: Adam steps of the initialization optimization (0: off; the
      official runner reads them from its config, not shipped).
    init_lr: Adam learning rate on x_T (issue 15 / DeqIR paper: 2e-5).
    init_loss: "measurement" (jaxir's default: ||A x0_pred - y||^2 of the last
      slot's uncorrected x0 prediction, see `init_loss`) or "ground_truth"
      (||x0 - x_gt||^2, official `runners/diffusion_inversion.py`).
    init_grad: "implicit" or "phantom" (official: phantom, `main.py`).
    init_m, init_beta, init_tol: the inner Anderson of the optimization
      (`latent_space_opt_anderson.py` `find_source_noise_deq_sr`: m 3, beta 0.9,
      tol 1e-2).
    phantom_steps, phantom_tau: damped steps of the phantom gradient
      (`main.py`: `--pg_steps` 1, `--tau` 0.1).
  """
  T: int = 25  # DeqIR README: --timesteps 25
  etw: float = 0.1  # DeqIR README: --etw 0.1
  nw: float = 0.0  # DeqIR main.py: --nw default 0
  sigma_y: float = 0.0  # noiseless, as the official code; > 0: DDNM+ steps (Wang et al. 2023)
  solver: str = "anderson"  # DeqIR ddim_anderson.py fp_implicit_iters_anderson
  m: int = 5  # DeqIR main.py: --m 5
  lam: float = 1e-3  # DeqIR ddim_anderson.py: lam=1e-3
  beta: float = 1.0  # DeqIR ddim_anderson.py: beta=1.0
  tol: float = 1e-3  # DeqIR ddim_anderson.py: tol=1e-3 (hard-coded; --tol ignored)
  max_iter: int = 15  # DeqIR main.py: --max_anderson_iters 15
  per_slot: bool = True  # DeqIR runners/diffusion.py: X of shape (slots, m, d)
  triangular: bool = False  # official per-slot systems; True: ParaTAA (Tang et al. 2024)
  init_steps: int = 0  # off; the official epoch count lives in an unshipped config
  init_lr: float = 2e-5  # DeqIR paper / issue 15: Adam lr 2e-5
  init_loss: str = "measurement"  # jaxir default; official: "ground_truth"
  init_grad: str = "phantom"  # DeqIR main.py / latent_space_opt_anderson.py
  init_m: int = 3  # latent_space_opt_anderson.py find_source_noise_deq_sr: m=3
  init_beta: float = 0.9  # latent_space_opt_anderson.py: beta=0.9
  init_tol: float = 1e-2  # latent_space_opt_anderson.py: tol=1e-2
  phantom_steps: int = 1  # DeqIR main.py: --pg_steps 1
  phantom_tau: float = 0.1  # DeqIR main.py: --tau 0.1

  def __post_init__(self):
    if not isinstance(self.T, (int, np.integer)) or self.T < 1:
      raise ConfigError(f"DeqIR needs an integer number of slots T >= 1; got T={self.T!r}.")
    if self.solver not in _SOLVERS:
      raise ConfigError(f"solver must be one of {_SOLVERS}; got {self.solver!r}.")
    if self.init_loss not in _LOSSES:
      raise ConfigError(f"init_loss must be one of {_LOSSES}; got {self.init_loss!r}.")
    if self.init_grad not in _GRADS:
      raise ConfigError(f"init_grad must be one of {_GRADS}; got {self.init_grad!r}.")
    if not isinstance(self.init_steps, (int, np.integer)) or self.init_steps < 0:
      raise ConfigError(f"init_steps must be an integer >= 0; got {self.init_steps!r}.")
    if not 0.0 <= self.etw <= 1.0 or self.nw < 0.0:
      raise ConfigError(f"DeqIR needs 0 <= etw <= 1 and nw >= 0; got etw={self.etw}, "
                        f"nw={self.nw}.")
    if not self.sigma_y >= 0.0:
      raise ConfigError(f"sigma_y must be >= 0 (the measurement noise std on [-1, 1]); got "
                        f"{self.sigma_y}.")
    if self.sigma_y > 0.0 and self.nw > 1.0:
      raise ConfigError(f"with sigma_y > 0 (DDNM+ steps) nw is DDNM+'s eta and must be <= 1; "
                        f"got nw={self.nw}.")
    deqir_solver(self)  # validates the solver fields with jaxir.fixed_point's checks


class DeqIRInfo(NamedTuple):
  """Diagnostics of a DeqIR solve.

  Attributes:
    iterations: int32, solver iterations.
    evaluations: int32, joint-map evaluations (Anderson: 2 + iterations).
    nfe: int32, network evaluations = evaluations x T.
    residual: float32, final relative residual ||f(X) - X|| / (1e-5 + ||f(X)||).
    residuals: float32 (max_iter,), the residual curve (NaN after the stop).
    converged: bool, residual < tol.
    init_losses: float32 (init_steps,), the initialization-optimization loss
      before each Adam step (empty when off).
    diverged: bool, the residual is not finite: the solve blew up (seen once, the
      official per-slot Anderson on an early noise-aware chain; the triangular one
      and Picard did not) and the result is not a restoration.
  """
  iterations: jax.Array
  evaluations: jax.Array
  nfe: jax.Array
  residual: jax.Array
  residuals: jax.Array
  converged: jax.Array
  init_losses: jax.Array
  diverged: jax.Array


def deqir_timesteps(T: int, num_timesteps: int = 1000) -> np.ndarray:
  """The slot timesteps, highest first: int64 (T,); T = 5 gives [800, 600, 400, 200, 0]."""
  return uniform_timesteps(T, num_timesteps)


def joint_map(prior, slots, x_T, y, operator, timesteps, *, etw=0.0, nw=0.0, noise=None,
              sigma_y=0.0, sharding=None):
  """One application of DeqIR's joint map to all slots of one image.

  Args:
    prior: a `jaxir.priors.Prior` (alphas from `prior.schedule`).
    slots: (T, H, W, C); slot i holds the state one step below `timesteps[i]`
      (the last slot is the restored image), as `deqir_sr4_avgpool.npz` lays out.
    x_T: (H, W, C) the fixed start at `timesteps[0]`.
    y: one measurement.
    operator: a linear operator with `pinv` (P = A^+ A must be a projector).
    timesteps: (T,) slot timesteps, highest first (`deqir_timesteps(T)`).
    etw, nw: eps and noise weights (see `DeqIRConfig`).
    noise: (H, W, C) standard normal draw shared by all slots (needed when nw > 0).
    sigma_y: measurement noise std; > 0: each slot takes DDNM+'s step (see
      `DeqIRConfig.sigma_y`; an SVD operator).
    sharding: optional `jax.sharding.Sharding` of the (T, H, W, C) slot arrays,
      e.g. `NamedSharding(mesh, PartitionSpec("slots"))`: each device then runs
      the network on its slots, and XLA inserts the collectives of the
      cumulative sum (and of Anderson's inner products around it).

  Returns:
    (T, H, W, C) the next iterate of every slot.
  """
  ts = jnp.asarray(timesteps, jnp.int32)
  n_slots = ts.shape[0]
  if slots.ndim != x_T.ndim + 1 or slots.shape[0] != n_slots or slots.shape[1:] != x_T.shape:
    raise ShapeError(f"slots have shape {slots.shape}; expected ({n_slots}, *{x_T.shape}) "
                     "(one slot per timestep, each of x_T's shape).")
  if nw != 0.0 and noise is None:
    raise ConfigError("joint_map with nw > 0 needs noise=(H, W, C), one standard normal draw.")
  a, an = step_alphas(prior, ts)
  sa, sn = jnp.sqrt(a)[:, None, None, None], jnp.sqrt(an)[:, None, None, None]
  inputs = jnp.concatenate([x_T[None], slots[:-1]], axis=0)
  if sharding is not None:
    inputs = jax.lax.with_sharding_constraint(inputs, sharding)
  eps = prior.eps(inputs, ts)  # one network call on all slots
  spec = spectrum(operator) if sigma_y > 0.0 else None

  def step(x, e, a_t, a_next):  # the sequential chain's step (DDNM, or DDNM+ if sigma_y > 0)
    return ddnm_step(x, e, a_t, a_next, y, operator, noise, eta=nw, etw=etw, sigma_y=sigma_y,
                     s=spec)[0]

  s = jax.vmap(step)(inputs, eps, a, an)  # the sequential step of every slot
  proj = jax.vmap(lambda v: operator.pinv(operator.A(v)))
  z_in = inputs / sa
  d = s / sn - (z_in - proj(z_in))
  pd = proj(d)
  z0 = x_T / sa[0]
  z0 = z0 - operator.pinv(operator.A(z0))
  z_next = z0[None] + jnp.cumsum(d - pd, axis=0) + pd
  out = sn * z_next
  if sharding is not None:
    out = jax.lax.with_sharding_constraint(out, sharding)
  return out


def deqir_solver(config: DeqIRConfig):
  """The `jaxir.fixed_point` solver a config asks for."""
  if config.solver == "picard":
    return Picard(tol=config.tol, max_iter=config.max_iter, beta=config.beta)
  return Anderson(m=config.m, lam=config.lam, beta=config.beta, tol=config.tol,
                  max_iter=config.max_iter, per_row=config.per_slot,
                  triangular=config.triangular)


DEQIR_PRESETS = {
    "official": DeqIRConfig(),  # the official code's effective settings (noiseless)
    "taa": DeqIRConfig(triangular=True),  # ParaTAA's triangular Anderson (Tang et al. 2024)
}
"""Named DeqIR configs; `dataclasses.replace(DEQIR_PRESETS[...], sigma_y=...)` for noisy y."""


def _map_fn(prior, operator, ts, config, noise, sharding=None):
  return lambda X, x_T, y: joint_map(prior, X, x_T, y, operator, ts, etw=config.etw,
                                     nw=config.nw, noise=noise, sigma_y=config.sigma_y,
                                     sharding=sharding)


def _check_x_T(x_T, operator):
  if tuple(x_T.shape) != tuple(operator.in_shape):
    raise ShapeError(f"x_T has shape {tuple(x_T.shape)}; expected the operator's image shape "
                     f"{tuple(operator.in_shape)} (one image: vmap over a batch).")


def solve_slots(x_T, y, operator, prior, config: DeqIRConfig = DeqIRConfig(), *, noise=None,
                grad="implicit", slot_sharding=None):
  """`deqir_solve` returning all slots: ((T, H, W, C) solution, `DeqIRInfo`)."""
  check_measurement(y, operator, prior=prior)
  _check_linear(operator)
  _check_x_T(x_T, operator)
  ts = deqir_timesteps(config.T, prior.schedule.num_timesteps)
  f = _map_fn(prior, operator, ts, config, noise, slot_sharding)
  X0 = jnp.broadcast_to(x_T, (config.T,) + tuple(x_T.shape))
  if slot_sharding is not None:
    X0 = jax.lax.with_sharding_constraint(X0, slot_sharding)
  X, fp = fixed_point(f, X0, x_T, y, solver=deqir_solver(config), grad=grad,
                      phantom_steps=config.phantom_steps, phantom_tau=config.phantom_tau)
  info = DeqIRInfo(iterations=fp.iterations, evaluations=fp.evaluations,
                   nfe=fp.evaluations * config.T, residual=fp.residual, residuals=fp.residuals,
                   converged=fp.converged, init_losses=jnp.zeros((0,), jnp.float32),
                   diverged=~jnp.isfinite(fp.residual))
  return X, info


def deqir_solve(x_T, y, operator, prior, config: DeqIRConfig = DeqIRConfig(), *, noise=None,
                grad="implicit", slot_sharding=None):
  """Solve the joint fixed point from a given x_T (all slots start at x_T).

  Args:
    x_T: (H, W, C) start.
    y: one measurement.
    operator: a linear operator with `pinv`.
    prior: a `jaxir.priors.Prior`.
    config: `DeqIRConfig` (its init-optimization fields are not used here).
    noise: (H, W, C) draw shared by the slots (needed when config.nw > 0).
    grad: gradient mode of `jaxir.fixed_point.fixed_point` with respect to
      x_T and y ("implicit", "phantom", "unrolled" or None).
    slot_sharding: optional sharding of the slot axis (see `joint_map`).

  Returns:
    (x0, info): the last slot of the solution (H, W, C) and a `DeqIRInfo`.
  """
  X, info = solve_slots(x_T, y, operator, prior, config, noise=noise, grad=grad,
                        slot_sharding=slot_sharding)
  return X[-1], info


def init_loss(x_T, y, operator, prior, config: DeqIRConfig = DeqIRConfig(), *, x_gt=None,
              noise=None):
  """The initialization-optimization loss of x_T through the inner fixed point.

  The inner solve is Anderson with the `init_*` settings, differentiated by
  `config.init_grad`.

  * "measurement" (default): ||A x0_pred - y||^2 with x0_pred the network's x0
    estimate at the last slot BEFORE the range-space correction (one extra
    network call). The corrected output satisfies A x0 = y exactly (the last
    step goes to abar = 1), so its own residual carries no signal; the
    uncorrected prediction measures how well the prior's fill agrees with y.
  * "ground_truth": ||x0 - x_gt||^2 (the official `diffusion_inversion.py` loss).
  """
  if config.init_loss == "ground_truth" and x_gt is None:
    raise ConfigError("init_loss='ground_truth' needs x_gt=(H, W, C), the reference image; "
                      "use init_loss='measurement' when it is unknown.")
  inner = dataclasses.replace(config, solver="anderson", m=config.init_m, beta=config.init_beta,
                              tol=config.init_tol)
  X, _ = solve_slots(x_T, y, operator, prior, inner, noise=noise, grad=config.init_grad)
  if config.init_loss == "ground_truth":
    r = X[-1] - x_gt
  else:
    ts = deqir_timesteps(config.T, prior.schedule.num_timesteps)
    x_in = X[-2] if config.T > 1 else x_T
    t = jnp.full((1,), int(ts[-1]), jnp.int32)
    abar = jnp.asarray(prior.schedule.alphas_cumprod, jnp.float32)[int(ts[-1])]
    x0_pred = x0_from_eps(x_in, prior.eps(x_in[None], t)[0], abar)
    r = operator.A(x0_pred) - y
  return jnp.sum(r * r)


def optimize_init(x_T, y, operator, prior, config: DeqIRConfig = DeqIRConfig(), *, x_gt=None,
                  noise=None):
  """Adam on x_T through the fixed point (DEQ inversion), `config.init_steps` steps.

  Returns:
    (x_T', losses): the optimized start and the (init_steps,) loss before each step.
  """
  opt = optax.adam(config.init_lr)
  loss_grad = jax.value_and_grad(lambda x: init_loss(x, y, operator, prior, config, x_gt=x_gt,
                                                     noise=noise))

  def body(carry, _):
    x, state = carry
    loss, g = loss_grad(x)
    upd, state = opt.update(g, state, x)
    return (optax.apply_updates(x, upd), state), loss

  (x, _), losses = jax.lax.scan(body, (x_T, opt.init(x_T)), None, length=config.init_steps)
  return x, losses


def deqir(key, y, operator, prior, config: DeqIRConfig = DeqIRConfig(), *, x_gt=None):
  """Restore one image with DeqIR.

  Draws x_T (and the shared noise when nw > 0), optionally optimizes x_T
  (`config.init_steps` > 0), then solves the joint fixed point.

  Args:
    key: `jax.random` key.
    y: one measurement, shape `operator.out_shape`.
    operator: a linear operator with `pinv` on `operator.in_shape` images.
    prior: a `jaxir.priors.Prior`.
    config: `DeqIRConfig`.
    x_gt: reference image, only for `init_loss="ground_truth"`.

  Returns:
    (x, info): the (H, W, C) restoration and a `DeqIRInfo`.
  """
  check_measurement(y, operator, prior=prior)
  _check_linear(operator)
  x_T, noise = draw_start(key, operator, config.nw)
  losses = jnp.zeros((0,), jnp.float32)
  if config.init_steps > 0:
    x_T, losses = optimize_init(x_T, y, operator, prior, config, x_gt=x_gt, noise=noise)
  x, info = deqir_solve(x_T, y, operator, prior, config, noise=noise, grad=None)
  return x, info._replace(init_losses=losses)


callable_module(__name__, deqir)
