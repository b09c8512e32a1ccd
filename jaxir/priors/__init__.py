"""Diffusion priors: the `Prior` interface, analytic priors."""
from jaxir.priors.base import Prior, make_prior

__all__ = ["Prior", "make_prior"]
