"""Where the upstream reference fixtures live: `../shared/fixtures` beside the clone.

CI checks the repository out with `shared/` next to it; `JAXIR_FIXTURES`
overrides the location.
"""
import os
from pathlib import Path

FIXTURES = Path(os.environ.get("JAXIR_FIXTURES")
                or Path(__file__).resolve().parents[2] / "shared" / "fixtures")
if not FIXTURES.is_dir():
  raise FileNotFoundError(f"reference fixtures not found at {FIXTURES}: check out the shared "
                          "folder beside the repository or set JAXIR_FIXTURES.")
