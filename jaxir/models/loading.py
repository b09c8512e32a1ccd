"""Loading a diffusion U-Net by name or path, and the registry of shipped priors.

`load(name, path)` reads a public checkpoint (a named config from
`jaxir.models.named_configs`) or a converted folder; `load(name)` without a
path returns a shipped prior: weights that come with jaxir, or any loader
added with `register_shipped`.

jaxir's own priors (`SHIPPED`) are `<name>.safetensors` (EMA weights under
guided-diffusion state-dict keys) plus `<name>.json` (the `create_model`
arguments and the training record) in the checkpoint folder:
`$JAXIR_CHECKPOINTS` if set, else the repository's `checkpoints/` (next to the
`jaxir/` package, in a clone or an editable install), else
`jaxir/checkpoints/` inside an installed wheel (where the build maps the
repository's folder). See `checkpoints/README.md` for the model cards.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable

from jaxir.errors import CheckpointError, ConfigError
from jaxir.models.convert import from_torch, load_converted
from jaxir.models.named_configs import NAMED_CONFIGS

__all__ = ["load", "register_shipped", "shipped_names", "SHIPPED", "checkpoint_dir",
           "shipped_meta", "load_shipped", "export_card"]

SHIPPED = ("mnist32", "natural64")

# name -> loader(dtype=None) -> (model, params), filled by `register_shipped`.
_SHIPPED: dict[str, Callable[..., tuple]] = {}


def register_shipped(name: str, loader: Callable[[], tuple]) -> None:
  """Register a shipped prior: `load(name)` (no path) then returns `loader()`.

  Args:
    name: the prior's name.
    loader: zero-argument callable returning (model, params), e.g. reading a
      converted checkpoint under `checkpoints/` with `load_converted`; it is
      called with `dtype=` when `load` is given one.
  """
  if not callable(loader):
    raise ConfigError(f"loader for {name!r} must be callable; got {type(loader).__name__}.")
  _SHIPPED[name] = loader


def shipped_names() -> list[str]:
  """Names `load` accepts without a path."""
  return sorted(_SHIPPED)


def load(name_or_config: Any, path: str | os.PathLike | None = None, *, arch: str | None = None,
         dtype: Any = None) -> tuple:
  """Load a diffusion U-Net as (model, params).

  Args:
    name_or_config: a name in `NAMED_CONFIGS` (or a shipped prior), a dict of
      upstream arguments, or an `ADMConfig`. None (or a shipped prior's name) with
      a jaxir export as `path` (`<stem>.safetensors` with `<stem>.json` beside it,
      what `experiments/train_prior.py` writes): the architecture comes from that card.
    path: the checkpoint: a PyTorch/safetensors/npz file (converted on the
      fly) or a directory written by the converter (`load_converted`). None
      loads a shipped prior.
    arch: "adm" or "ddpm" when `name_or_config` is a dict (default "adm").
    dtype: compute dtype (default float32).

  Returns:
    (model, params) with `model.apply(params, x, t)`.
  """
  if path is None:
    if isinstance(name_or_config, str) and name_or_config in _SHIPPED:
      loader = _SHIPPED[name_or_config]
      return loader() if dtype is None else loader(dtype=dtype)
    if isinstance(name_or_config, str) and name_or_config in NAMED_CONFIGS:
      c = NAMED_CONFIGS[name_or_config]
      raise CheckpointError(f"no shipped weights for {name_or_config!r}; download {c.source} "
                            f"and pass path=. Shipped priors: {shipped_names()}.")
    raise CheckpointError(f"unknown prior {name_or_config!r} and no path given; shipped priors: "
                          f"{shipped_names()}, named configs (need path=): "
                          f"{sorted(NAMED_CONFIGS)}.")
  if os.path.isdir(path):
    return load_converted(path, dtype=dtype)
  if name_or_config is None or (isinstance(name_or_config, str) and name_or_config in SHIPPED):
    card = export_card(path)
    if card is None:
      raise CheckpointError(
          f"{path}: no jaxir export card ({Path(path).with_suffix('.json').name}) beside it, "
          f"so its architecture is unknown; pass the model arguments (a dict or a named "
          f"config: {sorted(NAMED_CONFIGS)}) instead of {name_or_config!r}.")
    return from_torch(str(path), arch=card.get("arch", "adm"), config=dict(card["model"]),
                      dtype=dtype)
  return from_torch(path, arch=arch, config=name_or_config, dtype=dtype)


def export_card(path: str | os.PathLike) -> dict | None:
  """The JSON card beside a jaxir export `<stem>.safetensors` (None if there is none)."""
  p = Path(path)
  js = p.with_suffix(".json")
  if p.suffix != ".safetensors" or not js.is_file():
    return None
  with open(js) as f:
    card = json.load(f)
  return card if isinstance(card, dict) and isinstance(card.get("model"), dict) else None


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
  st, _ = _files(name)
  meta = shipped_meta(name)
  return from_torch(str(st), arch=meta.get("arch", "adm"), config=dict(meta["model"]),
                    dtype=dtype)


for _name in SHIPPED:
  register_shipped(_name, functools.partial(load_shipped, _name))
