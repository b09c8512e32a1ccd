"""Training batches: the dataset of a config, sampled on device and sharded over the mesh."""
from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxir.errors import ConfigError
from jaxir.parallel import data_mesh
from jaxir.train import data as data_lib
from jaxir.train.configs import TrainConfig
from jaxir.train.state import memo_jit

__all__ = ["load_data", "make_batch_sampler"]


def load_data(config: TrainConfig, arrays=None):
  """(train_data, eval_data) for `make_batch_sampler`; eval_data may be None.

  mnist32: (N, 32, 32, C) arrays (N = 4,500, or 9,500 with `data["extra_digits"]`);
  natural: `ImageBank`s of the train and held-out photographs (held-out only when every
  source package is installed);
  array: `arrays` = (train, eval or None) as given.
  """
  if config.dataset == "mnist32":
    c, extra = config.channels, bool(dict(config.data).get("extra_digits", False))
    return (data_lib.mnist32("train", channels=c, extra_digits=extra),
            data_lib.mnist32("holdout", channels=c))
  if config.dataset == "natural":
    d = dict(config.data)
    src = d.get("sources")
    train = data_lib.image_bank(data_lib.natural_images(
        "train", include_gray=d.get("include_gray", False), sources=src))
    try:
      held = data_lib.image_bank(data_lib.natural_images("holdout", sources=src))
    except ConfigError:
      if src is None:
        raise
      held = None
    return train, held
  if arrays is None:
    raise ConfigError("dataset 'array' needs arrays=(train, eval) passed to train_and_evaluate.")
  return arrays


def make_batch_sampler(config: TrainConfig, mesh: Mesh | None = None) -> Callable:
  """Jitted `sample(data, key, batch_size) -> batch`, the batch sharded over "data"."""
  mesh = data_mesh() if mesh is None else mesh
  return memo_jit("sampler", config, mesh, None, lambda: _make_batch_sampler(config, mesh))


def _make_batch_sampler(config, mesh):
  shard = NamedSharding(mesh, P("data"))
  if config.dataset == "natural":
    d = dict(config.data)
    fn = lambda data, key, n: data_lib.sample_patches(
        key, data, n, d.get("patch_size", config.image_size), d.get("max_crop", 256))
  else:
    fn = lambda data, key, n: data_lib.sample_images(key, data, n)
  return jax.jit(fn, static_argnums=2, out_shardings=shard)
