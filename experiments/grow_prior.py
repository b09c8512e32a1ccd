"""Grow an exported ADM prior to a deeper training config, keeping its function.

  python experiments/grow_prior.py --from checkpoints/mnist32.safetensors \
      --config mnist32_deep --out runs/grown/mnist32_deep.safetensors
  python experiments/train_prior.py --config mnist32_deep --workdir runs/m32deep \
      --init-from runs/grown/mnist32_deep.safetensors ...

The checkpoint's card (`<from>.json`, `model`) gives its architecture; the config
must differ only in `num_res_blocks` (`jaxir.train.grow`). Prints the largest
difference between the two networks' eps on random inputs (float32 rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--from", dest="src", required=True, help="exported prior (.safetensors)")
  ap.add_argument("--config", required=True, help="deeper training config, e.g. mnist32_deep")
  ap.add_argument("--out", required=True, help="output .safetensors (for --init-from)")
  ap.add_argument("--seed", type=int, default=0, help="init key of the new blocks")
  args = ap.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from jaxir.errors import ConfigError
  from jaxir.models.adm import ADMUNet
  from jaxir.models.convert import to_torch
  from jaxir.models.convert.adm import (adm_params_from_state_dict,
                                        adm_state_dict_from_params, as_adm_config)
  from jaxir.models.state_dict import read_state_dict
  from jaxir.train import get_config
  from jaxir.train.grow import deepen_state_dict

  with open(os.path.splitext(args.src)[0] + ".json") as f:
    small_kw = json.load(f)["model"]
  cfg = get_config(args.config)
  deep_kw = dict(cfg.model)
  others = {k for k in set(small_kw) | set(deep_kw)
            if k != "num_res_blocks" and small_kw.get(k) != deep_kw.get(k)}
  if others:
    raise ConfigError(f"config {args.config!r} differs from {args.src} in {sorted(others)}, "
                      "not only num_res_blocks; pick the matching deeper config.")
  s, c = cfg.image_size, cfg.channels
  cfg_small, cfg_deep = as_adm_config(small_kw), as_adm_config(deep_kw)
  deep = ADMUNet(cfg_deep)
  fresh = adm_state_dict_from_params(
      deep.init(jax.random.key(args.seed), jnp.zeros((1, s, s, c)), jnp.zeros((1,), jnp.int32)),
      cfg_deep)
  small = read_state_dict(args.src)
  grown = adm_params_from_state_dict(
      deepen_state_dict(small, small_kw, deep_kw["num_res_blocks"], fresh), cfg_deep)
  x = jax.random.normal(jax.random.key(1), (4, s, s, c))
  t = jnp.array([10, 250, 600, 990])
  e_small = ADMUNet(cfg_small).apply(adm_params_from_state_dict(small, cfg_small), x, t)
  e_deep = deep.apply(grown, x, t)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  to_torch(deep, grown, args.out)
  print(f"{args.src} ({small_kw['num_res_blocks']} blocks/level) -> {args.out} "
        f"({deep_kw['num_res_blocks']}); max |eps difference| "
        f"{float(jnp.abs(e_deep - e_small).max()):.2e} (eps scale "
        f"{float(jnp.abs(e_small).max()):.2f})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
