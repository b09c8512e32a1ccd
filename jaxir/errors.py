"""Named errors raised on bad input, so callers can catch them and read the fix."""

__all__ = ["JaxirError", "ShapeError", "RangeError", "KernelError", "NaNError",
           "CheckpointError", "ConfigError", "ImageReadError", "ResourceError"]


class JaxirError(ValueError):
  """Base class of every input error jaxir raises."""


class ShapeError(JaxirError):
  """An array has the wrong rank or shape."""


class RangeError(JaxirError):
  """Values lie outside the range the library expects (images: [-1, 1])."""


class KernelError(JaxirError):
  """A blur kernel is malformed (even size, negative, not summing to one)."""


class NaNError(JaxirError):
  """An input holds NaN or infinite values."""


class CheckpointError(JaxirError):
  """A checkpoint cannot be read or does not match the model."""


class ConfigError(JaxirError):
  """A configuration value is invalid."""


class ImageReadError(JaxirError, OSError):
  """An image file is missing, unreadable or of an unsupported kind."""


class ResourceError(JaxirError):
  """The work will not fit in the memory available (the message says what to shrink)."""
