"""DeqIR against the official code's recorded joint map and Anderson solve, and
against the sequential chain it is a fixed-point form of.

References used here, none of them the code under test:
  * `../shared/fixtures/deqir/deqir_sr4_avgpool.npz`: the official DeqIR code
    (`compute_multi_step_sr`, `anderson`) run with the upstream `ddpm_tiny_a`
    U-Net: one map application, its T-step Picard fixed point, the Anderson
    result and its number of map evaluations;
  * the sequential DDNM chain (`ddnm_chain`, itself checked against a numpy loop
    in test_ddnm.py): Picard on the lower-triangular joint map is exact after T
    iterations, and the implicit gradient must equal backpropagation through it;
  * per-image loops (vmap), a one-device run (sharding), the compiled program's
    convolution shapes (one network call on images x slots).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from references import FIXTURES, ddpm_tiny_prior, nhwc, rel_err
from jaxir.diffusion import get_schedule
from jaxir.errors import ConfigError, ShapeError
from jaxir.models import ddpm as M
from jaxir.operators import AvgPoolSR, Colorization, Inpaint
from jaxir.priors import load_prior, model_prior
from jaxir.priors.analytic import gaussian_prior
from jaxir.solvers import deqir as Q
from jaxir.solvers.ddnm import ddnm_chain

FIX = str(FIXTURES)
EXACT = dict(solver="picard", tol=1e-30)  # Picard that never stops early


@pytest.fixture(scope="module")
def tiny_prior():
  """The real upstream DDPM U-Net `ddpm/ddpm_tiny_a`, float32-betas schedule (as DeqIR)."""
  return ddpm_tiny_prior("float32")


@pytest.fixture(scope="module")
def small():
  """A smaller random ermongroup U-Net on 8x8 images (compiles fast), with an
  x2 pooling operator, a measurement and a reference image."""
  cfg = M.ddpm_config(ch=32, out_ch=3, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
                      in_channels=3, resolution=8)
  model = M.DDPMUNet.from_config(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                          jnp.zeros((1,), jnp.int32))
  rng = np.random.default_rng(6)

  def draw(path, s):  # random weights without compiling init: fan-in scaled, norms near 1
    z = rng.standard_normal(s.shape).astype(np.float32)
    if len(s.shape) >= 2:
      return jnp.asarray(z / np.sqrt(np.prod(s.shape[:-1])))
    return jnp.asarray(("scale" in jax.tree_util.keystr(path)) + 0.1 * z)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  prior = model_prior(model, params, get_schedule("linear", 1000, "float32"))
  op = AvgPoolSR((8, 8, 3), 2)
  rng = np.random.default_rng(5)
  x_ref = jnp.asarray(rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32))
  x_T = jnp.asarray(rng.standard_normal((8, 8, 3)).astype(np.float32))
  return prior, op, x_T, op.A(x_ref), x_ref


@pytest.fixture(scope="module")
def gauss():
  """An analytic Gaussian prior on 8x8x1 images (exact eps, compiles in no time)."""
  ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  p = np.stack([ii.ravel(), jj.ravel()], 1)
  cov = 0.04 * np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 8.0) + 1e-4 * np.eye(64)
  prior = gaussian_prior(np.full((8, 8, 1), 0.3, np.float32), cov)
  return prior, AvgPoolSR((8, 8, 1), 2)


@pytest.fixture(scope="module")
def deq():
  d = np.load(f"{FIX}/deqir/deqir_sr4_avgpool.npz")
  op = AvgPoolSR((32, 32, 3), int(d["scale"]))
  return d, op, jnp.asarray(nhwc(d["xT"][0])), jnp.asarray(nhwc(d["y"][0]))


# ------------------------------------------------------------------ official fixture

def test_fixture_settings():
  d = np.load(f"{FIX}/deqir/deqir_sr4_avgpool.npz")
  np.testing.assert_array_equal(Q.deqir_timesteps(int(d["T"])), d["slot_t"])
  np.testing.assert_array_equal(np.sort(Q.deqir_timesteps(int(d["T"]))), d["timesteps"])
  cfg = Q.DeqIRConfig()
  assert (cfg.m, cfg.lam, cfg.beta, cfg.tol, cfg.max_iter) == (int(d["m"]), 1e-3, 1.0, 1e-3, 15)
  assert (cfg.etw, cfg.nw) == (float(d["etw"]), float(d["nw"]))


def test_fixture_joint_map_and_picard(tiny_prior, deq):
  d, op, x_T, y = deq
  T = int(d["T"])
  f = jax.jit(lambda X: Q.joint_map(tiny_prior, X, x_T, y, op, Q.deqir_timesteps(T),
                                    etw=float(d["etw"])))
  X = f(jnp.broadcast_to(x_T, (T,) + x_T.shape))
  assert rel_err(X, nhwc(d["f_init"])) < 5e-6
  for _ in range(T - 1):
    X = f(X)
  assert rel_err(X, nhwc(d["picard_T"])) < 5e-6
  assert rel_err(f(X), nhwc(d["picard_T_plus_1"])) < 5e-6


def test_fixture_anderson(tiny_prior, deq):
  d, op, x_T, y = deq
  cfg = Q.DeqIRConfig(T=int(d["T"]), etw=float(d["etw"]))
  x0, info = jax.jit(lambda a, b: Q.deqir_solve(a, b, op, tiny_prior, cfg))(x_T, y)
  assert rel_err(x0, nhwc(d["anderson_x0"][0])) < 5e-6
  assert int(info.evaluations) == int(d["anderson_calls"])
  assert int(info.nfe) == int(d["anderson_calls"]) * cfg.T
  assert bool(info.converged) and float(info.residual) < cfg.tol
  assert np.isnan(np.asarray(info.residuals)[int(info.iterations):]).all()
  # Within the tolerance of the sequential chain (the exact fixed point's last slot).
  assert rel_err(x0, nhwc(d["picard_T"][-1])) < cfg.tol


# ------------------------------------------------------------------ Picard == sequential

def _picard_vs_chain(prior, op, x_T, y, T, etw, nw=0.0, noise=None, sigma_y=0.0):
  cfg = Q.DeqIRConfig(T=T, etw=etw, nw=nw, sigma_y=sigma_y, max_iter=T, **EXACT)
  x_par, info = jax.jit(lambda a, b: Q.deqir_solve(a, b, op, prior, cfg, noise=noise))(x_T, y)
  x_seq = jax.jit(lambda a, b: ddnm_chain(a, b, op, prior, T=T, etw=etw, nw=nw, noise=noise,
                                          sigma_y=sigma_y))(x_T, y)
  assert int(info.iterations) == T and int(info.evaluations) == T + 1
  return rel_err(x_par, x_seq), float(info.residual)


def test_picard_T_equals_chain_fixture_unet_inpaint_with_noise(tiny_prior):
  rng = np.random.default_rng(0)
  mask = (rng.uniform(size=(32, 32, 1)) > 0.3).astype(np.float32)
  op = Inpaint((32, 32, 3), np.broadcast_to(mask, (32, 32, 3)).copy())
  y = op.A(jnp.asarray(rng.uniform(-1, 1, (32, 32, 3)).astype(np.float32)))
  x_T, z = (jnp.asarray(rng.standard_normal((32, 32, 3)).astype(np.float32)) for _ in range(2))
  err, res = _picard_vs_chain(tiny_prior, op, x_T, y, T=4, etw=0.3, nw=0.2, noise=z)
  assert err < 5e-6 and res < 1e-6


def test_picard_T_equals_chain_shipped_prior():
  prior = load_prior("mnist32")
  c = getattr(getattr(getattr(prior.apply_fn, "module", None), "config", None), "in_channels", 3)
  op = Colorization((32, 32, 3)) if c == 3 else AvgPoolSR((32, 32, c), 2)
  rng = np.random.default_rng(1)
  y = op.A(jnp.asarray(rng.uniform(-1, 1, (32, 32, c)).astype(np.float32)))
  x_T = jnp.asarray(rng.standard_normal((32, 32, c)).astype(np.float32))
  err, res = _picard_vs_chain(prior, op, x_T, y, T=4, etw=0.1)
  assert err < 5e-6 and res < 1e-6


# ------------------------------------------------------------------ noisy measurements

def test_noisy_picard_T_equals_ddnm_plus_chain(small):
  """With sigma_y > 0 every slot takes DDNM+'s step; the map stays lower-triangular,
  so T Picard iterations give the sequential DDNM+ chain."""
  prior, op, x_T, y, _ = small
  z = jnp.asarray(np.random.default_rng(2).standard_normal(x_T.shape).astype(np.float32))
  err, res = _picard_vs_chain(prior, op, x_T, y + 0.1 * z[::2, ::2], T=4, etw=0.1, nw=0.0,
                              sigma_y=0.1)
  assert err < 5e-6 and res < 1e-6


def test_noisy_chain_is_ddnm_plus_with_one_shared_draw(gauss):
  """DeqIR's chain with sigma_y > 0 and etw = nw is the official DDNM+ sampler
  (`ddnm_sample`, the same timesteps) fed the same draw z at every step."""
  from jaxir.solvers.ddnm import DDNMConfig, ddnm_sample
  prior, op = gauss
  rng = np.random.default_rng(3)
  x_T, z = (jnp.asarray(rng.standard_normal((8, 8, 1)).astype(np.float32)) for _ in range(2))
  y = op.A(jnp.asarray(rng.uniform(-0.5, 0.5, (8, 8, 1)).astype(np.float32))) + 0.1
  T, eta, sig = 5, 0.4, 0.2
  got = ddnm_chain(x_T, y, op, prior, T=T, etw=eta, nw=eta, noise=z, sigma_y=sig)
  want, _ = ddnm_sample(x_T, jnp.broadcast_to(z, (T,) + z.shape), y, op, prior,
                        DDNMConfig(T=T, eta=eta, sigma_y=sig))
  assert rel_err(got, want) < 1e-5
  noiseless = ddnm_chain(x_T, y, op, prior, T=T, etw=eta, nw=eta, noise=z)
  assert rel_err(got, noiseless) > 1e-2  # the noise model changes the result


@pytest.mark.parametrize("task", ["denoise", "sr2", "inpaint"])
def test_noise_model_removes_the_measurement_noise(gauss, task):
  """Noisy measurements (sigma 0.2) of 4 Gaussian-prior draws, T = 25. The official
  noiseless chain passes y's noise through A^+ y (denoising returns y itself): its
  error against the truth is 1.9-2.6x the exact posterior mean's (the least-squares
  optimum, closed form) for denoising and x2 pooling. With sigma_y set, DDNM+'s steps
  bring it within 15% of the optimum there (measured: 1.05x). Inpainting 30% of the
  pixels: both stay above the optimum (DDNM's short chain), the noise-aware one closer
  (measured RMSE 0.140 against 0.149; optimum 0.122)."""
  from jaxir.operators import Identity
  from jaxir.priors.analytic import prior_covariance, sample_prior
  prior, pool = gauss
  mask = (np.random.default_rng(0).uniform(size=(8, 8, 1)) > 0.7).astype(np.float32)
  op = {"denoise": Identity((8, 8, 1)), "sr2": pool, "inpaint": Inpaint((8, 8, 1), mask)}[task]
  sigma = 0.2
  keys = jax.random.split(jax.random.key(7), 3)
  x = sample_prior(keys[0], prior, 4)
  y = jax.vmap(op.A)(x)
  y = y + sigma * jax.random.normal(keys[1], y.shape)
  A = np.asarray(jax.jacfwd(op.A)(jnp.zeros((8, 8, 1)))).reshape(-1, 64).astype(np.float64)
  cov = np.asarray(prior_covariance(prior), np.float64).reshape(64, 64)
  mu = np.full(64, 0.3)
  gain = cov @ A.T @ np.linalg.pinv(A @ cov @ A.T + sigma ** 2 * np.eye(A.shape[0]))
  post = (mu + (np.asarray(y, np.float64).reshape(4, -1) - A @ mu) @ gain.T).reshape(x.shape)
  run = lambda cfg: jax.jit(jax.vmap(lambda k, b: Q.deqir(k, b, op, prior, cfg)[0]))(
      jax.random.split(keys[2], 4), y)
  base = dict(T=25, solver="picard", max_iter=25, tol=1e-30)
  x_plain = run(Q.DeqIRConfig(**base))
  x_noise = run(Q.DeqIRConfig(sigma_y=sigma, **base))
  err = lambda a: float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(x)) ** 2)))
  if task == "denoise":
    assert rel_err(x_plain, y) < 1e-4
  if task == "inpaint":
    assert err(x_noise) < err(x_plain) and err(x_noise) < 1.2 * err(post)
    return
  assert err(x_plain) > 1.5 * err(post)
  assert err(x_noise) < 1.15 * err(post), (err(x_noise), err(post))


def test_a_blown_up_solve_is_flagged(gauss):
  """An over-relaxed iteration (beta 1e3) overflows; the solver stops on the non-finite
  residual, which `info.diverged` reports (the command refuses such a result), while a
  normal solve is not flagged."""
  prior, op = gauss
  y = op.A(jnp.full((8, 8, 1), 0.3))
  for solver in ("picard", "anderson"):
    _, info = Q.deqir(jax.random.key(0), y, op, prior,
                      Q.DeqIRConfig(T=10, beta=1e3, solver=solver, max_iter=60))
    assert bool(info.diverged) and not bool(info.converged)
  _, info = Q.deqir(jax.random.key(0), y, op, prior, Q.DeqIRConfig(T=10))
  assert not bool(info.diverged)


def test_registry_passes_the_task_noise():
  from jaxir.solvers.registry import get_solver
  spec = get_solver("deqir")
  cfg = spec.config("sr4_avgpool")
  assert cfg.sigma_y == 0.05 and cfg.triangular and spec.task_presets["sr4_avgpool"] == "taa"
  assert spec.config("sr4_avgpool", sigma_y=0.0) == Q.DeqIRConfig() == Q.DEQIR_PRESETS["official"]
  assert spec.task_presets["colorize"] == "official"
  with pytest.raises(ConfigError, match="sigma_y"):
    Q.DeqIRConfig(sigma_y=-0.1)


# ------------------------------------------------------------------ gradients

def test_implicit_gradient_matches_backprop_through_chain(small):
  """d/dx_T ||x0 - x_ref||^2 by the implicit function theorem (Picard adjoint, exact
  after T iterations) vs reverse-mode through the sequential chain; the phantom
  gradient points the same way. (||A x0 - y||^2 would be identically zero: the
  last DDNM step lands on {A x = y}.)"""
  prior, op, x_T, y, x_ref = small
  T, etw = 3, 0.1
  cfg = Q.DeqIRConfig(T=T, etw=etw, max_iter=T, **EXACT)
  loss_of = lambda x0: jnp.sum((x0 - 0.5 * x_ref) ** 2)

  @jax.jit
  def grads(a):
    g_ref = jax.grad(lambda a: loss_of(ddnm_chain(a, y, op, prior, T=T, etw=etw)))(a)
    deq = lambda a, g: loss_of(Q.deqir_solve(a, y, op, prior, cfg, grad=g)[0])
    return g_ref, jax.grad(deq)(a, "implicit"), jax.grad(deq)(a, "phantom")

  g_ref, g_imp, g_ph = grads(x_T)
  assert float(jnp.linalg.norm(g_ref)) > 0
  assert rel_err(g_imp, g_ref) < 1e-4
  cos = float(jnp.vdot(g_ph, g_ref) / (jnp.linalg.norm(g_ph) * jnp.linalg.norm(g_ref)))
  print(f"phantom-gradient cosine similarity (T={T}, 1 step, tau 0.1): {cos:.4f}")
  assert cos > 0.5


def test_init_optimization_lowers_the_loss(gauss):
  prior, op = gauss
  rng = np.random.default_rng(4)
  y = op.A(jnp.asarray(rng.uniform(-1, 1, (8, 8, 1)).astype(np.float32)))
  x_T = jnp.asarray(rng.standard_normal((8, 8, 1)).astype(np.float32))
  for grad in ("implicit", "phantom"):
    cfg = Q.DeqIRConfig(T=4, init_steps=5, init_lr=0.1, init_grad=grad)
    run = jax.jit(lambda a: (Q.optimize_init(a, y, op, prior, cfg),
                             Q.init_loss(a, y, op, prior, cfg)))
    (x_opt, losses), first = run(x_T)
    assert losses.shape == (5,) and np.isfinite(np.asarray(losses)).all()
    assert rel_err(first, losses[0]) < 1e-6
    (_, _), final = run(x_opt)
    print(f"measurement init-loss, {grad}:", np.asarray(losses).tolist(), float(final))
    assert 0 < float(final) < float(losses[0])
  with pytest.raises(ConfigError, match="x_gt"):
    Q.init_loss(x_T, y, op, prior, Q.DeqIRConfig(T=3, init_loss="ground_truth"))
  # The deqir entry point runs it and reports the curve.
  cfg = Q.DeqIRConfig(T=4, init_steps=2, init_lr=0.1, init_loss="ground_truth")
  _, info = Q.deqir(jax.random.key(0), y, op, prior, cfg, x_gt=jnp.zeros((8, 8, 1)))
  assert info.init_losses.shape == (2,)


# ------------------------------------------------------------------ batching, sharding, errors

def test_vmap_equals_loop(gauss):
  prior, op = gauss
  rng = np.random.default_rng(2)
  ys = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32))
  keys = jax.random.split(jax.random.key(3), 3)
  cfg = Q.DeqIRConfig(T=10, tol=1e-5)
  one = lambda k, y: Q.deqir(k, y, op, prior, cfg)
  xs, info = jax.jit(jax.vmap(one))(keys, ys)
  solve = jax.jit(one)
  for i in range(3):
    x, inf = solve(keys[i], ys[i])
    assert rel_err(xs[i], x) < 1e-5
    assert int(info.iterations[i]) == int(inf.iterations)  # each image stops on its own


def test_vmapped_map_is_one_network_call_on_images_x_slots(small):
  prior, op, x_T, y, _ = small
  X = jnp.zeros((2, 4, 8, 8, 3))
  hlo = jax.jit(jax.vmap(lambda X, x, y: Q.joint_map(prior, X, x, y, op,
                                                     Q.deqir_timesteps(4)))).lower(
      X, X[:, 0], jnp.stack([y, y])).as_text()
  convs = [l for l in hlo.splitlines() if "convolution" in l]
  assert convs and all("tensor<8x" in l for l in convs)  # 2 images x 4 slots


_SHARD_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxir.operators import Inpaint
from jaxir.priors.analytic import gaussian_prior
from jaxir.solvers import deqir as Q
H = 8
ii, jj = np.meshgrid(np.arange(H), np.arange(H), indexing="ij")
p = np.stack([ii.ravel(), jj.ravel()], 1)
cov = 0.04 * np.exp(-((p[:, None] - p[None]) ** 2).sum(-1) / 8.0) + 1e-4 * np.eye(H * H)
prior = gaussian_prior(np.full((H, H, 1), 0.3, np.float32), cov)
rng = np.random.default_rng(0)
op = Inpaint((H, H, 1), (rng.uniform(size=(H, H, 1)) > 0.4).astype(np.float32))
y = op.A(jnp.asarray(rng.uniform(-1, 1, (H, H, 1)).astype(np.float32)))
x_T = jnp.asarray(rng.standard_normal((H, H, 1)).astype(np.float32))
cfg = Q.DeqIRConfig(T=8, tol=1e-5)
mesh = Mesh(np.array(jax.devices()), ("slots",))
sh = NamedSharding(mesh, PartitionSpec("slots"))
out = {"devices": len(jax.devices())}
for name, s in (("sharded", sh), ("plain", None)):
  x, info = jax.jit(lambda a, b: Q.deqir_solve(a, b, op, prior, cfg, slot_sharding=s))(x_T, y)
  out[name] = np.asarray(x).tolist()
  out[name + "_evals"] = int(info.evaluations)
X = jax.device_put(jnp.broadcast_to(x_T, (8, H, H, 1)), sh)
fX = jax.jit(lambda X: Q.joint_map(prior, X, x_T, y, op, Q.deqir_timesteps(8), sharding=sh))(X)
out["map_shards"] = len(fX.sharding.device_set)
print("RESULT" + json.dumps(out))
"""


def test_slot_sharding_matches_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SHARD_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  assert out["devices"] == 4 and out["map_shards"] == 4
  np.testing.assert_allclose(np.asarray(out["sharded"]), np.asarray(out["plain"]), atol=1e-5)
  assert out["sharded_evals"] == out["plain_evals"]


def test_bad_input_is_refused(tiny_prior, deq):
  _, op, x_T, y = deq
  with pytest.raises(ConfigError, match="solver"):
    Q.DeqIRConfig(solver="broyden")
  with pytest.raises(ConfigError):
    Q.DeqIRConfig(m=0)
  with pytest.raises(ConfigError, match="init_loss"):
    Q.DeqIRConfig(init_loss="lpips")
  with pytest.raises(ShapeError, match="slots"):
    Q.joint_map(tiny_prior, jnp.zeros((3, 32, 32, 3)), x_T, y, op, Q.deqir_timesteps(4))
  with pytest.raises(ShapeError, match="x_T"):
    Q.deqir_solve(jnp.zeros((16, 16, 3)), y, op, tiny_prior, Q.DeqIRConfig(T=2))
  with pytest.raises(ConfigError, match="nw > 0"):
    Q.joint_map(tiny_prior, jnp.zeros((2, 32, 32, 3)), x_T, y, op, Q.deqir_timesteps(2), nw=0.1)
