"""The persistent compilation cache jaxir turns on at import (in fresh interpreters)."""
import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import jax, jax.numpy as jnp
import jaxir
from jaxir import runtime
out = {"dir": runtime.compilation_cache_dir()}
if out["dir"]:
  runtime.enable_compilation_cache(out["dir"], min_compile_secs=0.0)
  jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)(jnp.ones((8, 8))).block_until_ready()
print(json.dumps(out))
"""


def _probe(env_extra, tmp_path):
  env = dict(os.environ, **env_extra)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                     cwd=tmp_path, timeout=300)
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_cache_in_the_given_folder_and_off_switch(tmp_path):
  folder = tmp_path / "xla"
  out = _probe({"JAXIR_COMPILATION_CACHE": str(folder)}, tmp_path)
  assert out["dir"] == str(folder)
  assert any(p.name.startswith("jit_") for p in folder.iterdir())  # a program was stored
  assert _probe({"JAXIR_COMPILATION_CACHE": "0"}, tmp_path)["dir"] is None


def test_default_folder_follows_xdg(tmp_path):
  out = _probe({"JAXIR_COMPILATION_CACHE": "", "XDG_CACHE_HOME": str(tmp_path / "c")}, tmp_path)
  assert out["dir"] == str(tmp_path / "c" / "jaxir" / "xla")
