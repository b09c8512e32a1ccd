"""Immutable dataclass pytrees whose tree structure includes their class.

jaxir's operators, priors, schedules and training state are frozen dataclasses
registered as pytree nodes: fields marked `field(pytree_node=False)` are static
(part of the tree structure, hashed by `jax.jit`), the others are leaves. The
API is `flax.struct`'s (`PyTreeNode`, `dataclass`, `field`, `.replace`).

Why not `flax.struct` itself: it registers classes with
`jax.tree_util.register_dataclass`, and with jax 0.10.2 two such tree structures
compare EQUAL when their static values and leaves match, whatever their classes
and field names (their hashes differ). `jax.jit`'s dispatch cache compares keys
with that equality, so when two keys meet in its hash table (about 1 call in
40 here) a call with one class runs the program traced for the other:
`proximal(BicubicSR((8, 8, 1), 2), ...)` returned `AvgPoolSR((8, 8, 1), 2)`'s
data step, silently (tests/test_pytree.py). Registering with
`jax.tree_util.register_pytree_with_keys` puts the class in the structure, so
different classes never share a compiled program.

Unflattening calls the class with every field as a keyword (`__post_init__`
runs), as `register_dataclass` does; key paths are `GetAttrKey(name)` for the
leaves, so orbax checkpoints of these trees keep their layout. The price is
Python flattening: a jitted call taking an operator dispatches in about 11
instead of 6 microseconds (2-core Intel Xeon, 2026-12-02), nothing beside a
U-Net evaluation.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TypeVar, dataclass_transform

import jax

__all__ = ["field", "dataclass", "PyTreeNode"]

_MARK = "_jaxir_pytree"


def field(pytree_node: bool = True, *, metadata=None, **kwargs):
  """A dataclass field; `pytree_node=False` makes it static (part of the structure)."""
  return dataclasses.field(metadata={**(metadata or {}), "pytree_node": pytree_node}, **kwargs)


TNode = TypeVar("TNode", bound="PyTreeNode")


def _replace(self: TNode, **changes) -> TNode:
  """A copy with the given fields replaced."""
  return dataclasses.replace(self, **changes)


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls=None, **kwargs):
  """Make `cls` a (by default frozen) dataclass and register it as a pytree node.

  Args:
    cls: the class.
    **kwargs: passed to `dataclasses.dataclass` (`frozen=True` unless given).

  Returns:
    the class, with a `replace(**changes)` method.
  """
  if cls is None:
    return functools.partial(dataclass, **kwargs)
  if _MARK in cls.__dict__:
    return cls
  kwargs.setdefault("frozen", True)
  cls = dataclasses.dataclass(**kwargs)(cls)
  fields = dataclasses.fields(cls)
  bad = [f.name for f in fields if not f.init]
  if bad:
    raise TypeError(f"{cls.__name__}: fields {bad} have init=False; a pytree node is rebuilt "
                    "by calling the class with every field, so give them init=True.")
  data = tuple(f.name for f in fields if f.metadata.get("pytree_node", True))
  meta = tuple(f.name for f in fields if not f.metadata.get("pytree_node", True))
  keys = tuple(jax.tree_util.GetAttrKey(n) for n in data)

  def flatten_with_keys(x):
    return ([(k, getattr(x, n)) for k, n in zip(keys, data)],
            tuple(getattr(x, n) for n in meta))

  def flatten(x):
    return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

  def unflatten(aux, children):
    return cls(**dict(zip(meta, aux)), **dict(zip(data, children)))

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
  if not hasattr(cls, "replace"):
    cls.replace = _replace
  setattr(cls, _MARK, True)
  return cls


@dataclass_transform(field_specifiers=(field,))
class PyTreeNode:
  """Base class: every subclass is a frozen `dataclass` pytree node.

  Keyword arguments of the class statement go to `dataclasses.dataclass`.
  """

  def __init_subclass__(cls, **kwargs):
    dataclass(cls, **kwargs)

  replace = _replace
