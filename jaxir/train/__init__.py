"""Training jaxir's own diffusion priors (eps-prediction DDPM, data parallel).

`train_and_evaluate(get_config("mnist32"), workdir)` trains or resumes a run;
`experiments/train_prior.py` is its command line.

Layer: imports `jaxir.models`, `jaxir.diffusion`, `jaxir.parallel`, `jaxir.priors`
(lazily) and `jaxir.errors`; only the top layer (`jaxir.experiment`, `experiments/`)
imports it.
"""
from jaxir.train.configs import CONFIG_NAMES, TrainConfig, get_config
from jaxir.train.data import (MNIST_HOLDOUT, NATURAL_GRAY, NATURAL_HOLDOUT, NATURAL_TRAIN,
                              ImageBank, image_bank, load_image, mnist32, natural_images,
                              sample_images, sample_patches)
from jaxir.train.placement import PLACEMENTS, Placement, choose_placement
from jaxir.train.step import model_train_step
from jaxir.train.trainer import (TrainState, build_model, checkpoint_manager, create_train_state,
                                 data_mesh, diffusion_loss, export_prior, load_data,
                                 make_apply_fn, make_batch_sampler, make_eval_loss,
                                 make_optimizer, make_train_step, restore_or_init, sample_grid,
                                 save_grid, step_keys, train_and_evaluate)

__all__ = ["CONFIG_NAMES", "TrainConfig", "get_config", "MNIST_HOLDOUT", "NATURAL_GRAY",
           "NATURAL_HOLDOUT", "NATURAL_TRAIN", "ImageBank", "image_bank", "load_image", "mnist32",
           "natural_images", "sample_images", "sample_patches", "TrainState", "build_model",
           "checkpoint_manager", "create_train_state", "data_mesh", "diffusion_loss",
           "export_prior", "load_data", "make_apply_fn", "make_batch_sampler", "make_eval_loss",
           "make_optimizer", "make_train_step", "restore_or_init", "sample_grid", "save_grid",
           "step_keys", "train_and_evaluate", "PLACEMENTS", "Placement", "choose_placement",
           "model_train_step"]
