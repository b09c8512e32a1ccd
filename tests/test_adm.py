"""ADMUNet against guided-diffusion's UNetModel: upstream fixtures and random configs."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from guided_diffusion.script_util import create_model
from guided_diffusion.unet import UNetModel

from jaxir.diffusion import ddim_sample
from jaxir.errors import ConfigError, ShapeError
from jaxir.models import ADMConfig, ADMUNet, adm_config, from_torch
from jaxir.models.convert import adm_params_from_state_dict, count_params
from references import FIXTURES

FIX = f"{FIXTURES}/adm/"


def rel_max_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


def nhwc(a):
  return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


@functools.lru_cache(maxsize=None)
def _load(name):
  with open(FIX + name + ".json") as f:
    kwargs = json.load(f)
  model, params = from_torch(FIX + name + ".pt", "adm", kwargs)
  jitted = jax.jit(model.apply)

  def apply(x, t, y=None):
    """Runs image by image so that one compilation (batch 1) serves every test."""
    x, t = np.asarray(x), np.asarray(t)  # host arrays: the same compile-cache entry always
    y = None if y is None else np.asarray(y)
    # Host callbacks run with the default device set; set it here too so the
    # sampler's callback reuses this compilation.
    with jax.default_device(jax.devices("cpu")[0]):
      outs = [jitted(params, x[i:i + 1], t[i:i + 1], None if y is None else y[i:i + 1])
              for i in range(x.shape[0])]
    return jnp.concatenate(outs)

  return name, kwargs, model, params, apply


@pytest.fixture(params=["adm_tiny_a", "adm_tiny_b"])
def fixture_model(request):
  return _load(request.param)


def test_fixture_forward_and_param_count(fixture_model):
  name, kwargs, model, params, apply = fixture_model
  io = np.load(FIX + name + "_io.npz")
  y = jnp.asarray(io["y"]) if "y" in io else None
  out = apply(nhwc(io["x"]), jnp.asarray(io["t"]), y)
  assert out.dtype == jnp.float32
  assert rel_max_err(out, io["out"].transpose(0, 2, 3, 1)) <= 1e-5
  torch_count = sum(p.numel() for p in create_model(**kwargs).parameters())
  assert count_params(params) == torch_count


def test_fixture_ddim(fixture_model):
  """ddim_sample with the converted model reproduces upstream's ddim_sample_loop.

  The model runs through its already compiled `apply` (a host callback inside
  the sampler's scan) so the test compiles the U-Net once, not once per scan.
  """
  name, _, model, params, apply = fixture_model
  d = np.load(FIX + name + "_ddim.npz")
  y = jnp.asarray(d["y"]) if "y" in d else None
  out_c = model.config.out_channels

  def fn(x, t):
    shape = jax.ShapeDtypeStruct(x.shape[:-1] + (out_c,), jnp.float32)
    return jax.pure_callback(lambda x, t: np.asarray(apply(x, t, y)), shape, x, t)

  for clip, key in [(True, "sample_clipped"), (False, "sample_unclipped")]:
    x0 = ddim_sample(fn, nhwc(d["noise"]), [int(t) for t in d["timesteps"]],
                     eta=float(d["eta"]), clip_denoised=clip)
    assert rel_max_err(x0, d[key].transpose(0, 2, 3, 1)) <= 1e-4, key


def test_bfloat16_error():
  """bfloat16 compute stays within 1e-2 relative max error of float32 (measured ~2-3e-3)."""
  name, _, model, params, _ = _load("adm_tiny_a")
  io = np.load(FIX + name + "_io.npz")
  ref = io["out"].transpose(0, 2, 3, 1)
  out = jax.jit(model.clone(dtype=jnp.bfloat16).apply)(params, nhwc(io["x"]),
                                                        jnp.asarray(io["t"]))
  assert out.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  err = rel_max_err(out, ref)
  assert 1e-5 < err < 1e-2  # really computed in bfloat16, and close


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or p.ndim == 1:
        p.copy_(0.1 * torch.randn(p.shape, generator=g) + (1.0 if "norm" in name or
                                                             "layers.0.weight" in name else 0.0))
      else:
        fan_in = p[0].numel()
        p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
  return model.eval()


RANDOM_CONFIGS = {
    # create_model path: num_heads_upsample != num_heads, mult 3, attention at ds 2 only
    # (input, middle and output blocks), new attention order, scale-shift norm, conv resampling.
    "heads_upsample": ("create_model", dict(
        image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,3",
        learn_sigma=True, class_cond=False, attention_resolutions="8", num_heads=2,
        num_head_channels=-1, num_heads_upsample=4, use_scale_shift_norm=True,
        resblock_updown=False, use_new_attention_order=True)),
    # UNetModel path: 1 res block, half-width first level, attention at ds 1 and 4,
    # num_head_channels, resblock up/down, no conv resampling, class conditional.
    "half_mult_no_conv": ("unet", dict(
        image_size=16, in_channels=3, model_channels=64, out_channels=3, num_res_blocks=1,
        attention_resolutions=(1, 4), channel_mult=(0.5, 1, 1), conv_resample=False,
        num_classes=5, num_heads=1, num_head_channels=16, use_scale_shift_norm=False,
        resblock_updown=False, use_new_attention_order=False)),
}


@pytest.mark.parametrize("name", sorted(RANDOM_CONFIGS))
def test_random_config_matches_torch(name):
  kind, kwargs = RANDOM_CONFIGS[name]
  torch.manual_seed(0)
  tm = create_model(**kwargs) if kind == "create_model" else UNetModel(**kwargs)
  tm = _randomize(tm, seed=1)
  cfg = adm_config(**kwargs) if kind == "create_model" else ADMConfig(**kwargs)
  sd = {k: v.numpy() for k, v in tm.state_dict().items()}
  params = adm_params_from_state_dict(sd, kwargs if kind == "create_model" else cfg)
  assert count_params(params) == sum(p.numel() for p in tm.parameters())

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
  t = np.array([3, 871])
  y = np.array([1, 4]) if cfg.num_classes else None
  with torch.no_grad():
    ref = tm(torch.from_numpy(x), torch.from_numpy(t),
             None if y is None else torch.from_numpy(y)).numpy()
  out = jax.jit(ADMUNet(cfg).apply)(params, nhwc(x), jnp.asarray(t),
                                    None if y is None else jnp.asarray(y))
  assert np.abs(ref).max() > 0.1  # a non-trivial output
  assert rel_max_err(out, ref.transpose(0, 2, 3, 1)) <= 1e-5


def test_adm_config_follows_create_model():
  kw = dict(image_size=256, num_channels=128, num_res_blocks=1, attention_resolutions="32,16",
            learn_sigma=True, class_cond=True)
  tm = create_model(**kw)
  cfg = adm_config(**kw)
  assert cfg.channel_mult == tuple(tm.channel_mult)
  assert cfg.attention_resolutions == tuple(tm.attention_resolutions)
  assert (cfg.out_channels, cfg.num_classes) == (tm.out_channels, tm.num_classes)
  with pytest.raises(ConfigError, match="channel_mult"):
    adm_config(image_size=48, num_channels=32, num_res_blocks=1)


def test_bad_inputs_raise_named_errors(fixture_model):
  name, kwargs, model, params, _ = fixture_model
  with pytest.raises(ShapeError, match="NHWC"):
    model.apply(params, jnp.zeros((1, 3, 32, 32)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ShapeError, match=r"\(1, 32, 32, 1\); this network takes 3-channel images"):
    model.apply(params, jnp.zeros((1, 32, 32, 1)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ShapeError, match="multiples of"):
    model.apply(params, jnp.zeros((1, 31, 31, 3)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ConfigError, match="class-conditional"):
    y = None if kwargs["class_cond"] else jnp.zeros((1,), jnp.int32)
    model.apply(params, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32), y)
