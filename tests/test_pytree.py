"""jaxir.pytree: dataclass pytrees whose structure includes their class.

With `flax.struct` (jax 0.10.2's `register_dataclass`), tree structures of two
classes with the same static values compared equal, and `jax.jit` then ran, in
about one call in 40, the program traced for the other class (DiffPIR's data
step for `BicubicSR` came back as `AvgPoolSR`'s; jaxir/pytree.py).
"""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxir import pytree
from jaxir.operators.color import Colorization
from jaxir.operators.denoise import Identity
from jaxir.operators.inpaint import Inpaint
from jaxir.operators.superres import AvgPoolSR, BicubicSR
from jaxir.solvers.diffpir import proximal


def test_different_classes_have_different_structures():
  pairs = [(AvgPoolSR((8, 8, 1), 2), BicubicSR((8, 8, 1), 2)),
           (Identity((4, 4, 3)), Colorization((4, 4, 3)))]
  for a, b in pairs:
    assert jax.tree.structure(a) != jax.tree.structure(b)
    assert jax.tree.structure(a) == jax.tree.structure(type(a)(**{
        f.name: getattr(a, f.name) for f in dataclasses.fields(a)}))
  assert jax.tree.structure(AvgPoolSR((8, 8, 1), 2)) != jax.tree.structure(AvgPoolSR((8, 8, 1), 4))


def test_jit_never_runs_another_class_program():
  # Many fresh class pairs with the same fields and static values, each through its own jitted
  # function: with register_dataclass a few percent of the pairs got the first class's program.
  def node_class(name):
    return type(name, (pytree.PyTreeNode,), {"__annotations__": {"n": int, "w": jax.Array},
                                             "n": pytree.field(pytree_node=False)})

  bad = []
  for i in range(200):
    a_cls, b_cls = node_class(f"A{i}"), node_class(f"B{i}")
    f = jax.jit(lambda p: p.w * (1.0 if type(p).__name__.startswith("A") else 2.0))
    w = jnp.ones(())
    got = (float(f(a_cls(3, w))), float(f(b_cls(3, w))))
    if got != (1.0, 2.0):
      bad.append((i, got))
  assert not bad, bad


def test_operators_through_one_jitted_function():
  # The case that failed: one jitted data step called with AvgPoolSR, then BicubicSR.
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(-1, 1, (8, 8, 1)), jnp.float32)
  y = jnp.asarray(rng.uniform(-1, 1, (4, 4, 1)), jnp.float32)
  prox = jax.jit(proximal)
  for op in (AvgPoolSR((8, 8, 1), 2), BicubicSR((8, 8, 1), 2)):
    np.testing.assert_allclose(prox(op, y, x0, 1e-3), proximal(op, y, x0, 1e-3), atol=1e-5)


def test_flatten_unflatten_keys_and_replace():
  mask = (np.arange(16).reshape(4, 4, 1) % 3 > 0).astype(np.float32)
  op = Inpaint((4, 4, 1), mask)
  leaves, treedef = jax.tree.flatten(op)
  back = jax.tree.unflatten(treedef, leaves)
  assert type(back) is Inpaint and back.in_shape == (4, 4, 1)
  np.testing.assert_array_equal(back.mask, op.mask)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(op)[0]]
  assert ".mask" in paths
  # Inpaint keeps its own replace (a new mask gets a new permutation).
  other = op.replace(mask=1.0 - mask)
  assert not np.array_equal(np.asarray(other._perm()), np.asarray(op._perm()))
  assert BicubicSR((8, 8, 1), 2).replace(scale=4).scale == 4
  with pytest.raises(dataclasses.FrozenInstanceError):
    op.in_shape = (2, 2, 1)


def test_unflatten_runs_post_init_and_init_false_is_refused():
  seen = []

  class Node(pytree.PyTreeNode):
    x: jax.Array
    k: int = pytree.field(pytree_node=False, default=1)

    def __post_init__(self):
      seen.append(type(self.x))

  jax.tree.map(lambda v: v + 1, Node(jnp.ones(2)))
  assert len(seen) == 2                     # construction, then the rebuilt node
  with pytest.raises(TypeError, match="init=False"):
    class Bad(pytree.PyTreeNode):           # noqa: F841
      x: int = dataclasses.field(init=False, default=0)


def test_no_module_registers_with_flax_struct():
  root = pathlib.Path(__file__).resolve().parents[1] / "jaxir"
  users = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "pytree.py"
           and ("from flax import struct" in p.read_text() or "flax.struct" in p.read_text())]
  assert not users, f"use jaxir.pytree instead of flax.struct in {users}"
