"""Blur kernels: DPS's Gaussian, random motion trajectories, and a softmax map.

Kernels are `(k, k)` float32 arrays with odd `k`, non-negative entries summing
to one; `Blur` applies them by cross-correlation (PyTorch `Conv2d` convention),
so `kernel[k // 2, k // 2]` weighs the pixel itself.

`gaussian_kernel` and `motion_kernel` build kernels on the host (NumPy) from
concrete arguments; `kernel_from_logits` is a differentiable JAX map for blind
deblurring, where the kernel is estimated jointly with the image (BIRD).

References:
  Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse
    Problems" (DPS), ICLR 2023; `util/img_utils.py` (Blurkernel).
  L. Borodenko, LeviBorodenko/motionblur `motionblur.py` (random-trajectory
    motion kernels, used by DPS, DCDP and BIRD).
  Chihaoui, Lemkhenter, Favaro, "Blind Image Restoration via Fast Diffusion
    Inversion" (BIRD), 2024 (softmax-normalized kernel parameterization).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxir.checks import is_concrete
from jaxir.errors import ConfigError, KernelError

__all__ = ["gaussian_kernel", "motion_trajectory", "trajectory_kernel",
           "motion_kernel", "kernel_from_logits", "kernel_to_logits",
           "validate_kernel"]

_MOTION_EPS = 0.1  # the upstream "tiny error" added to step and angle scales


def _check_size(size) -> int:
  if int(size) != size or size < 1 or size % 2 == 0:
    raise KernelError(f"kernel size {size!r} must be a positive odd integer (the "
                      "kernel needs a centre pixel); use e.g. size=61.")
  return int(size)


def _gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalized 1-D Gaussian taps on [-r, r], r = int(truncate * sigma + 0.5)."""
  radius = int(truncate * float(sigma) + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * x**2 / float(sigma) ** 2) if sigma > 0 else (x == 0) * 1.0
  return taps / taps.sum()


def gaussian_kernel(size: int = 61, sigma: float = 3.0) -> jax.Array:
  """DPS's Gaussian kernel: a centred delta smoothed by a truncated Gaussian.

  Equals `scipy.ndimage.gaussian_filter(delta, sigma)` (truncate 4.0, 'reflect'
  boundary) of a `(size, size)` delta at the centre, computed in float64 and
  rounded to float32. When the Gaussian is wider than the kernel the boundary
  reflection folds its tails back in, exactly as scipy does.

  Args:
    size: odd side length k (DPS: 61).
    sigma: standard deviation in pixels (DPS: 3.0).

  Returns:
    (size, size) float32 kernel, non-negative, summing to one.

  References:
    DPS `util/img_utils.py` (Blurkernel, get_gaussian_kernel).
  """
  size = _check_size(size)
  if not sigma >= 0:
    raise ConfigError(f"sigma={sigma!r} must be >= 0 (pixels).")
  taps = _gaussian_taps(sigma)
  r = (taps.size - 1) // 2
  delta = np.zeros(size)
  delta[size // 2] = 1.0
  # numpy 'symmetric' (d c b a | a b c d) is scipy.ndimage's 'reflect'.
  ext = np.pad(delta, r, mode="symmetric")
  prof = np.array([taps @ ext[i:i + taps.size] for i in range(size)])
  return jnp.asarray(np.outer(prof, prof).astype(np.float32))


def _seed_from_key(key) -> np.random.Generator:
  """A NumPy generator seeded by 128 bits drawn from a JAX key (host side)."""
  if not is_concrete(key):
    raise ConfigError("motion kernels are built on the host; pass a concrete key "
                      "(call motion_kernel outside jit/vmap).")
  bits = np.asarray(jax.random.bits(key, (4,), jnp.uint32))
  return np.random.default_rng([int(b) for b in bits])


def motion_trajectory(key, size: int = 61, intensity: float = 0.5) -> np.ndarray:
  """The random camera path of a motion-blur kernel, as complex pixel positions.

  The upstream algorithm: draw a maximal path length
  `0.75 * D * (U(0, 1) + U(0, intensity**2))` on the 2x super-sampled canvas
  (diagonal D), add steps `Beta(1, 30) * (1 - intensity + 0.1) * D` (rejecting
  ones longer than the maximum) until the length is reached, give each step an
  angle (first `U(-a, a)` with `a ~ U(0, intensity * pi)`, then
  `Triangular(0, intensity * a, a + 0.1)` keeping the previous sign except with
  probability `Beta(2, 20)`), integrate, centre the path's mean, rotate it by
  `U(0, pi)` and move it to the canvas centre. Draws come from a NumPy generator
  seeded by `key`, so the same key gives the same path.

  Args:
    key: a concrete `jax.random` key.
    size: odd kernel side length k; the path lives on a (2k, 2k) canvas.
    intensity: in [0, 1]; 0 gives a straight line, 1 long curved paths.

  Returns:
    complex128 array of path points x + i y on the (2k, 2k) canvas
    (x: column, y: row, pixel units).
  """
  size = _check_size(size)
  if not 0.0 <= intensity <= 1.0:
    raise ConfigError(f"intensity={intensity!r} must lie in [0, 1].")
  rng = _seed_from_key(key)
  big = 2 * size
  diag = math.hypot(big, big)
  max_len = 0.75 * diag * (rng.uniform() + rng.uniform(0.0, intensity**2))
  steps, total = [], 0.0
  while total < max_len or not steps:
    step = rng.beta(1, 30) * (1.0 - intensity + _MOTION_EPS) * diag
    if step < max_len or max_len == 0.0:
      steps.append(step)
      total += step
  max_angle = rng.uniform(0.0, intensity * math.pi)
  jitter = rng.beta(2, 20)
  angles = [rng.uniform(-max_angle, max_angle)]
  while len(angles) < len(steps):
    angle = rng.triangular(0.0, intensity * max_angle, max_angle + _MOTION_EPS)
    sign = np.sign(angles[-1])
    angles.append(angle * (-sign if rng.uniform() < jitter else sign))
  path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
  path = (path - path.mean()) * np.exp(1j * rng.uniform(0.0, math.pi))
  return path + (big + 1j * big) / 2.0


def _raster_path(path: np.ndarray, n: int, width: int) -> np.ndarray:
  """Draw the polyline on an (n, n) canvas, 1 on the line, 0 elsewhere.

  Width <= 1: each segment between truncated integer end points is drawn with
  Bresenham's algorithm (end points included); this reproduces PIL's
  `ImageDraw.line` pixel for pixel. Wider lines (k >= 107) mark pixels whose
  centre lies within about width / 2 of a segment, an approximation of PIL's
  (asymmetric) polygon band.
  """
  canvas = np.zeros((n, n))
  pts = [(int(p.real), int(p.imag)) for p in path]
  if len(pts) == 1:
    pts = pts * 2
  if width <= 1:
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
      dx, dy = abs(x1 - x0), -abs(y1 - y0)
      sx, sy = (1 if x1 > x0 else -1), (1 if y1 > y0 else -1)
      err = dx + dy
      while True:
        if 0 <= x0 < n and 0 <= y0 < n:
          canvas[y0, x0] = 1.0
        if x0 == x1 and y0 == y1:
          break
        e2 = 2 * err
        if e2 >= dy:
          err += dy
          x0 += sx
        if e2 <= dx:
          err += dx
          y0 += sy
    return canvas
  yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
  for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
    vx, vy = x1 - x0, y1 - y0
    t = ((xx - x0) * vx + (yy - y0) * vy) / max(vx * vx + vy * vy, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    d2 = (xx - x0 - t * vx) ** 2 + (yy - y0 - t * vy) ** 2
    canvas[d2 <= (width / 2.0 - 0.1) ** 2] = 1.0
  return canvas


def _box_blur_1d(radius: float, passes: int = 3) -> np.ndarray:
  """PIL's Gaussian-blur taps: `passes` extended box filters of variance radius²/passes."""
  sigma2 = radius * radius / passes
  length = math.sqrt(12.0 * sigma2 + 1.0)
  l = math.floor((length - 1.0) / 2.0)
  a = (2 * l + 1) * (l * (l + 1) - 3 * sigma2) / (6 * (sigma2 - (l + 1) ** 2))
  box = np.ones(2 * l + 3)
  box[0] = box[-1] = a
  box /= box.sum()
  taps = np.ones(1)
  for _ in range(passes):
    taps = np.convolve(taps, box)
  return taps


def _smooth_edge(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Separable correlation with edge replication (PIL's box-blur border)."""
  r = (taps.size - 1) // 2
  for axis in (0, 1):
    ext = np.pad(img, [(r, r) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
    img = sum(t * np.take(ext, np.arange(i, i + img.shape[axis]), axis=axis)
              for i, t in enumerate(taps))
  return img


def _lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
  """PIL's antialiased Lanczos-3 resampling weights, shape (n_out, n_in)."""
  def lanczos(x):
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
  scale = n_in / n_out
  fscale = max(scale, 1.0)
  support = 3.0 * fscale
  mat = np.zeros((n_out, n_in))
  for i in range(n_out):
    centre = (i + 0.5) * scale
    lo = max(int(centre - support + 0.5), 0)
    hi = min(int(centre + support + 0.5), n_in)
    w = lanczos((np.arange(lo, hi) - centre + 0.5) / fscale)
    mat[i, lo:hi] = w / w.sum()
  return mat


def trajectory_kernel(path: np.ndarray, size: int = 61) -> jax.Array:
  """Render a motion path into a blur kernel, as motionblur does with PIL.

  Draw the path as a white line (width `int(D / 150)`, D the canvas diagonal)
  on a black (2k, 2k) 8-bit canvas, blur it (PIL's 3-pass box approximation of
  a Gaussian of radius `int(0.01 D)`, edge replication), downsample 2x with
  antialiased Lanczos-3, round to 8 bits, and normalize to sum one. The
  intermediate 8-bit roundings of PIL are replaced by one rounding at the end.
  Upstream draws nothing (and returns NaN) when `int(D / 150) == 0`, i.e. for
  k <= 53; here the line is then drawn one pixel wide.

  Args:
    path: complex positions x + i y on the (2k, 2k) canvas (`motion_trajectory`).
    size: odd kernel side length k.

  Returns:
    (size, size) float32 kernel, non-negative, summing to one.
  """
  size = _check_size(size)
  big = 2 * size
  diag = math.hypot(big, big)
  img = 255.0 * _raster_path(np.asarray(path), big, max(int(diag / 150), 1))
  radius = int(diag * 0.01)
  if radius > 0:
    img = _smooth_edge(img, _box_blur_1d(float(radius)))
  res = _lanczos_matrix(big, size)
  small = res @ img @ res.T
  quant = np.round(np.clip(small, 0.0, 255.0))
  if quant.sum() <= 0:
    quant = np.clip(small, 0.0, None)
  return jnp.asarray((quant / quant.sum()).astype(np.float32))


def motion_kernel(key, size: int = 61, intensity: float = 0.5) -> jax.Array:
  """A random motion-blur kernel (DPS/DCDP/BIRD benchmark kernel).

  Reimplements LeviBorodenko/motionblur `Kernel(size=(k, k), intensity)`: a
  random path (`motion_trajectory`) rendered by `trajectory_kernel`. The random
  stream is NumPy's, seeded from `key` (upstream draws from the global NumPy
  state), so kernels follow the upstream distribution but not its draws. Runs
  on the host: call it outside jit.

  Args:
    key: concrete `jax.random` key; the same key gives the same kernel.
    size: odd side length k (DPS: 61).
    intensity: in [0, 1] (DPS: 0.5).

  Returns:
    (size, size) float32 kernel, non-negative, summing to one.
  """
  return trajectory_kernel(motion_trajectory(key, size, intensity), size)


def kernel_from_logits(logits: jax.Array, size: int | None = None) -> jax.Array:
  """Map unconstrained parameters to a kernel by a softmax over all entries.

  Differentiable; the result is positive and sums to one, so gradient steps on
  the logits stay in the set of valid kernels (BIRD's MLP ends this way).

  Args:
    logits: (k, k) or flat (k * k,) real array.
    size: k, needed only to check a flat input (inferred from its length).

  Returns:
    (k, k) kernel, same dtype as `logits`.
  """
  n = int(np.prod(logits.shape))
  k = size if size is not None else math.isqrt(n)
  if k * k != n or (logits.ndim == 2 and logits.shape != (k, k)) or logits.ndim > 2:
    raise KernelError(f"logits of shape {logits.shape} do not form a square kernel; "
                      "pass (k, k) or (k * k,) values with odd k.")
  _check_size(k)
  return jax.nn.softmax(logits.reshape(-1)).reshape(k, k)


def kernel_to_logits(kernel: jax.Array, floor: float = 1e-8) -> jax.Array:
  """Logits whose softmax is (close to) `kernel`: log(max(kernel, floor)).

  Use to start a blind estimate at a known kernel; `floor` keeps zero entries
  finite (and makes them about `floor` after the softmax).
  """
  return jnp.log(jnp.maximum(kernel, floor))


def validate_kernel(kernel, *, atol: float = 1e-3, name: str = "kernel"):
  """Raise `KernelError` unless `kernel` is an odd, square, normalized PSF.

  Checks the shape always and, for concrete arrays, that the entries are
  finite, non-negative (round-off down to -1e-6 is tolerated) and sum to one
  within `atol`.

  Args:
    kernel: (k, k) array.
    atol: allowed |sum - 1|.
    name: how the error message calls the kernel.

  Returns:
    `kernel`, unchanged.
  """
  shape = np.shape(kernel)
  if len(shape) != 2 or shape[0] != shape[1]:
    raise KernelError(f"{name} has shape {shape}; expected a square (k, k) kernel. "
                      "Per-channel kernels are not supported; pass one 2-D kernel.")
  if shape[0] % 2 == 0:
    raise KernelError(f"{name} has even size {shape[0]}; use an odd size so the "
                      "kernel has a centre (e.g. pad one row and column of zeros).")
  if is_concrete(kernel):
    k = np.asarray(kernel, dtype=np.float64)
    if not np.all(np.isfinite(k)):
      raise KernelError(f"{name} contains NaN or infinite values.")
    if k.min() < -1e-6:
      raise KernelError(f"{name} has negative entries (min {k.min():.3g}); a blur "
                        "kernel must be non-negative (use kernel_from_logits).")
    if abs(k.sum() - 1.0) > atol:
      raise KernelError(f"{name} sums to {k.sum():.6g}, not 1; divide it by its "
                        "sum.")
  return kernel
