"""What jaxir sets at import (in fresh interpreters): the compilation cache, CPU devices and flags."""
import json
import os
import subprocess
import sys

import pytest

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


CPU_PROBE = """
import json, os, sys
pre = sys.argv[1] == "started"
if pre:
  import jax
  jax.devices()  # backends start before jaxir is imported: jaxir must leave them
import jaxir, jax
print(json.dumps({"devices": jax.device_count(), "flags": os.environ.get("XLA_FLAGS", "")}))
"""


def _cpu_probe(env_extra, tmp_path, mode="fresh"):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAXIR_CPU_SETTINGS")}
  env.update(env_extra, JAXIR_COMPILATION_CACHE="0", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", CPU_PROBE, mode], env=env, capture_output=True,
                     text=True, cwd=tmp_path, timeout=300)
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_cpu_settings_per_use_and_a_users_choice_kept():
  from jaxir import runtime
  cores = len(os.sched_getaffinity(0))
  solve = runtime.cpu_settings("solve", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
  assert solve["xla_flags"] == f"--xla_cpu_enable_fast_math=false {runtime.SOLVE_XLA_FLAG}"
  assert solve["num_cpu_devices"] == (cores if cores > 1 else None)
  assert runtime.cpu_settings("train", {})["xla_flags"] is None  # training: no solving flag
  kept = runtime.cpu_settings("solve", {
      "XLA_FLAGS": "--xla_force_host_platform_device_count=3 "
                   "--xla_cpu_experimental_ynn_fusion_type=default"})
  assert kept == {"num_cpu_devices": None, "xla_flags": None}
  assert runtime.cpu_settings("solve", {"JAX_NUM_CPU_DEVICES": "5"})["num_cpu_devices"] is None
  with pytest.raises(ValueError, match="use must be one of"):
    runtime.cpu_settings("inference")


def test_import_applies_cpu_settings_unless_told_or_too_late(tmp_path):
  from jaxir import runtime
  cores = len(os.sched_getaffinity(0))
  out = _cpu_probe({}, tmp_path)
  assert out["devices"] == max(cores, 1)
  assert runtime.SOLVE_XLA_FLAG in out["flags"]
  train = _cpu_probe({"JAXIR_CPU_SETTINGS": "train"}, tmp_path)
  assert train["devices"] == max(cores, 1) and runtime.SOLVE_XLA_FLAG not in train["flags"]
  off = _cpu_probe({"JAXIR_CPU_SETTINGS": "0"}, tmp_path)
  assert off == {"devices": 1, "flags": ""}
  users = _cpu_probe({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, tmp_path)
  assert users["devices"] == 3
  late = _cpu_probe({}, tmp_path, mode="started")
  assert late == {"devices": 1, "flags": ""}
