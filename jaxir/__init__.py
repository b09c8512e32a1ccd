"""jaxir: image restoration with diffusion priors in JAX (DCDP, DeqIR, BIRD and baselines)."""
from jaxir import diffusion, errors, operators, priors

__version__ = "0.1.0"
__all__ = ["diffusion", "errors", "operators", "priors"]
