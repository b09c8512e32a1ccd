"""Old import path of the named configs and of `load` (kept for existing imports).

The named configs live in `jaxir.models.named_configs`; `load` and the
shipped-prior registry in `jaxir.models.loading`.
"""
# `_SHIPPED` is the registry dict itself (tests remove what they registered).
from jaxir.models.loading import _SHIPPED, load, register_shipped, shipped_names  # noqa: F401
from jaxir.models.named_configs import NAMED_CONFIGS, NamedConfig, get_config

__all__ = ["NamedConfig", "NAMED_CONFIGS", "get_config", "register_shipped", "shipped_names",
           "load"]
