"""Checkpoint reading without torch, key/shape checking and exact round trips."""
import json
import os
import pickle

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch
from guided_diffusion.script_util import create_model

from references import FIXTURES
import jaxir.models as models
from jaxir.errors import CheckpointError, ConfigError
from jaxir.models import ADMUNet, read_state_dict
from jaxir.models.convert import (adm_params_from_state_dict, adm_state_dict_from_params,
                                  adm_state_dict_shapes, check_state_dict_shapes, from_torch,
                                  load_converted, main, to_torch)

FIX = f"{FIXTURES}/adm/"
PT_A = FIX + "adm_tiny_a.pt"


def kwargs_a():
  with open(FIX + "adm_tiny_a.json") as f:
    return json.load(f)


def assert_same_state_dict(got, ref, ordered=True):
  assert list(got) == list(ref) if ordered else sorted(got) == sorted(ref)
  for k in ref:
    r = ref[k].detach()
    if r.dtype == torch.bfloat16:
      assert got[k].dtype == ml_dtypes.bfloat16
      assert np.array_equal(got[k].astype(np.float32), r.float().numpy()), k
    else:
      assert got[k].dtype == r.numpy().dtype and np.array_equal(got[k], r.numpy()), k


def test_read_fixture_equals_torch_load():
  assert_same_state_dict(read_state_dict(PT_A), torch.load(PT_A, weights_only=True))


@pytest.mark.parametrize("zip_format", [True, False])
def test_read_dtypes_views_and_legacy_format(tmp_path, zip_format):
  x = torch.randn(5, 7)
  obj = {"t": x.t(), "rows": x[1:3], "bf16": torch.randn(4).bfloat16(),
         "f16": torch.arange(6.0).reshape(2, 3).half(), "empty": torch.zeros(0, 3),
         "scalar": torch.tensor(3), "param": torch.nn.Parameter(torch.randn(2, 2)),
         "i64": torch.arange(5)}
  path = tmp_path / "m.pt"
  torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
  assert_same_state_dict(read_state_dict(path), torch.load(path, weights_only=True))


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["zip", "legacy", "plain_pickle"])
def test_malicious_pickle_is_refused(tmp_path, fmt):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pt"
  obj = {"w": torch.zeros(2), "x": _Payload(marker)}
  if fmt == "plain_pickle":
    with open(path, "wb") as f:
      pickle.dump(_Payload(marker), f)
  else:
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
  with pytest.raises(CheckpointError, match=r"refusing to execute pickled code: (posix|os)\.system"):
    read_state_dict(path)
  assert not marker.exists()


def _shapes_json(name):
  with open(FIX + name + "_keys.json") as f:
    d = json.load(f)
  return d, {k: tuple(s) for k, s in d["state_dict"].items()}


@pytest.mark.parametrize("name", ["ffhq256_dps", "imagenet256_uncond"])
def test_public_checkpoint_keys_match(name):
  d, shapes = _shapes_json(name)
  assert models.get_config(name).upstream == d["config"]
  expected = adm_state_dict_shapes(name)
  assert list(expected) == list(shapes)  # same keys, in upstream state_dict order
  check_state_dict_shapes(shapes, expected)  # accepted
  assert sum(int(np.prod(s)) for s in expected.values()) == d["params"]
  # The Flax parameter tree (abstract, no arrays) holds the same number of parameters.
  cfg = models.adm_config(**d["config"])
  x = jax.ShapeDtypeStruct((1, 256, 256, 3), np.float32)
  t = jax.ShapeDtypeStruct((1,), np.int32)
  abstract = jax.eval_shape(ADMUNet(cfg).init, jax.random.key(0), x, t)
  assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(abstract)) == d["params"]


def test_mismatches_reported_in_one_error():
  _, shapes = _shapes_json("ffhq256_dps")
  expected = adm_state_dict_shapes("ffhq256_dps")
  bad = dict(shapes)
  del bad["middle_block.1.qkv.weight"]
  bad["out.2.weights"] = bad.pop("out.2.weight")
  bad["input_blocks.1.0.in_layers.2.weight"] = (64, 128, 3, 3)
  with pytest.raises(CheckpointError) as e:
    check_state_dict_shapes(bad, expected)
  lines = str(e.value).splitlines()
  assert "2 missing, 1 unexpected, 1 wrongly shaped" in lines[0]
  assert "  missing: middle_block.1.qkv.weight, out.2.weight" in lines
  assert "  unexpected: out.2.weights" in lines
  assert ("  wrong shape: input_blocks.1.0.in_layers.2.weight: expected (128, 128, 3, 3), "
          "got (64, 128, 3, 3)") in lines


def test_wrong_config_for_real_state_dict():
  sd = read_state_dict(PT_A)
  wrong = dict(kwargs_a(), num_channels=64)
  with pytest.raises(CheckpointError, match="wrongly shaped"):
    adm_params_from_state_dict(sd, wrong)
  with pytest.raises(ConfigError, match="unknown ADM config arguments"):
    adm_params_from_state_dict(sd, dict(kwargs_a(), num_chanels=32))


def test_containers_and_prefixes(tmp_path):
  ref = torch.load(PT_A, weights_only=True)
  cases = {
      "module": {"module." + k: v for k, v in ref.items()},
      "wrapped": {"state_dict": ref, "epoch": 3},
      # ermongroup: [model (DataParallel), optimizer, epoch, step, ema]
      "ermongroup": [{"module." + k: v for k, v in ref.items()},
                     {"state": {}, "param_groups": [{"lr": 2e-4}]}, 10, 5000, ref],
  }
  for name, obj in cases.items():
    path = tmp_path / f"{name}.pt"
    torch.save(obj, path)
    assert_same_state_dict(read_state_dict(path), ref)
  np.savez(tmp_path / "sd.npz", **{k: v.numpy() for k, v in ref.items()})
  assert_same_state_dict(read_state_dict(tmp_path / "sd.npz"), ref)
  bf = {"a": torch.randn(3, 2).bfloat16(), "b": torch.randn(4)}
  safetensors.torch.save_file(bf, tmp_path / "bf.safetensors")
  assert_same_state_dict(read_state_dict(tmp_path / "bf.safetensors"), bf, ordered=False)
  with pytest.raises(CheckpointError, match="does not exist"):
    read_state_dict(tmp_path / "missing.pt")


def test_to_torch_round_trip_and_strict_load(tmp_path):
  kwargs = kwargs_a()
  model, params = from_torch(PT_A, "adm", kwargs)
  path = tmp_path / "a.safetensors"
  to_torch(model, params, path)
  ref = torch.load(PT_A, weights_only=True)
  assert_same_state_dict(read_state_dict(path), ref, ordered=False)  # bit-exact
  params2 = adm_params_from_state_dict(read_state_dict(path), kwargs)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)), params, params2))
  # The written file loads strictly into guided-diffusion and reproduces its output.
  io = np.load(FIX + "adm_tiny_a_io.npz")
  outs = []
  for sd in [safetensors.torch.load_file(path), ref]:
    tm = create_model(**kwargs)
    tm.load_state_dict(sd, strict=True)
    with torch.no_grad():
      outs.append(tm.eval()(torch.from_numpy(io["x"]), torch.from_numpy(io["t"])).numpy())
  assert np.array_equal(outs[0], outs[1])  # same weights, same output
  assert np.abs(outs[0] - io["out"]).max() <= 1e-5 * np.abs(io["out"]).max()
  sd = adm_state_dict_from_params(params, kwargs)
  assert list(sd) == list(ref)  # upstream state_dict order
  assert all(np.array_equal(sd[k], ref[k].numpy()) for k in ref)


def test_converter_command_and_load(tmp_path):
  dst = tmp_path / "conv"
  assert main([PT_A, str(dst), "--arch", "adm", "--config", json.dumps(kwargs_a())]) == 0
  model, params = load_converted(dst)
  m0, p0 = from_torch(PT_A, "adm", kwargs_a())
  assert (model.config, model.dtype) == (m0.config, m0.dtype)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(p0)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)), params, p0))
  m1, _ = models.load(kwargs_a(), dst)  # a converted directory loads through `load`
  assert m1.config == m0.config


def test_load_names_and_shipped_hook():
  with pytest.raises(CheckpointError, match="imagenet256_uncond"):
    models.load("no_such_prior")
  with pytest.raises(CheckpointError, match="no shipped weights for 'ffhq256_dps'"):
    models.load("ffhq256_dps")
  with pytest.raises(CheckpointError, match="wrongly shaped"):
    models.load("ffhq256_dps", PT_A)  # the tiny checkpoint is not the FFHQ model
  sentinel = (object(), {})
  models.register_shipped("test_prior", lambda: sentinel)
  try:
    assert models.load("test_prior") is sentinel
    assert "test_prior" in models.shipped_names()
  finally:
    from jaxir.models import configs
    configs._SHIPPED.pop("test_prior")


def test_ddpm_dispatch_round_trip(tmp_path):
  ddpm_fix = f"{FIXTURES}/ddpm/"
  with open(ddpm_fix + "ddpm_tiny_a.json") as f:
    fields = json.load(f)
  pt = ddpm_fix + "ddpm_tiny_a.pt"
  model, params = from_torch(pt, "ddpm", fields)
  assert isinstance(model, models.DDPMUNet)
  ref = torch.load(pt, weights_only=True)
  assert sum(np.size(a) for a in jax.tree_util.tree_leaves(params)) == \
      sum(v.numel() for v in ref.values())
  to_torch(model, params, tmp_path / "d.safetensors")
  assert_same_state_dict(read_state_dict(tmp_path / "d.safetensors"), ref, ordered=False)
  assert main([pt, str(tmp_path / "conv"), "--arch", "ddpm", "--config", json.dumps(fields)]) == 0
  m2, p2 = load_converted(tmp_path / "conv")
  assert m2.config == model.config
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(np.array_equal(a, b)), params, p2))
  # The named CelebA-HQ config is the public checkpoint's architecture.
  with open(ddpm_fix + "celebahq256_ddpm_keys.json") as f:
    d = json.load(f)
  nc = models.get_config("celebahq256_ddpm")
  assert nc.arch == "ddpm"
  assert {k: list(v) if isinstance(v, tuple) else v for k, v in nc.upstream.items()} == \
      d["config"]
  from jaxir.models.ddpm import ddpm_state_dict_shapes
  shapes = ddpm_state_dict_shapes(models.ddpm_config(**nc.upstream))
  assert {k: tuple(v) for k, v in d["state_dict"].items()} == shapes
  with pytest.raises(ConfigError, match="arch 'ddpm'"):
    from_torch(pt, "adm", "celebahq256_ddpm")
