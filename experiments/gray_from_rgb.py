"""Turn a 3-channel ADM prior trained on grey-replicated images into a 1-channel prior.

  python experiments/gray_from_rgb.py checkpoints/mnist32 runs/mnist32_gray/mnist32

The first convolution's weights are summed over the input channels (a grey
image replicated to RGB gives the same features) and the output convolution is
averaged over its three outputs (the grey eps is the mean of the three
channels' eps), so eps_gray(x) = mean_c eps_rgb(x, x, x) exactly, up to float32
rounding, which the script checks before writing. The result is a starting
point for fine-tuning (`train_prior.py --config mnist32 --init-from ...`): the
shipped mnist32 was trained this way from its 3-channel predecessor.
"""
from __future__ import annotations

import json
import sys


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 2:
    print(__doc__, file=sys.stderr)
    return 2
  src, dst = argv
  import os

  import jax
  import jax.numpy as jnp
  import numpy as np
  from safetensors.numpy import load_file

  from jaxir.models.convert import from_torch
  from jaxir.models.state_dict import write_safetensors

  sd = dict(load_file(src + ".safetensors"))
  with open(src + ".json") as f:
    meta = json.load(f)
  if meta.get("channels", 3) != 3:
    raise SystemExit(f"{src}: the prior has {meta.get('channels')} channels; expected 3.")
  w_in, w_out, b_out = (sd["input_blocks.0.0.weight"], sd["out.2.weight"], sd["out.2.bias"])
  sd["input_blocks.0.0.weight"] = w_in.sum(axis=1, keepdims=True)
  sd["out.2.weight"] = w_out.mean(axis=0, keepdims=True)
  sd["out.2.bias"] = b_out.mean(axis=0, keepdims=True)
  meta = dict(meta, channels=1, model=dict(meta["model"], in_channels=1),
              converted_from=f"{os.path.basename(src)} (3 channels) by experiments/gray_from_rgb.py")
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  write_safetensors(dst + ".safetensors", sd)
  with open(dst + ".json", "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)

  # Check: the grey model equals the channel mean of the RGB model on grey inputs.
  rgb_model, rgb = from_torch(src + ".safetensors", "adm", {k: v for k, v in meta["model"].items()
                                                            if k != "in_channels"})
  gray_model, gray = from_torch(dst + ".safetensors", "adm", meta["model"])
  s = meta["image_size"]
  x = jax.random.uniform(jax.random.key(0), (4, s, s, 1), minval=-1.0, maxval=1.0)
  t = jnp.array([10, 300, 700, 999], jnp.int32)
  want = rgb_model.apply(rgb, jnp.repeat(x, 3, axis=-1), t).mean(axis=-1, keepdims=True)
  got = gray_model.apply(gray, x, t)
  err = float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))
  print(f"wrote {dst}.safetensors/.json; relative max error against the RGB model: {err:.2e}")
  return 0 if err < 1e-4 and np.isfinite(err) else 1


if __name__ == "__main__":
  sys.exit(main())
