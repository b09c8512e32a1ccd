"""Named restoration tasks: the papers' operator settings, scaled to any image size.

`make_operator(name, key, in_shape)` builds the forward operator of a task, so
the command line, the experiment scripts and user code share one definition.
Settings are the papers' (FFHQ-256, from DPS / DCDP); on smaller images the
blur kernels and inpainting boxes keep their size relative to the image
(61/256 of the side, 128/256 of the side), since a 61x61 kernel on a 32x32
image is not the same task. Every task takes images of any channel count C
(C = 1 for a grey prior such as mnist32) except "colorize", which needs C = 3;
`prior_channels(prior)` gives the C a prior was trained on.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxir.errors import ConfigError
from jaxir.operators.blur import gaussian_blur, motion_blur
from jaxir.operators.color import Colorization
from jaxir.operators.denoise import Identity
from jaxir.operators.inpaint import Inpaint, box_mask, random_mask
from jaxir.operators.phase_retrieval import PhaseRetrieval
from jaxir.operators.separable import deblur_aniso, deblur_gauss, deblur_uni
from jaxir.operators.superres import AvgPoolSR, BicubicSR
from jaxir.operators.walsh_hadamard import walsh_hadamard_cs

__all__ = ["Task", "TASKS", "make_operator", "task_names", "simulate", "stack_operators",
           "prior_channels"]


@dataclasses.dataclass(frozen=True)
class Task:
  """A restoration task.

  Attributes:
    name: registry name.
    description: one line for help texts.
    sigma_y: default measurement noise std on [-1, 1] images (DPS: 0.05).

  Each solver's preset for a task is in `jaxir.solvers.registry`.
  """
  name: str
  description: str
  sigma_y: float = 0.05


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("denoise", "Gaussian denoising (identity operator)", 0.2),
    Task("sr4", "x4 super-resolution, DPS bicubic Resizer", 0.05),
    Task("sr8", "x8 super-resolution, DPS bicubic Resizer", 0.05),
    Task("sr4_avgpool", "x4 super-resolution, average pooling (DDNM)", 0.05),
    Task("gaussian_deblur", "Gaussian blur, 61x61 sigma 3.0 at 256 px, reflect padding",
         0.05),
    Task("motion_deblur", "motion blur, 61x61 intensity 0.5 at 256 px, reflect padding",
         0.05),
    Task("box_inpaint", "inpainting of a 128x128 box (at 256 px) at a random place",
         0.05),
    Task("random_inpaint", "inpainting of 70% missing random pixels", 0.05),
    Task("colorize", "colorization (channel mean)", 0.0),
    Task("phase_retrieval", "Fourier phase retrieval, oversampling 2.0", 0.05),
    # DDRM/DDNM/DeqIR SVD-form degradations: the official kernels in pixels at any image
    # size, noiseless as the official runs (DeqIR `runners/diffusion.py`, no --add_noise).
    Task("deblur_gauss", "separable Gaussian blur, 5 taps sigma 10, zero padding (DDRM/DeqIR)",
         0.0),
    Task("deblur_uni", "separable uniform blur, 9 taps, zero padding (DDRM/DeqIR)",
         0.0),
    Task("deblur_aniso", "anisotropic separable Gaussian, 9 taps sigma 1 (H) / 20 (W) (DeqIR)",
         0.0),
    Task("cs_wh", "Walsh-Hadamard compressed sensing, ratio 0.5, random permutation (DeqIR)",
         0.0),
]}


def task_names() -> list[str]:
  return sorted(TASKS)


def _odd(n: int) -> int:
  n = max(3, int(round(n)))
  return n if n % 2 else n + 1


def make_operator(name: str, key, in_shape: tuple):
  """The forward operator of task `name` for images of shape (H, W, C).

  Args:
    name: a key of `TASKS`.
    key: `jax.random` key for random parts (motion kernel, mask position).
    in_shape: (H, W, C); C = 3 for "colorize" (`ShapeError` otherwise).
  """
  if name not in TASKS:
    raise ConfigError(f"unknown task {name!r}; choose from {task_names()}.")
  H, W, C = in_shape
  side = min(H, W)
  if name == "denoise":
    return Identity(in_shape)
  if name in ("sr4", "sr8"):
    return BicubicSR(in_shape, scale=int(name[2:]))
  if name == "sr4_avgpool":
    return AvgPoolSR(in_shape, scale=4)
  if name == "gaussian_deblur":
    size = _odd(61 * side / 256)
    return gaussian_blur(in_shape, size=size, sigma=3.0 * size / 61)
  if name == "motion_deblur":
    return motion_blur(key, in_shape, size=_odd(61 * side / 256), intensity=0.5)
  if name == "box_inpaint":
    box = side // 2
    margin = (side * 16 // 256,) * 2
    return Inpaint(in_shape, box_mask(key, in_shape, box=box, margin=margin))
  if name == "random_inpaint":
    return Inpaint(in_shape, random_mask(key, in_shape, missing=0.7))
  if name == "colorize":
    return Colorization(in_shape)
  if name == "phase_retrieval":
    return PhaseRetrieval(in_shape, oversample=2.0)
  if name == "deblur_gauss":
    return deblur_gauss(in_shape)
  if name == "deblur_uni":
    return deblur_uni(in_shape)
  if name == "deblur_aniso":
    return deblur_aniso(in_shape)
  if name == "cs_wh":
    return walsh_hadamard_cs(key, in_shape, ratio=0.5)
  raise AssertionError(name)




def simulate(name: str, key, x, sigma_y: float | None = None):
  """The papers' protocol for one clean image: a task operator and its noisy measurement.

  Args:
    name: a key of `TASKS`.
    key: `jax.random` key (split for the operator's random parts and the noise).
    x: clean image (H, W, C) in [-1, 1].
    sigma_y: Gaussian measurement noise std on the [-1, 1] scale (None: the task's).

  Returns:
    (operator, y) with y = A(x) + sigma_y * n.
  """
  from jaxir.operators.noise import gaussian_noise
  k_op, k_noise = jax.random.split(key)
  sigma = TASKS[name].sigma_y if sigma_y is None else sigma_y
  op = make_operator(name, k_op, tuple(x.shape))
  y = op.A(x)
  return op, (gaussian_noise(k_noise, y, sigma) if sigma > 0 else y)


def stack_operators(ops):
  """Stack equal-structure operators into one batched operator (for `jax.vmap`, in_axes 0)."""
  return jax.tree.map(lambda *a: jnp.stack(a), *ops)


def prior_channels(prior, default: int = 3) -> int:
  """The image channel count C a prior takes (1 grey, 3 RGB).

  Read from `prior.image_shape` when set, else from the network's config
  (`in_channels` of a U-Net loaded by `jaxir.models.load` /
  `jaxir.priors.load_prior`, which for a shipped prior is the checkpoint card's
  `channels`); `default` when neither tells (e.g. an analytic prior built
  without `image_shape`).
  """
  shape = getattr(prior, "image_shape", None)
  if shape is not None:
    return int(shape[-1])
  config = getattr(getattr(getattr(prior, "apply_fn", None), "module", None), "config", None)
  c = getattr(config, "in_channels", None)
  return default if c is None else int(c)
