"""Diffusion core: schedules, respacing, the shared DDIM step and sampler, EDM's sampler.

Layer: imports only `jaxir.errors` (no operators, priors or models); priors,
solvers and train build on it.
"""
from jaxir.diffusion.ddim import (ddim_invert, ddim_loop, ddim_sample, ddim_step, ddim_tables, eps_from_x0,
                                  q_sample, split_eps, x0_from_eps)
from jaxir.diffusion.edm import edm_levels, edm_sample
from jaxir.diffusion.respace import space_timesteps
from jaxir.diffusion.schedule import Schedule, beta_schedule, get_schedule, respaced_alphas_cumprod

__all__ = ["Schedule", "beta_schedule", "get_schedule", "respaced_alphas_cumprod",
           "space_timesteps", "q_sample", "x0_from_eps", "eps_from_x0", "split_eps",
           "ddim_step", "ddim_tables", "ddim_sample", "ddim_loop", "ddim_invert",
           "edm_levels", "edm_sample"]
