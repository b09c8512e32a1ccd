"""What jaxir sets at import (in fresh interpreters): the compilation cache, CPU devices and flags."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
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
  from jaxir import runtime
  out = _probe({"JAXIR_COMPILATION_CACHE": "", "XDG_CACHE_HOME": str(tmp_path / "c")}, tmp_path)
  name = "xla" if runtime._bounded() else "xla-unbounded"
  assert out["dir"] == str(tmp_path / "c" / "jaxir" / name)


def test_entries_without_access_time_are_repaired(tmp_path):
  # An unbounded writer (an environment without filelock) leaves entries without their
  # "-atime" file; JAX's bounded cache then failed every write. jaxir writes the missing ones.
  from jaxir import runtime
  (tmp_path / "old-cache").write_bytes(b"x")
  (tmp_path / "kept-cache").write_bytes(b"y")
  (tmp_path / "kept-atime").write_bytes((5).to_bytes(8, "little"))
  assert runtime.repair_access_times(tmp_path) == 1
  assert (tmp_path / "old-atime").read_bytes() == (0).to_bytes(8, "little")
  assert (tmp_path / "kept-atime").read_bytes() == (5).to_bytes(8, "little")
  assert runtime.repair_access_times(tmp_path) == 0
  if runtime._bounded():  # then a real write into such a folder must succeed, silently
    folder = tmp_path / "xla"
    folder.mkdir()
    (folder / "stale-cache").write_bytes(b"z")
    env = {"JAXIR_COMPILATION_CACHE": str(folder), "PYTHONWARNINGS": "error::UserWarning"}
    _probe(env, tmp_path)
    assert len(list(folder.glob("jit_*-cache"))) >= 1


CPU_PROBE = """
import json, os, sys
pre = sys.argv[1] == "started"
if sys.argv[1] == "onecore":  # as under `taskset -c 0`
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
if pre:
  import jax
  jax.devices()  # backends start before jaxir is imported: jaxir must leave them
import warnings
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  import jaxir
import jax, jax.numpy as jnp
warned = any("host devices" in str(w.message) for w in caught)
conv = lambda x, w: jax.nn.silu(jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = jax.jit(conv).lower(jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text()
in_ynn = "ynn_fusion" in hlo  # XLA's default puts this conv + SiLU in a YNNPACK fusion
print(json.dumps({"devices": jax.device_count(), "flags": os.environ.get("XLA_FLAGS", ""),
                  "warned": warned, "conv_in_ynn": in_ynn}))
"""


def _cpu_probe(env_extra, tmp_path, mode="fresh"):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "JAXIR_CPU_SETTINGS")}
  env.update(env_extra, JAXIR_COMPILATION_CACHE="0", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", CPU_PROBE, mode], env=env, capture_output=True,
                     text=True, cwd=tmp_path, timeout=300)
  assert r.returncode == 0, r.stderr
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_cpu_settings_keep_a_users_device_count():
  from jaxir import runtime
  cores = len(os.sched_getaffinity(0))
  got = runtime.cpu_settings({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"})
  assert got == {"num_cpu_devices": cores if cores > 1 else None}
  assert runtime.cpu_settings(
      {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})["num_cpu_devices"] is None
  assert runtime.cpu_settings({"JAX_NUM_CPU_DEVICES": "5"})["num_cpu_devices"] is None


def _without(d, key="conv_in_ynn"):
  return {k: v for k, v in d.items() if k != key}


def test_import_applies_cpu_settings_unless_told_or_too_late(tmp_path):
  from jaxir import runtime
  cores = len(os.sched_getaffinity(0))
  out = _cpu_probe({}, tmp_path)
  assert _without(out) == {"devices": max(cores, 1), "warned": False,
                           "flags": "" if cores > 1 else runtime.EIGEN_XLA_FLAG}
  off = _cpu_probe({"JAXIR_CPU_SETTINGS": "0"}, tmp_path)
  assert _without(off) == {"devices": 1, "flags": "", "warned": False}
  users = _cpu_probe({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, tmp_path)
  assert users["devices"] == 3 and not users["warned"]
  assert users["flags"] == "--xla_force_host_platform_device_count=3"
  late = _cpu_probe({}, tmp_path, mode="started")
  assert _without(late) == {"devices": 1, "flags": "", "warned": False}


def test_one_core_process_gets_eigen_convolutions_everywhere(tmp_path):
  # One usable core: one host device, nothing to race with, so every program gets XLA's
  # Eigen convolutions (no YNNPACK fusion around the convolution), not only jaxir's own.
  from jaxir import runtime
  one = _cpu_probe({}, tmp_path, mode="onecore")
  assert one == {"devices": 1, "flags": runtime.EIGEN_XLA_FLAG, "warned": False,
                 "conv_in_ynn": False}
  kept = _cpu_probe({"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}, tmp_path, mode="onecore")
  assert kept["flags"] == f"--xla_cpu_enable_fast_math=false {runtime.EIGEN_XLA_FLAG}"
  assert not kept["conv_in_ynn"]
  for env in ({"JAXIR_EIGEN_CONV": "0"}, {"JAXIR_CPU_SETTINGS": "0"}, {"JAX_NUM_CPU_DEVICES": "1"}):
    assert _cpu_probe(env, tmp_path, mode="onecore")["flags"] == "", env
  own = f"{runtime.UNSAFE_XLA_FLAG}=individual_dot"
  assert _cpu_probe({"XLA_FLAGS": own}, tmp_path, mode="onecore")["flags"] == own


def test_import_warns_about_the_racing_flag_with_several_devices(tmp_path):
  from jaxir import runtime
  flags = f"--xla_force_host_platform_device_count=2 {runtime.UNSAFE_XLA_FLAG}=reduce"
  assert _cpu_probe({"XLA_FLAGS": flags}, tmp_path)["warned"]
  one = _cpu_probe({"XLA_FLAGS": f"{runtime.UNSAFE_XLA_FLAG}=reduce", "JAXIR_CPU_SETTINGS": "0"},
                   tmp_path)
  assert one["devices"] == 1 and not one["warned"]


def test_single_device_options_and_their_switches():
  from jaxir import runtime
  cpu = jax.devices("cpu")[0]
  assert runtime.single_device_options(cpu, {}) == runtime.SINGLE_DEVICE_OPTIONS
  assert runtime.single_device_options(cpu, {"JAXIR_EIGEN_CONV": "0"}) == {}
  assert runtime.single_device_options(cpu, {"JAXIR_CPU_SETTINGS": "off"}) == {}
  flags = {"XLA_FLAGS": f"{runtime.UNSAFE_XLA_FLAG}=individual_dot"}
  assert runtime.single_device_options(cpu, flags) == {}  # the caller's own choice stays
  # XLA accepts the options (a wrong enum name would fail here) and the result is unchanged.
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 8)) / 8.0
  conv = lambda x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
  a = jax.jit(conv)(x)
  b = jax.jit(conv, compiler_options=runtime.SINGLE_DEVICE_OPTIONS)(x)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
