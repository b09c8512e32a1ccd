"""Old import path of jaxir's shipped priors (kept for existing imports).

They live in `jaxir.models.loading`, with `load` and the registry.
"""
from jaxir.models.loading import SHIPPED, checkpoint_dir, load_shipped, shipped_meta

__all__ = ["SHIPPED", "checkpoint_dir", "shipped_meta", "load_shipped"]
