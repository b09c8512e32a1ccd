"""Measurement noise, as DPS simulates it: y = A(x) + n. Pure and keyed.

References:
  Chung et al., DPS, ICLR 2023; `guided_diffusion/measurements.py`
    (GaussianNoise, PoissonNoise).
  Chihaoui et al., BIRD, NeurIPS 2024; hamadichihaoui/BIRD `utils.py`
    (generate_blurry_image, generate_lr_image: the speckle-plus-Gaussian model).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxir.checks import is_concrete
from jaxir.errors import ConfigError

__all__ = ["gaussian_noise", "poisson_noise", "bird_noise"]


def gaussian_noise(key, y, sigma):
  """Additive white Gaussian noise: y + sigma * N(0, I).

  Args:
    key: `jax.random` key.
    y: clean measurement, any shape (images in [-1, 1]).
    sigma: standard deviation in the units of `y` (DPS: 0.05 on [-1, 1]).

  Returns:
    Noisy array, shape and dtype of `y`.
  """
  if is_concrete(sigma) and not sigma >= 0:
    raise ConfigError(f"sigma={sigma!r} must be >= 0.")
  y = jnp.asarray(y)
  return y + jnp.asarray(sigma, y.dtype) * jax.random.normal(key, y.shape, y.dtype)


def poisson_noise(key, y, rate):
  """DPS's Poisson (shot) noise on a [-1, 1] measurement.

  Maps y to [0, 1] (clipped), draws N ~ Poisson(255 * rate * y01) per entry,
  returns 2 * N / (255 * rate) - 1 clipped to [-1, 1]. Larger `rate` means more
  photons, hence less noise (variance 4 y01 / (255 rate) before clipping).

  Args:
    key: `jax.random` key.
    y: clean measurement in [-1, 1], any shape.
    rate: photon scale (DPS: 1.0), > 0.

  Returns:
    Noisy array, shape and dtype of `y`, in [-1, 1].
  """
  if is_concrete(rate) and not rate > 0:
    raise ConfigError(f"rate={rate!r} must be > 0.")
  y = jnp.asarray(y)
  scale = 255.0 * jnp.asarray(rate, jnp.float32)
  lam = jnp.clip((y.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0) * scale
  counts = jax.random.poisson(key, lam, y.shape).astype(jnp.float32)
  return jnp.clip(counts / scale * 2.0 - 1.0, -1.0, 1.0).astype(y.dtype)


def bird_noise(key, y, speckle=0.096, sigma=0.01):
  """BIRD's measurement noise (official blur, SR and inpainting experiments).

  On the [0, 1] scale u = (y + 1) / 2 the official code draws
  0.8 (u + 0.12 u g) + 0.2 (u + 0.05 n) = u (1 + 0.096 g) + 0.01 n with g, n
  independent standard normals (signal-dependent speckle plus white noise),
  then maps back by 2 u' - 1, without clipping. On jaxir's [-1, 1] scale the
  result is y + 2 (speckle u g + sigma n): the standard deviations double
  (0.02 for the white part), and the speckle grows with the brightness u.

  Args:
    key: `jax.random` key (split into the two draws).
    y: clean measurement in [-1, 1], any shape.
    speckle: multiplicative std on the [0, 1] scale (official 0.8 * 0.12 = 0.096).
    sigma: additive std on the [0, 1] scale (official 0.2 * 0.05 = 0.01).

  Returns:
    Noisy array, shape and dtype of `y` (not clipped, as upstream).
  """
  for name, v in (("speckle", speckle), ("sigma", sigma)):
    if is_concrete(v) and not v >= 0:
      raise ConfigError(f"{name}={v!r} must be >= 0 (a std on the [0, 1] scale).")
  y = jnp.asarray(y)
  kg, kn = jax.random.split(key)
  u = (y + 1.0) / 2.0
  g = jax.random.normal(kg, y.shape, y.dtype)
  n = jax.random.normal(kn, y.shape, y.dtype)
  u = u * (1.0 + jnp.asarray(speckle, y.dtype) * g) + jnp.asarray(sigma, y.dtype) * n
  return (2.0 * u - 1.0).astype(y.dtype)
