"""Host-side input checks that raise named errors instead of deep XLA tracebacks.

They only inspect concrete arrays; under `jit` (tracers) they check shapes only.
"""
import jax
import numpy as np

from jaxir.errors import NaNError, RangeError, ShapeError

__all__ = ["is_concrete", "check_image", "check_finite"]


def is_concrete(x) -> bool:
  """True when `x` holds values: an array or number, not a tracer (jit/vmap/grad)
  nor a placeholder (`ShapeDtypeStruct`, lowering's argument info)."""
  if isinstance(x, jax.core.Tracer):
    return False
  return isinstance(x, (np.ndarray, jax.Array, np.generic, int, float, complex, list, tuple))


def check_finite(x, name: str = "input"):
  """Raise `NaNError` if a concrete array holds NaN or inf."""
  if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
    raise NaNError(f"{name} contains NaN or infinite values; clean the input "
                   "(e.g. jnp.nan_to_num) before calling.")
  return x


def check_image(x, name: str = "image", *, batched: bool | None = None,
                channels: tuple[int, ...] | None = None,
                value_range: tuple[float, float] | None = (-1.0, 1.0),
                tol: float = 1e-3):
  """Validate an image array: HWC (or NHWC when `batched`), finite, in range.

  Args:
    x: array, (H, W, C) or (N, H, W, C).
    name: how the error message calls the array.
    batched: True requires rank 4, False rank 3, None accepts both.
    channels: allowed channel counts, or None for any.
    value_range: expected (lo, hi); images inside jaxir live in [-1, 1].
    tol: slack on the range.
  """
  shape = np.shape(x)
  ranks = {True: (4,), False: (3,), None: (3, 4)}[batched]
  if len(shape) not in ranks:
    want = " or ".join({3: "(H, W, C)", 4: "(N, H, W, C)"}[r] for r in ranks)
    raise ShapeError(f"{name} has shape {shape}; expected {want} (NHWC layout). "
                     "Transpose NCHW arrays with x.transpose(0, 2, 3, 1).")
  if channels is not None and shape[-1] not in channels:
    raise ShapeError(f"{name} has {shape[-1]} channels (shape {shape}); expected "
                     f"{' or '.join(map(str, channels))}. Images are channels-last.")
  check_finite(x, name)
  if value_range is not None and is_concrete(x):
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < value_range[0] - tol or hi > value_range[1] + tol:
      raise RangeError(f"{name} has values in [{lo:.3g}, {hi:.3g}]; expected "
                       f"[{value_range[0]}, {value_range[1]}]. Convert [0, 1] images "
                       "with 2 * x - 1 (jaxir.io.read_image does this).")
  return x
