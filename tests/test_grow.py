"""Growing an ADM U-Net deeper keeps its function (jaxir.train.grow)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxir.errors import ConfigError
from jaxir.models.adm import ADMUNet
from jaxir.models.convert.adm import (adm_params_from_state_dict, adm_state_dict_from_params,
                                      as_adm_config)
from jaxir.train.grow import deepen_state_dict, deepened_kwargs

KW = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
          attention_resolutions="4", num_heads=2, learn_sigma=False, class_cond=False,
          use_checkpoint=False, num_head_channels=-1, num_heads_upsample=-1,
          use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
          use_new_attention_order=False, in_channels=1)


def _random_state_dict(kw, seed):
  """A state dict with every weight random (no zero-initialized layers)."""
  cfg = as_adm_config(kw)
  x = jnp.zeros((1, 16, 16, 1))
  params = ADMUNet(cfg).init(jax.random.key(seed), x, jnp.zeros((1,), jnp.int32))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [0.1 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]
  return adm_state_dict_from_params(jax.tree.unflatten(tree, leaves), cfg)


@pytest.mark.parametrize("blocks", [2, 3])
def test_deepened_unet_computes_the_same_function(blocks):
  small = _random_state_dict(KW, 0)
  deep_kw = deepened_kwargs(KW, blocks)
  fresh = _random_state_dict(deep_kw, 5)
  grown = deepen_state_dict(small, KW, blocks, fresh)
  assert set(grown) == set(fresh)
  x = jax.random.normal(jax.random.key(9), (2, 16, 16, 1))
  t = jnp.array([3, 700])
  cfg_s, cfg_d = as_adm_config(KW), as_adm_config(deep_kw)
  y_small = ADMUNet(cfg_s).apply(adm_params_from_state_dict(small, cfg_s), x, t)
  y_deep = ADMUNet(cfg_d).apply(adm_params_from_state_dict(grown, cfg_d), x, t)
  y_fresh = ADMUNet(cfg_d).apply(adm_params_from_state_dict(fresh, cfg_d), x, t)
  scale = float(jnp.abs(y_small).max())
  np.testing.assert_allclose(y_deep, y_small, atol=1e-5 * scale)
  assert float(jnp.abs(y_fresh - y_small).max()) > 0.1 * scale  # the test can fail
  # the new blocks are trainable: their non-residual weights are the fresh ones
  assert np.array_equal(grown["input_blocks.2.0.in_layers.2.weight"],
                        fresh["input_blocks.2.0.in_layers.2.weight"])


def test_deepen_refuses_mismatched_input():
  small = _random_state_dict(KW, 0)
  with pytest.raises(ConfigError, match="must exceed"):
    deepened_kwargs(KW, 1)
  fresh = _random_state_dict(deepened_kwargs(KW, 2), 5)
  with pytest.raises(ConfigError, match="does not fit"):
    deepen_state_dict(small, {**KW, "channel_mult": "1,2"}, 2, fresh)
