"""jaxir's own trained priors, loadable with no path: `jaxir.models.load("mnist32")`.

Each shipped prior is `<name>.safetensors` (EMA weights under guided-diffusion
state-dict keys) plus `<name>.json` (the `create_model` arguments and the
training record) in the checkpoint folder: `$JAXIR_CHECKPOINTS` if set, else
the repository's `checkpoints/` (next to the `jaxir/` package, in a clone or an
editable install), else `jaxir/checkpoints/` inside an installed wheel (where
the build maps the repository's folder). See `checkpoints/README.md` for the
model cards.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from jaxir.errors import CheckpointError
from jaxir.models.configs import register_shipped

__all__ = ["SHIPPED", "checkpoint_dir", "shipped_meta", "load_shipped"]

SHIPPED = ("mnist32", "natural64")


def checkpoint_dir() -> Path:
  """The folder holding the shipped priors."""
  env = os.environ.get("JAXIR_CHECKPOINTS")
  if env:
    return Path(env)
  package = Path(__file__).resolve().parents[1]
  clone = package.parent / "checkpoints"
  if (clone / f"{SHIPPED[0]}.json").is_file():
    return clone
  return package / "checkpoints"


def _files(name: str) -> tuple[Path, Path]:
  d = checkpoint_dir()
  st, js = d / f"{name}.safetensors", d / f"{name}.json"
  missing = [str(p) for p in (st, js) if not p.is_file()]
  if missing:
    raise CheckpointError(f"shipped prior {name!r}: missing {missing}. Install jaxir from a "
                          "wheel or a full clone (the files live in checkpoints/), or set "
                          "JAXIR_CHECKPOINTS to the folder holding them.")
  return st, js


def shipped_meta(name: str) -> dict:
  """The JSON card of a shipped prior (model arguments, training record)."""
  _, js = _files(name)
  with open(js) as f:
    return json.load(f)


def load_shipped(name: str, dtype=None) -> tuple:
  """(model, params) of shipped prior `name` (see `SHIPPED`)."""
  from jaxir.models.convert import from_torch
  st, _ = _files(name)
  meta = shipped_meta(name)
  return from_torch(str(st), arch=meta.get("arch", "adm"), config=dict(meta["model"]),
                    dtype=dtype)


for _name in SHIPPED:
  register_shipped(_name, functools.partial(load_shipped, _name))
