"""jaxir: image restoration with diffusion priors in JAX (DCDP, DeqIR, BIRD and baselines)."""
from jaxir import runtime

runtime._apply_defaults()  # persistent compilation cache (JAXIR_COMPILATION_CACHE=0: off)
runtime.apply_cpu_settings()  # one host device per core (JAXIR_CPU_SETTINGS=0: off)

from jaxir import diffusion, errors, io, metrics, operators, parallel, priors  # noqa: E402

__version__ = "0.1.0"
__all__ = ["diffusion", "errors", "io", "metrics", "operators", "parallel", "priors", "runtime"]
