"""Run or resume an experiment table from a TOML config (the same as `jaxir experiment`).

  python experiments/run.py experiments/configs/dcdp_mnist32.toml
  python experiments/run.py experiments/configs/dcdp_mnist32.toml --out runs/dcdp \
      --set images.count=2

See `jaxir.experiment` for the config format, the output folder and resuming.
"""
import sys

from jaxir.experiment import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
