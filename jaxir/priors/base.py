"""The prior interface every solver takes: a diffusion model as a pytree.

A `Prior` holds a pure `apply_fn(params, x, t)` (static), its `params` (leaves)
and the `Schedule` it was trained with. Network priors (converted checkpoints,
the shipped priors) and analytic priors (Gaussian, GMM) are the same type, so
solvers are tested against closed-form posteriors with the code they run on
networks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxir import pytree

from jaxir.diffusion.ddim import split_eps, x0_from_eps
from jaxir.diffusion.schedule import Schedule, get_schedule

__all__ = ["Prior", "make_prior", "module_apply_fn", "model_prior"]


class Prior(pytree.PyTreeNode):
  """A diffusion prior.

  Attributes:
    apply_fn: static `apply_fn(params, x, t) -> raw output`, x (N, H, W, C) in
      [-1, 1] scale, t int32 (N,); output C (eps) or 2C (eps, learned sigma).
    params: the model's parameters (any pytree).
    schedule: the training noise schedule.
    image_shape: static (H, W, C) the prior was trained on (None: any size).
  """
  apply_fn: Callable = pytree.field(pytree_node=False)
  params: Any
  schedule: Schedule
  image_shape: tuple | None = pytree.field(pytree_node=False, default=None)

  def model(self, x, t):
    """Raw model output for (N, H, W, C) x and int (N,) t."""
    return self.apply_fn(self.params, x, t)

  def eps(self, x, t):
    """Predicted noise eps(x_t, t), (N, H, W, C)."""
    return split_eps(self.model(x, t), x.shape[-1])

  def x0(self, x, t):
    """Tweedie estimate E[x0 | x_t] implied by eps, unclipped."""
    abar = self.schedule.alphas_cumprod[t].reshape((-1,) + (1,) * (x.ndim - 1))
    return x0_from_eps(x, self.eps(x, t), abar)


def make_prior(apply_fn: Callable, params: Any, schedule: Schedule | None = None,
               image_shape: tuple | None = None) -> Prior:
  """Wrap a model function and its parameters as a `Prior` (linear schedule by default)."""
  return Prior(apply_fn=apply_fn, params=params,
               schedule=schedule if schedule is not None else get_schedule("linear", 1000),
               image_shape=image_shape)


@dataclasses.dataclass(frozen=True)
class _ModuleApply:
  module: Any

  def __call__(self, params, x, t):
    return self.module.apply(params, x, t)


def module_apply_fn(module) -> Callable:
  """`apply_fn(params, x, t)` of a Flax module called as `module(x, t)`.

  Equal modules give equal (hashable) functions, so jitted code is reused.
  """
  return _ModuleApply(module)


def model_prior(model, params, schedule: Schedule | None = None,
                image_shape: tuple | None = None) -> Prior:
  """A `Prior` from a Flax U-Net and its params (e.g. from `jaxir.models.load`)."""
  return make_prior(module_apply_fn(model), params, schedule, image_shape)
