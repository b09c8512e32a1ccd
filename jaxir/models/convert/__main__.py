"""`python -m jaxir.models.convert SRC DST --config NAME`: see `jaxir.models.convert.main`."""
from jaxir.models.convert import main

if __name__ == "__main__":
  raise SystemExit(main())
