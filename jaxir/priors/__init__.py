"""Diffusion priors: the `Prior` interface and analytic priors with exact posteriors."""
from jaxir.priors.analytic import (DiagGaussianParams, GaussianParams, GMMParams, gaussian_prior,
                                   gmm_prior, prior_covariance, sample_prior)
from jaxir.priors.base import Prior, make_prior
from jaxir.priors.posterior import (gaussian_posterior, gmm_posterior, gmm_posterior_mean,
                                    operator_matrix, sample_mixture)

__all__ = ["Prior", "make_prior", "GaussianParams", "DiagGaussianParams", "GMMParams",
           "gaussian_prior", "gmm_prior", "sample_prior", "prior_covariance",
           "operator_matrix", "gaussian_posterior", "gmm_posterior", "gmm_posterior_mean",
           "sample_mixture"]
