"""Diffusion priors: the `Prior` interface and analytic priors with exact posteriors.

Layer: imports `jaxir.diffusion`, `jaxir.checks` and `jaxir.errors`; `load_prior`
alone reaches `jaxir.models` (lazily). Solvers take a prior as an argument.
"""
from jaxir.priors.analytic import (DiagGaussianParams, GaussianParams, GMMParams, gaussian_prior,
                                   gmm_prior, prior_covariance, sample_prior)
from jaxir.priors.base import Prior, make_prior, model_prior, module_apply_fn
from jaxir.priors.posterior import (gaussian_posterior, gmm_posterior, gmm_posterior_mean,
                                    operator_matrix, sample_mixture)

__all__ = ["Prior", "make_prior", "model_prior", "module_apply_fn", "load_prior", "GaussianParams", "DiagGaussianParams", "GMMParams",
           "gaussian_prior", "gmm_prior", "sample_prior", "prior_covariance",
           "operator_matrix", "gaussian_posterior", "gmm_posterior", "gmm_posterior_mean",
           "sample_mixture"]


def load_prior(name_or_config, path=None, *, arch=None, dtype=None) -> Prior:
  """A network prior: `jaxir.models.load(...)` wrapped as a `Prior` (linear schedule).

  `load_prior("mnist32")` loads a shipped prior; `load_prior("ffhq256_dps",
  "ffhq_10m.pt")` converts a public checkpoint.
  """
  from jaxir.models import load
  model, params = load(name_or_config, path, arch=arch, dtype=dtype)
  return model_prior(model, params)
