"""DeqIR on noisy measurements: the official noiseless chain against `DeqIRConfig(sigma_y=...)`.

  python experiments/deqir_noise_table.py natural64 4 sr4_avgpool,denoise,random_inpaint

For each task (at its default noise `jaxir.tasks.TASKS[task].sigma_y`) and held-out image i
(`quality_table.heldout_images`; measurement from `simulate(task, key(100 + i), x)`, x_T from
`key(i)`), prints PSNR (dB), final relative residual and map evaluations of: the official
settings ("official"), the same with the triangular Anderson ("official_taa"), the noise-aware
chain with the official Anderson ("sigma") and with the triangular one ("sigma_taa", the
registry's choice for noisy tasks), and A^+ y ("pinv"); then the mean PSNR per task.
"""
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_table import heldout_images  # noqa: E402


def main(argv):
  from jaxir.priors import load_prior
  from jaxir.solvers import deqir as Q
  from jaxir.tasks import TASKS, prior_channels, simulate
  prior_name, n, tasks = argv[0], int(argv[1]), argv[2].split(",")
  prior = load_prior(prior_name)
  size = 32 if prior_name.startswith("mnist32") else 64
  X = heldout_images(prior_name, n, size, prior_channels(prior))
  psnr = lambda a, b: float(10 * np.log10(4 / np.mean((np.asarray(a) - np.asarray(b)) ** 2)))
  means = {}
  for task in tasks:
    sig = TASKS[task].sigma_y
    configs = {"official": Q.DeqIRConfig(), "official_taa": Q.DeqIRConfig(triangular=True),
               "sigma": Q.DeqIRConfig(sigma_y=sig),
               "sigma_taa": Q.DeqIRConfig(sigma_y=sig, triangular=True)}
    rows = []
    for i in range(n):
      x = jnp.asarray(X[i])
      op, y = simulate(task, jax.random.key(100 + i), x)
      res = {}
      for name, cfg in configs.items():
        xh, info = jax.jit(lambda k, b, cfg=cfg: Q.deqir(k, b, op, prior, cfg))(jax.random.key(i), y)
        res[name] = (round(psnr(xh, x), 2), float(f"{float(info.residual):.1e}"),
                     int(info.evaluations))
      res["pinv"] = (round(psnr(op.pinv(y), x), 2),)
      rows.append(res)
      print(task, i, res, flush=True)
    means[task] = {k: round(float(np.mean([r[k][0] for r in rows])), 2) for k in rows[0]}
  for task, m in means.items():
    print(task, "mean PSNR", m)


if __name__ == "__main__":
  main(sys.argv[1:])
