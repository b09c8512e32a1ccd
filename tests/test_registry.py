"""The solver registry: every entry point's one table of solvers and presets."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxir.errors import ConfigError, NaNError, ShapeError
from jaxir.operators import AvgPoolSR, Blur, CircularBlur, PhaseRetrieval, gaussian_blur
from jaxir.solvers import ddnm, ddrm
from jaxir.priors.analytic import gaussian_prior
from jaxir.solvers import registry
from jaxir.tasks import TASKS

# Each solver at a tiny setting (a few network calls), for the smoke solve below.
TINY = {"dcdp": dict(K=2, T0=100, ddim_steps=2, tau=3), "dcdp-tweedie": dict(K=2, T0=100, tau=3),
        "dps": dict(num_steps=4), "ddnm": dict(T=4), "ddrm": dict(steps=4), "diffpir": dict(steps=4),
        "pigdm": dict(steps=4), "deqir": dict(T=4, max_iter=6),
        "bird": dict(iterations=2, delta_t=250)}


def test_every_task_has_a_config_for_every_solver():
  for name in registry.solver_names():
    spec = registry.get_solver(name)
    for task in TASKS:
      cfg = spec.config(task)
      assert isinstance(cfg, spec.config_cls)
    assert spec.presets, name


def test_names_overrides_and_errors():
  with pytest.raises(ConfigError, match="unknown solver 'nope'.*dcdp"):
    registry.get_solver("nope")
  spec = registry.get_solver("dps")
  with pytest.raises(ConfigError, match="unknown task"):
    spec.config("nope")
  with pytest.raises(ConfigError, match="no field 'bogus'"):
    spec.config("sr4", overrides=["bogus=1"])
  with pytest.raises(ConfigError, match="KEY=VALUE"):
    spec.config("sr4", overrides=["num_steps"])
  cfg = spec.config("sr4", overrides=["num_steps=7", "variance=fixed_small"])
  assert (cfg.num_steps, cfg.variance) == (7, "fixed_small")
  assert registry.parse_overrides(["a=1", "b=0.5", "c=true", "d=none", "e=x"]) == dict(
      a=1, b=0.5, c=True, d=None, e="x")
  # the noise level reaches the config where the solver has one
  assert spec.config("sr4", sigma_y=0.1).sigma_y == 0.1
  assert registry.get_solver("dcdp").config("gaussian_deblur", prior="mnist32").mu > 0


def test_operator_requirements():
  shape = (8, 8, 1)
  blur = gaussian_blur(shape, size=3, sigma=1.0)
  assert isinstance(blur, Blur) and not hasattr(blur, "singulars")
  pr = PhaseRetrieval(shape, oversample=2.0)
  for name in registry.solver_names():
    spec = registry.get_solver(name)
    assert spec.supports(AvgPoolSR(shape, scale=2)) and spec.supports(blur)
    if spec.requires != "any":
      assert not spec.supports(pr)
      with pytest.raises(ConfigError, match="needs"):
        spec.check_operator(pr)


@pytest.mark.parametrize("name", ["ddrm", "ddnm"])
def test_svd_solvers_run_a_blur_in_its_circular_form(name):
  """A reflect-padded Blur reaches DDRM/DDNM as CircularBlur.from_blur: same result as
  passing that form by hand."""
  shape = (8, 8, 1)
  prior = gaussian_prior(jnp.zeros(shape), 0.5 * jnp.ones(shape))
  blur = gaussian_blur(shape, size=3, sigma=1.0)
  spec = registry.get_solver(name)
  cfg = spec.config("gaussian_deblur", overrides=TINY[name])
  y = blur.A(0.3 * jax.random.normal(jax.random.key(2), shape))
  x1, _ = spec.fn(jax.random.key(0), y, blur, prior, cfg)
  solver = {"ddrm": ddrm, "ddnm": ddnm}[name]
  x2, _ = solver(jax.random.key(0), y, CircularBlur.from_blur(blur), prior, cfg)
  np.testing.assert_allclose(x1, x2, atol=1e-6)


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_solver_runs_from_the_registry(name):
  """Registered function + task config run jitted and vmapped on an analytic prior, and
  the same key gives the same result."""
  shape = (8, 8, 1)
  prior = gaussian_prior(jnp.zeros(shape), 0.5 * jnp.ones(shape))
  spec = registry.get_solver(name)
  task = "sr4_avgpool"
  cfg = spec.config(task, overrides=TINY[name])
  op = AvgPoolSR(shape, scale=2)
  spec.check_operator(op)
  x = jax.random.normal(jax.random.key(1), (2,) + shape) * 0.5
  y = jax.vmap(op.A)(x)
  keys = jax.random.split(jax.random.key(0), 2)
  run = jax.jit(jax.vmap(spec.fn, in_axes=(0, 0, None, None, None)), static_argnums=4)
  xh, info = run(keys, y, op, prior, cfg)
  xh2, _ = run(keys, y, op, prior, cfg)
  assert xh.shape == (2,) + shape and bool(jnp.all(jnp.isfinite(xh)))
  np.testing.assert_array_equal(np.asarray(xh), np.asarray(xh2))
  assert TINY[name].keys() <= {f.name for f in dataclasses.fields(cfg)}


@pytest.mark.parametrize("name", registry.solver_names())
def test_every_solver_names_a_bad_measurement(name):
  """A measurement with NaN or of the wrong shape, or an operator for another channel count
  than the prior's, stops every solver with a named error before any computation (a concrete
  y; under jit only the shapes can be checked)."""
  shape = (8, 8, 1)
  prior = gaussian_prior(jnp.zeros(shape), 0.5 * jnp.ones(shape))
  op = AvgPoolSR(shape, scale=2)
  spec = registry.get_solver(name)
  cfg = spec.config("sr4_avgpool", overrides=TINY[name])
  y = op.A(0.3 * jax.random.normal(jax.random.key(2), shape))
  with pytest.raises(NaNError, match="measurement y contains NaN"):
    spec.fn(jax.random.key(0), y.at[1, 2, 0].set(jnp.nan), op, prior, cfg)
  with pytest.raises(ShapeError, match=r"y has shape \(1, 4, 4, 1\).*jax.vmap"):
    spec.fn(jax.random.key(0), y[None], op, prior, cfg)
  rgb = AvgPoolSR((8, 8, 3), scale=2)  # a 3-channel operator for the grey prior
  with pytest.raises(ShapeError, match=r"takes \(8, 8, 3\) images but the prior models 1-ch"):
    spec.fn(jax.random.key(0), rgb.A(jnp.zeros((8, 8, 3))), rgb, prior, cfg)
  x, _ = jax.jit(spec.fn, static_argnums=4)(jax.random.key(0), y, op, prior, cfg)  # traced y
  assert x.shape == shape
