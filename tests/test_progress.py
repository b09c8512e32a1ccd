"""Progress inside jitted solves, the NFE read from the traced program, memory estimates.

References, none of them the code under test: each solver's own `info.nfe` (computed
after the solve), the unwrapped prior's values and gradients, a closed-form byte count
(an n x n float32 intermediate), the machine's physical memory from `os.sysconf`, and a
second process with two host devices for the sharded batch.
"""
import io as pyio
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tqdm import tqdm

from jaxir import progress
from jaxir.priors.analytic import gaussian_prior
from jaxir.solvers.registry import get_solver
from jaxir.tasks import make_operator, stack_operators

H = 8
B = 2


@pytest.fixture(scope="module")
def prior():
  return gaussian_prior(np.full((H, H, 1), 0.1, np.float32), 0.2)


def _batch(task, key=0):
  op = make_operator(task, jax.random.key(key), (H, H, 1))
  xs = jax.random.uniform(jax.random.key(key + 1), (B, H, H, 1), minval=-1, maxval=1)
  ys = jax.vmap(op.A)(xs)
  ops = stack_operators([op] * B)
  return jax.random.split(jax.random.key(key + 2), B), ys, ops


# solver, task, overrides, NFE known before the run, back-propagates through the prior
CASES = [("dcdp-tweedie", "sr4_avgpool", ["K=3"], True, False),
         ("dcdp", "sr4_avgpool", ["K=3", "T0=60", "ddim_steps=5"], True, False),
         ("dps", "sr4_avgpool", ["num_steps=6"], True, True),
         ("ddnm", "sr4_avgpool", ["T=4"], True, False),
         ("deqir", "sr4_avgpool", ["T=4", "max_iter=3"], False, False)]


@pytest.mark.parametrize("name,task,overrides,fixed,diff", CASES, ids=[c[0] for c in CASES])
def test_bar_reaches_the_solvers_nfe_under_vmap(prior, name, task, overrides, fixed, diff):
  spec = get_solver(name)
  cfg = spec.config(task, overrides=overrides)
  keys, ys, ops = _batch(task)
  run = jax.jit(jax.vmap(spec.fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
  p = progress.with_progress(prior)
  traced, prof = progress.profile_solve(run, keys, ys, ops, p, cfg)
  compiled = traced.lower().compile()
  out = pyio.StringIO()
  with progress.track(prof.nfe, scale=1 / B, desc=name, file=out) as tr:
    x, info = compiled(keys, ys, ops, p)
    jax.block_until_ready(x)
  nfe = np.asarray(info.nfe)
  assert np.all(nfe == nfe[0]) and nfe[0] > 0
  assert tr.count == nfe[0]                        # one tick per image evaluation
  assert prof.nfe == (int(nfe[0]) if fixed else None)
  assert prof.differentiated == diff
  assert prof.rows == (cfg.T if name == "deqir" else 1)
  text = out.getvalue()
  assert f"{nfe[0]}/{nfe[0]}" in text if fixed else f"{nfe[0]}NFE" in text
  # The wrapper changes nothing but float32 rounding (the callback reads the network
  # output, so XLA may fuse differently): same result as the unwrapped prior.
  if name not in ("dcdp", "dps"):  # one forward-only and one differentiating solver
    return
  x_ref, _ = run(keys, ys, ops, prior, cfg)
  np.testing.assert_allclose(np.asarray(x), np.asarray(x_ref), rtol=0, atol=2e-5)


def test_off_by_default_and_values_and_gradients_unchanged(prior):
  x = jax.random.normal(jax.random.key(0), (3, H, H, 1))
  t = jnp.array([10, 500, 990])
  p = progress.with_progress(prior)
  assert progress.with_progress(p) is p and progress.without_progress(p) == prior
  out = pyio.StringIO()
  with progress.track(None, file=out) as tr:
    a = jax.jit(lambda q: q.eps(x, t))(prior)            # a library call: no callback
    jax.block_until_ready(a)
    jax.effects_barrier()
    assert tr.count == 0
    b = jax.jit(lambda q: q.eps(x, t))(p)
    jax.block_until_ready(b)
    jax.effects_barrier()
    assert tr.count == 3                                  # 3 rows in one call
  np.testing.assert_array_equal(a, b)

  def loss(q, x):
    return jnp.sum(jnp.sin(q.eps(x, t)))

  gx, gx_ref = jax.grad(loss, 1)(p, x), jax.grad(loss, 1)(prior, x)
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-6, atol=1e-7)
  gp = jax.grad(loss)(p, x).params.mean
  gp_ref = jax.grad(loss)(prior, x).params.mean
  np.testing.assert_allclose(gp, gp_ref, rtol=1e-6, atol=1e-7)
  hv = jax.jvp(lambda x: p.eps(x, t), (x,), (x,))[1]        # forward mode too
  np.testing.assert_allclose(hv, jax.jvp(lambda x: prior.eps(x, t), (x,), (x,))[1],
                             rtol=1e-6, atol=1e-7)


def test_disabled_track_shows_nothing(prior, capsys):
  with progress.track(10, disable=True) as tr:
    jax.block_until_ready(progress.with_progress(prior).eps(jnp.zeros((1, H, H, 1)),
                                                             jnp.array([3])))
  assert tr is None
  assert capsys.readouterr().err == ""


def test_tracker_raises_total_instead_of_passing_it():
  bar = tqdm(total=4, file=pyio.StringIO())
  tr = progress.Tracker(bar, scale=0.5)
  for _ in range(6):
    tr.add(2)                                             # 6 calls of 2 rows, half each
  assert tr.count == 6 and bar.n == 6 and bar.total == 6
  bar.close()


def test_constant_output_evaluates_only_input_free_outputs():
  def f(x):
    k = jnp.asarray(3, jnp.int32) * 4 + 2
    return x * 2.0, k, jnp.sum(x) + k, jnp.full((2,), 5.0)

  closed = jax.make_jaxpr(f)(jnp.ones(3))
  assert progress.constant_output(closed, 0) is None
  assert int(progress.constant_output(closed, 1)) == 14
  assert progress.constant_output(closed, 2) is None
  np.testing.assert_array_equal(progress.constant_output(closed, 3), [5.0, 5.0])


def test_memory_estimate_sees_a_quadratic_intermediate():
  def f(x):  # the sort forces the (n, n) outer product into memory
    return jnp.sum(jnp.sort(x[:, None] * x[None, :], axis=1)[:, -1])

  small = progress.memory_needed(jax.jit(f).lower(jnp.ones(256)).compile())
  n = 2048
  big = progress.memory_needed(jax.jit(f).lower(jnp.ones(n)).compile())
  assert big >= n * n * 4                                  # one float32 n x n buffer
  assert small < big / 16
  avail = progress.memory_available()
  total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  assert avail is not None and 0 < avail <= total


def test_formatting():
  assert progress.format_seconds(42) == "42 s"
  assert progress.format_seconds(16.6 * 60) == "16.6 min"
  assert progress.format_seconds(7200) == "2.0 h"
  assert progress.format_bytes(3 * 2**30) == "3.0 GB"
  assert progress.format_bytes(512 * 2**20) == "512 MB"


_SHARDED = textwrap.dedent("""
  import os
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  import io, jax, numpy as np
  from jaxir import progress
  from jaxir.parallel import data_mesh, shard_batch, replicate
  from jaxir.priors.analytic import gaussian_prior
  from jaxir.solvers.registry import get_solver
  from jaxir.tasks import make_operator, stack_operators
  assert jax.device_count() == 2
  prior = progress.with_progress(gaussian_prior(np.full((8, 8, 1), 0.1, np.float32), 0.2))
  spec = get_solver("dcdp-tweedie")
  cfg = spec.config("sr4_avgpool", overrides=["K=5"])
  op = make_operator("sr4_avgpool", jax.random.key(0), (8, 8, 1))
  xs = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  args = shard_batch((jax.random.split(jax.random.key(2), 4), jax.vmap(op.A)(xs),
                      stack_operators([op] * 4)))
  run = jax.jit(jax.vmap(spec.fn, in_axes=(0, 0, 0, None, None)), static_argnums=4)
  out = io.StringIO()
  with progress.track(5 * 4, file=out) as tr:
    x, info = run(*args, replicate(prior), cfg)
    jax.block_until_ready(x)
  print("COUNT", tr.count, int(np.asarray(info.nfe).sum()))
""")


def test_sharded_batch_counts_each_image_once(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True,
                       env=env, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  count, nfe = map(int, re.search(r"COUNT (\d+) (\d+)", res.stdout).groups())
  assert count == nfe == 20
