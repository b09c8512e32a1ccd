"""Upstream reference fixtures (`../shared/fixtures` beside the clone) and comparison helpers.

CI checks the repository out with `shared/` next to it; `JAXIR_FIXTURES`
overrides the location.
"""
import os
from pathlib import Path

import numpy as np

FIXTURES = Path(os.environ.get("JAXIR_FIXTURES")
                or Path(__file__).resolve().parents[2] / "shared" / "fixtures")
if not FIXTURES.is_dir():
  raise FileNotFoundError(f"reference fixtures not found at {FIXTURES}: check out the shared "
                          "folder beside the repository or set JAXIR_FIXTURES.")


def nhwc(a):
  """NCHW fixture arrays (..., C, H, W) -> NHWC (..., H, W, C)."""
  return np.moveaxis(np.asarray(a), -3, -1)


def rel_err(a, b):
  """max |a - b| / max |b|, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)


def ddpm_tiny_prior(schedule_dtype: str = "float64"):
  """The real upstream DDPM U-Net `ddpm/ddpm_tiny_a` as a `Prior` (linear schedule;
  `schedule_dtype="float32"` for DeqIR's float32 betas and cumprod)."""
  import json

  import torch

  from jaxir.diffusion import get_schedule
  from jaxir.models import ddpm as D
  from jaxir.priors import model_prior
  fix = FIXTURES / "ddpm"
  cfg = D.ddpm_config(**json.loads((fix / "ddpm_tiny_a.json").read_text()))
  sd = {k: v.numpy() for k, v in torch.load(fix / "ddpm_tiny_a.pt", map_location="cpu",
                                            weights_only=True).items()}
  params = D.ddpm_params_from_state_dict(sd, cfg)
  return model_prior(D.DDPMUNet.from_config(cfg), params,
                     get_schedule("linear", 1000, schedule_dtype))


def gaussian16_problem(sigma_y: float = 0.1):
  """A 16-D Gaussian prior (dense covariance) on (4, 4, 1) images, an 8 x 16 matrix operator
  and a noisy measurement: (prior, cov, mu, operator, matrix, y), all from seed 0."""
  import jax.numpy as jnp
  import numpy as np
  from jaxir.operators.matrix import matrix_operator
  from jaxir.priors.analytic import gaussian_prior
  rng = np.random.default_rng(0)
  shape, n, m = (4, 4, 1), 16, 8
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  cov = (q * np.exp(rng.uniform(np.log(0.02), np.log(0.3), n))) @ q.T
  mu = rng.uniform(-0.3, 0.3, shape)
  mat = rng.standard_normal((m, n)) / np.sqrt(n)
  x = mu.reshape(-1) + np.linalg.cholesky(cov) @ rng.standard_normal(n)
  y = jnp.asarray(mat @ x + sigma_y * rng.standard_normal(m), jnp.float32)
  return gaussian_prior(mu, cov), cov, mu, matrix_operator(mat, shape), mat, y


def sliced_w2_2d(a, b, n_dir=64):
  """Sliced 2-Wasserstein distance of two 2-D sample sets (n, 2), by 199 quantiles along
  n_dir evenly spaced directions."""
  import numpy as np
  th = np.linspace(0, np.pi, n_dir, endpoint=False)
  d = np.stack([np.cos(th), np.sin(th)], 1)
  q = np.linspace(0.005, 0.995, 199)
  qa, qb = np.quantile(a @ d.T, q, axis=0), np.quantile(b @ d.T, q, axis=0)
  return float(np.sqrt(np.mean((qa - qb) ** 2)))
