"""Timestep respacing identical to guided-diffusion's `space_timesteps`."""
from __future__ import annotations

from jaxir.errors import ConfigError

__all__ = ["space_timesteps"]


def space_timesteps(num_timesteps: int, section_counts) -> set[int]:
  """Timesteps of the original process to keep, as a set (as upstream returns).

  Args:
    num_timesteps: length of the original process (e.g. 1000).
    section_counts: "ddimN" (the DDIM paper's fixed integer stride giving exactly
      N steps), a comma-separated string such as "10,15,20", or a list of ints:
      the original steps are cut into equal sections, each strided to its count.

  References:
    openai/guided-diffusion `respace.py`.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
          return set(range(0, num_timesteps, stride))
      raise ConfigError(f"cannot create exactly {desired} steps out of {num_timesteps} "
                        "with an integer stride; pick another ddim count or use a section count.")
    section_counts = [int(c) for c in section_counts.split(",")]
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ConfigError(f"cannot divide a section of {size} steps into {count}; "
                        f"ask for at most {size} steps in that section.")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    cur = 0.0
    for _ in range(count):
      steps.append(start + round(cur))
      cur += stride
    start += size
  return set(steps)
