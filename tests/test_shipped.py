"""The shipped priors: files load with no path, equal the upstream PyTorch U-Net on the same
weights, and denoise held-out images better than the noisy input does.

The channel count is each prior's own (its card's `channels`: mnist32 is being
retrained with 1, natural64 has 3), so these tests hold for either checkpoint."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxir
from jaxir import io
from jaxir.cli import EXAMPLES
from jaxir.diffusion import q_sample
from jaxir.metrics import psnr
from jaxir.models import SHIPPED, checkpoint_dir
from jaxir.tasks import prior_channels


def upstream_net(model_kwargs: dict):
  """guided-diffusion's U-Net for a card's `model` kwargs, in eval mode.

  `create_model` fixes 3 image channels; a card with `in_channels` (jaxir's one
  addition, 1 for grey priors) builds the same `UNetModel` with that many input
  and output channels, which `UNetModel` itself takes.
  """
  import guided_diffusion.script_util as su
  kw = dict(model_kwargs)
  c = int(kw.pop("in_channels", 3))
  if c == 3:
    return su.create_model(**kw).eval()
  unet = su.UNetModel

  def with_channels(**a):
    a["in_channels"], a["out_channels"] = c, 2 * c if kw.get("learn_sigma") else c
    return unet(**a)

  su.UNetModel = with_channels
  try:
    return su.create_model(**kw).eval()
  finally:
    su.UNetModel = unet


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_prior_matches_upstream_torch(name):
  from safetensors.torch import load_file
  model, params = jaxir.models.load(name)
  meta = json.loads((checkpoint_dir() / f"{name}.json").read_text())
  c = int(meta["model"].get("in_channels", 3))
  assert meta.get("channels", 3) == c
  net = upstream_net(meta["model"])
  net.load_state_dict(load_file(str(checkpoint_dir() / f"{name}.safetensors")), strict=True)
  side = 32
  x = jax.random.normal(jax.random.key(0), (2, side, side, c))
  t = jnp.array([10, 600])
  ours = np.asarray(model.apply(params, x, t))
  with torch.no_grad():
    ref = net(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2)).float(),
              torch.from_numpy(np.array(t))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, atol=2e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("name,image", [("mnist32", "mnist32_heldout_0012.png"),
                                        ("natural64", "kodim23_128.png")])
def test_tweedie_denoising_beats_noisy_input_on_heldout(name, image):
  prior = jaxir.priors.load_prior(name)
  x0 = jnp.asarray(io.read_image(EXAMPLES / image, size=32 if name == "mnist32" else 64,
                                 channels=prior_channels(prior)))[None]
  for t in (100, 300):
    abar = prior.schedule.alphas_cumprod[t]
    xt = q_sample(x0, abar, jax.random.normal(jax.random.key(t), x0.shape))
    naive = jnp.clip(xt / jnp.sqrt(abar), -1, 1)  # unbiased rescaled noisy image
    den = jnp.clip(prior.x0(xt, jnp.array([t])), -1, 1)
    p_naive = float(psnr((naive + 1) / 2, (x0 + 1) / 2)[0])
    p_den = float(psnr((den + 1) / 2, (x0 + 1) / 2)[0])
    assert p_den > p_naive + 3.0, (t, p_den, p_naive)
