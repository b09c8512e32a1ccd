"""The wheel's layout: every package listed, the shipped priors mapped in as package data."""
import tomllib
from pathlib import Path

import jaxir
from jaxir.models import shipped

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_and_checkpoints_are_mapped():
  cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
  listed = set(cfg["packages"])
  found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "jaxir").rglob("__init__.py")}
  assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
  assert cfg["package-dir"]["jaxir.checkpoints"] == "checkpoints"
  data = cfg["package-data"]["jaxir.checkpoints"]
  for name in shipped.SHIPPED:
    for suffix in (".safetensors", ".json"):
      f = ROOT / "checkpoints" / f"{name}{suffix}"
      assert f.is_file() and any(f.match(pat) for pat in data), f


def test_checkpoint_dir_in_a_clone(monkeypatch):
  monkeypatch.delenv("JAXIR_CHECKPOINTS", raising=False)
  assert shipped.checkpoint_dir() == Path(jaxir.__file__).resolve().parents[1] / "checkpoints"
  monkeypatch.setenv("JAXIR_CHECKPOINTS", "/somewhere")
  assert shipped.checkpoint_dir() == Path("/somewhere")
