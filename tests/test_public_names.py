"""Every public name resolves: each module's `__all__`, and the names the issues promise."""
import importlib
import pkgutil

import pytest

import jaxir

MODULES = sorted(m.name for m in pkgutil.walk_packages(jaxir.__path__, "jaxir.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_all_names_resolve(name):
  mod = importlib.import_module(name)
  missing = [n for n in getattr(mod, "__all__", ()) if not hasattr(mod, n)]
  assert not missing, f"{name}.__all__ lists names it lacks: {missing}"


def test_solver_modules_are_callable_and_keep_their_parts():
  """`jaxir.solvers.X(key, y, op, prior, cfg)` runs the solver while `jaxir.solvers.X.part`
  and `from jaxir.solvers.X import part` reach the module (DeqIR/BIRD issues' public names)."""
  import jaxir.solvers as S
  from jaxir.solvers.dcdp import data_consistency  # noqa: F401
  from jaxir.solvers.deqir import DeqIRConfig, deqir_solve, deqir_timesteps, joint_map  # noqa: F401
  from jaxir.solvers.bird import BIRDConfig, generate  # noqa: F401
  for name in ("dcdp", "dps", "ddnm", "ddrm", "diffpir", "pigdm", "deqir", "bird"):
    mod = getattr(S, name)
    assert callable(mod), name
    assert getattr(mod, name) is not None                # the plain function, by its name
  assert S.deqir.DeqIRConfig is DeqIRConfig and S.bird.generate is generate
  assert S.dcdp.data_consistency is data_consistency


def test_top_level_names():
  import jaxir.fixed_point as fp
  import jaxir.models as M
  for n in ("fixed_point", "Anderson", "Picard", "FixedPointInfo"):
    assert hasattr(fp, n), n
  for n in ("load", "from_torch", "to_torch", "ADMUNet", "DDPMUNet", "SHIPPED", "get_config",
            "load_converted", "save_converted"):
    assert hasattr(M, n), n
