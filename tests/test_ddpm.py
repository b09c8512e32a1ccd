"""The ermongroup DDPM U-Net against the upstream fixture and diffusers' UNet2DModel."""
import dataclasses
import json

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxir.diffusion import ddim_sample
from jaxir.errors import CheckpointError, ConfigError, ShapeError
from jaxir.models import ddpm as D
from references import FIXTURES, rel_err

FIX = f"{FIXTURES}/ddpm/"


def nhwc(a):
  return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def load_pt(path):
  return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}


@pytest.fixture(scope="module")
def tiny_a():
  cfg = D.ddpm_config(**json.load(open(FIX + "ddpm_tiny_a.json")))
  sd = load_pt(FIX + "ddpm_tiny_a.pt")
  model = D.DDPMUNet.from_config(cfg)
  params = D.ddpm_params_from_state_dict(sd, cfg)
  return cfg, sd, model, params, jax.jit(model.apply)


def test_fixture_forward_matches_upstream(tiny_a):
  _, _, _, params, apply = tiny_a
  z = np.load(FIX + "ddpm_tiny_a_io.npz")
  out = apply(params, nhwc(z["x"]), jnp.asarray(z["t"], jnp.int32))
  assert out.shape == (3, 32, 32, 3) and out.dtype == jnp.float32
  assert rel_err(out, np.transpose(z["out"], (0, 2, 3, 1))) <= 1e-5


def test_fixture_ddim_matches_upstream(tiny_a):
  _, _, _, params, apply = tiny_a
  z = np.load(FIX + "ddpm_tiny_a_ddim.npz")
  assert float(z["eta"]) == 0.0
  model_fn = lambda x, t: apply(params, x, t)
  # Float32 sensitivity of the 10-step chain: a 1e-6 relative change of eps moves
  # the clipped sample by about 5e-5 (clipping recomputes eps from the clipped x0).
  for clip, key, tol in [(True, "sample_clipped", 3e-4), (False, "sample_unclipped", 2e-5)]:
    x = ddim_sample(model_fn, nhwc(z["noise"]), z["timesteps"], clip_denoised=clip)
    assert rel_err(x, np.transpose(z[key], (0, 2, 3, 1))) <= tol, key


def test_fixture_round_trip_exact(tiny_a):
  cfg, sd, _, params, _ = tiny_a
  back = D.ddpm_state_dict_from_params(params, cfg)
  assert list(back) == list(sd)  # upstream key order too
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
  again = D.ddpm_params_from_state_dict(back, cfg)
  jax.tree.map(np.testing.assert_array_equal, again, params)
  # DataParallel 'module.' prefix and the unused 'logvar' of 'bayesian' models are accepted.
  prefixed = {"module." + k: v for k, v in sd.items()} | {"module.logvar": np.zeros(1000, np.float32)}
  jax.tree.map(np.testing.assert_array_equal, D.ddpm_params_from_state_dict(prefixed, cfg), params)


def test_timestep_embedding_closed_form():
  t = np.array([0, 1, 17, 999])
  emb = np.asarray(D.ddpm_timestep_embedding(t, 64), np.float64)
  f = np.exp(-np.log(10000.0) * np.arange(32) / 31)
  ref = np.concatenate([np.sin(t[:, None] * f), np.cos(t[:, None] * f)], 1)
  assert np.max(np.abs(emb - ref)) < 1e-4  # float32 arguments up to 999 rad


# ----------------------------------------------------------------------------- key checker

@pytest.fixture(scope="module")
def celebahq():
  j = json.load(open(FIX + "celebahq256_ddpm_keys.json"))
  return D.ddpm_config(**j["config"]), {k: tuple(v) for k, v in j["state_dict"].items()}, j["params"]


def test_celebahq_keys_accepted(celebahq):
  cfg, shapes, count = celebahq
  expected = D.ddpm_state_dict_shapes(cfg)
  assert list(expected) == list(shapes)
  assert expected == shapes
  assert sum(int(np.prod(s)) for s in expected.values()) == count
  assert D.check_ddpm_keys(shapes, cfg) == "ermongroup"
  diff = D.ddpm_state_dict_shapes(cfg, "diffusers")
  assert len(diff) == len(shapes) and D.check_ddpm_keys(diff, cfg) == "diffusers"


def test_celebahq_keys_all_problems_in_one_error(celebahq):
  cfg, shapes, _ = celebahq
  bad = dict(shapes)
  del bad["down.3.block.1.conv2.weight"]
  bad["mid.attn_1.qq.weight"] = bad.pop("mid.attn_1.q.weight")
  bad["up.5.block.2.nin_shortcut.weight"] = (512, 1024, 3, 3)
  with pytest.raises(CheckpointError) as e:
    D.check_ddpm_keys(bad, cfg)
  msg = str(e.value)
  for name in ["down.3.block.1.conv2.weight", "mid.attn_1.q.weight", "mid.attn_1.qq.weight",
               "up.5.block.2.nin_shortcut.weight"]:
    assert name in msg
  assert "2 missing" in msg and "1 unexpected" in msg and "1 keys with wrong shapes" in msg
  # A checkpoint of another size is refused, not silently truncated.
  with pytest.raises(CheckpointError):
    D.check_ddpm_keys(shapes, dataclasses.replace(cfg, ch_mult=(1, 1, 2, 2, 4)))


# ----------------------------------------------------------------------------- diffusers

def _random_diffusers(cfg, seed):
  torch.manual_seed(seed)
  model = diffusers.UNet2DModel(**D.ddpm_config_to_diffusers(cfg)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:  # GroupNorm affine is 1 / 0 at init
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return model


@pytest.mark.parametrize("fields", [
    dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
         in_channels=3, resolution=32, resamp_with_conv=True),
    dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(32,),
         in_channels=1, resolution=32, resamp_with_conv=True),
])
def test_diffusers_unet_matches(fields):
  cfg = D.ddpm_config(**fields)
  ref = _random_diffusers(cfg, seed=len(fields["attn_resolutions"]))
  assert D.ddpm_config_from_diffusers(dict(ref.config)) == cfg
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  assert D.check_ddpm_keys({k: v.shape for k, v in sd.items()}, cfg) == "diffusers"
  params = D.ddpm_params_from_state_dict(sd, cfg)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, cfg.in_channels, 32, 32)).astype(np.float32)
  t = np.array([3, 777])
  with torch.no_grad():
    want = ref(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  got = jax.jit(D.DDPMUNet.from_config(cfg).apply)(params, nhwc(x), jnp.asarray(t, jnp.int32))
  assert rel_err(got, np.transpose(want, (0, 2, 3, 1))) <= 1e-5

  # Inverse in both namings; ermongroup keys read back to the same params.
  back = D.ddpm_state_dict_from_params(params, cfg, naming="diffusers")
  assert set(back) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
  ermon = D.ddpm_state_dict_from_params(params, cfg)
  assert D.check_ddpm_keys({k: v.shape for k, v in ermon.items()}, cfg) == "ermongroup"
  jax.tree.map(np.testing.assert_array_equal, D.ddpm_params_from_state_dict(ermon, cfg), params)

  # Older diffusers attention names (query/key/value/proj_attn) give the same params.
  old = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
         .replace("to_out.0.", "proj_attn."): v for k, v in sd.items()}
  assert old.keys() != sd.keys()
  jax.tree.map(np.testing.assert_array_equal, D.ddpm_params_from_state_dict(old, cfg), params)


def test_diffusers_wrong_config_one_error():
  cfg = D.ddpm_config(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), resolution=32)
  sd = {k: np.zeros(s, np.float32) for k, s in D.ddpm_state_dict_shapes(cfg, "diffusers").items()}
  del sd["mid_block.attentions.0.to_k.bias"]
  sd["up_blocks.0.resnets.1.conv1.weight"] = np.zeros((64, 95, 3, 3), np.float32)
  sd["up_blocks.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError) as e:
    D.ddpm_params_from_state_dict(sd, cfg)
  for name in ["mid_block.attentions.0.to_k.bias", "up_blocks.0.resnets.1.conv1.weight",
               "up_blocks.0.extra.weight"]:
    assert name in str(e.value)
  bad = dict(D.ddpm_config_to_diffusers(cfg), flip_sin_to_cos=True, norm_eps=1e-5)
  with pytest.raises(ConfigError, match="flip_sin_to_cos.*norm_eps|norm_eps.*flip_sin_to_cos"):
    D.ddpm_config_from_diffusers(bad)


# ----------------------------------------------------------------------------- blocks, dtype

def test_resampling_without_conv_matches_torch():
  x = np.random.default_rng(1).standard_normal((2, 4, 8, 6)).astype(np.float32)
  tx = torch.from_numpy(x)
  down = D.Downsample(with_conv=False).apply({}, nhwc(x))
  up = D.Upsample(with_conv=False).apply({}, nhwc(x))
  np.testing.assert_allclose(down, nhwc(torch.nn.functional.avg_pool2d(tx, 2, 2).numpy()), rtol=1e-6)
  np.testing.assert_array_equal(up, nhwc(torch.nn.functional.interpolate(tx, scale_factor=2.0,
                                                                         mode="nearest").numpy()))
  cfg = D.ddpm_config(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16,
                      resamp_with_conv=False)
  keys = D.ddpm_state_dict_shapes(cfg)
  assert not any("sample" in k for k in keys) and "down.0.block.0.conv1.weight" in keys


def test_bfloat16_compute_and_shape_errors(tiny_a):
  cfg, _, model, params, apply = tiny_a
  z = np.load(FIX + "ddpm_tiny_a_io.npz")
  x, t = nhwc(z["x"][1:2]), jnp.asarray(z["t"][1:2], jnp.int32)
  out16 = jax.jit(D.DDPMUNet.from_config(cfg, dtype=jnp.bfloat16).apply)(params, x, t)
  assert out16.dtype == jnp.float32
  assert rel_err(out16, np.transpose(z["out"][1:2], (0, 2, 3, 1))) < 5e-2
  with pytest.raises(ShapeError, match=r"\(30, 30\) must be multiples of \d+ for \d+ levels"):
    model.apply(params, jnp.zeros((1, 30, 30, 3)), t)
  with pytest.raises(ShapeError, match="NHWC"):
    model.apply(params, jnp.zeros((1, 3, 32, 32)), t)
  with pytest.raises(ConfigError, match="unknown"):
    D.ddpm_config(ch=32, chmult=(1, 2))
