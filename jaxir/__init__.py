"""jaxir: image restoration with diffusion priors in JAX (DCDP, DeqIR, BIRD and baselines)."""
from jaxir import diffusion, errors, io, metrics, operators, parallel, priors

__version__ = "0.1.0"
__all__ = ["diffusion", "errors", "io", "metrics", "operators", "parallel", "priors"]
