"""One registry of solvers: name -> function, config class, presets per task.

Every entry point (the `jaxir` command, the experiment runner, the benchmark
and quality scripts) reads this table, so a new solver is one `register` call.

    spec = get_solver("dcdp")
    cfg = spec.config("gaussian_deblur", prior="mnist32", overrides=["K=5"])
    x, info = spec.fn(key, y, operator, prior, cfg)

`SolverSpec.config(task, sigma_y=..., prior=...)` picks the preset the solver
uses for a task (see each solver's presets for where the values come from),
moved to the measurement noise `sigma_y` where the solver has a noise setting,
with `KEY=VALUE` overrides applied last.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxir.errors import ConfigError

__all__ = ["SolverSpec", "register", "get_solver", "solver_names", "SOLVERS", "parse_overrides",
           "apply_overrides"]

_REQUIRES = ("any", "linear", "svd")


@dataclasses.dataclass(frozen=True)
class SolverSpec:
  """A registered solver.

  Attributes:
    name: registry name (the command line's `--solver`).
    fn: `fn(key, y, operator, prior, config) -> (x, info)`, one image.
    config_cls: the config dataclass.
    make_config: `make_config(task, sigma_y, prior) -> config`: the preset for a
      task (`sigma_y` the measurement noise std on [-1, 1]; `prior` a shipped
      prior's name or None).
    presets: name -> config, the solver's named presets.
    requires: "any" (any differentiable operator), "linear" (needs `AT`/`pinv`)
      or "svd" (needs an SVD form: an `SVDOperator`, or a `Blur`, which the
      registered function runs in its circular SVD form,
      `jaxir.operators.blur.svd_form(op, approximate=True)`).
    description: one line for help texts.
    task_presets: task -> the name of the preset `make_config` starts from
      (help texts and `jaxir tasks`; tasks not listed use the solver's
      default).
  """
  name: str
  fn: Callable
  config_cls: type
  make_config: Callable[[str, float, str | None], Any]
  presets: Mapping[str, Any]
  requires: str = "any"
  description: str = ""
  task_presets: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.requires not in _REQUIRES:
      raise ConfigError(f"requires must be one of {_REQUIRES}; got {self.requires!r}.")

  def config(self, task: str, *, sigma_y: float | None = None, prior: str | None = None,
             overrides=()):
    """The config this solver uses for `task` (noise `sigma_y`, default the task's)."""
    from jaxir.tasks import TASKS, task_names
    if task not in TASKS:
      raise ConfigError(f"unknown task {task!r}; choose from {task_names()}.")
    sigma = TASKS[task].sigma_y if sigma_y is None else float(sigma_y)
    return apply_overrides(self.make_config(task, sigma, prior), overrides)

  def supports(self, operator) -> bool:
    """Whether `operator` has what this solver needs (see `requires`)."""
    if self.requires == "svd":
      from jaxir.operators.blur import svd_form
      return svd_form(operator, approximate=True) is not None
    if self.requires == "linear":
      return bool(getattr(operator, "linear", False)) and hasattr(operator, "pinv")
    return True

  def check_operator(self, operator):
    """Raise `ConfigError` naming what is missing when `supports(operator)` is False."""
    if not self.supports(operator):
      need = {"svd": "an SVD operator (jaxir.operators.SVDOperator: Identity, Inpaint, "
                     "AvgPoolSR, Colorization, CircularBlur, SeparableBlur, WalshHadamardCS, "
                     "MatrixOperator)",
              "linear": "a linear operator with a pseudo-inverse"}[self.requires]
      raise ConfigError(f"solver {self.name!r} needs {need}; got {type(operator).__name__}. "
                        "Pick a task with such an operator or another solver.")


SOLVERS: dict[str, SolverSpec] = {}


def register(spec: SolverSpec) -> SolverSpec:
  """Add (or replace) a solver in the registry; returns it."""
  SOLVERS[spec.name] = spec
  return spec


def solver_names() -> list[str]:
  """Registered solver names, in registration order."""
  return list(SOLVERS)


def get_solver(name: str) -> SolverSpec:
  """The registered solver `name` (`ConfigError` listing the names otherwise)."""
  if name not in SOLVERS:
    raise ConfigError(f"unknown solver {name!r}; choose from {solver_names()}.")
  return SOLVERS[name]


def _parse_value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_overrides(overrides) -> dict:
  """`["K=5", "lr=1e3"]` (or a mapping) -> {"K": 5, "lr": 1000.0}."""
  if isinstance(overrides, Mapping):
    return dict(overrides)
  out = {}
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"a config override is KEY=VALUE; got {item!r}.")
    k, v = item.split("=", 1)
    out[k.strip()] = _parse_value(v.strip())
  return out


def apply_overrides(config, overrides=()):
  """`config` with fields replaced (`KEY=VALUE` strings or a mapping), names checked."""
  changes = parse_overrides(overrides)
  fields = {f.name for f in dataclasses.fields(config)}
  for k in changes:
    if k not in fields:
      raise ConfigError(f"{type(config).__name__} has no field {k!r}; fields: "
                        f"{sorted(fields)}.")
  return dataclasses.replace(config, **changes) if changes else config


# ------------------------------------------------------------------------ the entries
# Which named preset each solver uses for each task; tasks a paper does not run
# borrow the closest preset.

#: DCDP presets per task (DCDP's official configs; `jaxir.solvers.dcdp.DCDP_PRESETS`).
DCDP_TASK_PRESETS = {
    "denoise": "sr4", "sr4": "sr4", "sr8": "sr4", "sr4_avgpool": "sr4",
    "gaussian_deblur": "gaussian_deblur", "motion_deblur": "motion_deblur",
    "box_inpaint": "box_inpaint", "random_inpaint": "box_inpaint", "colorize": "sr4",
    "phase_retrieval": "phase_retrieval", "deblur_gauss": "gaussian_deblur",
    "deblur_uni": "gaussian_deblur", "deblur_aniso": "gaussian_deblur", "cs_wh": "sr4"}

#: DPS presets per task (DPS's official configs; `jaxir.solvers.dps.DPS_PRESETS`).
DPS_TASK_PRESETS = {
    "denoise": "sr4", "sr4": "sr4", "sr8": "sr4", "sr4_avgpool": "sr4",
    "gaussian_deblur": "gaussian_deblur", "motion_deblur": "motion_deblur",
    "box_inpaint": "box_inpaint", "random_inpaint": "inpaint", "colorize": "sr4",
    "phase_retrieval": "phase_retrieval", "deblur_gauss": "gaussian_deblur",
    "deblur_uni": "gaussian_deblur", "deblur_aniso": "gaussian_deblur", "cs_wh": "sr4"}

#: BIRD presets per task (BIRD's official configs; tasks without one use the paper's text).
BIRD_TASK_PRESETS = {"denoise": "denoise", "box_inpaint": "inpaint",
                     "random_inpaint": "inpaint", "sr8": "sr8"}


def _dcdp_config(tweedie: bool):
  def make(task, sigma_y, prior):
    from jaxir.solvers import dcdp as dcdp_mod
    preset = DCDP_TASK_PRESETS.get(task, "sr4")
    if prior is not None and f"{prior}/{task}" in dcdp_mod.DCDP_PRESETS:
      preset = f"{prior}/{task}"
    return dcdp_mod.for_noise(dcdp_mod.dcdp_preset(preset, tweedie=tweedie), sigma_y)
  return make


def _dps_config(task, sigma_y, prior):
  from jaxir.solvers.dps import dps_preset
  return dps_preset(DPS_TASK_PRESETS.get(task, "sr4"), sigma_y=sigma_y)


def _deqir_config(task, sigma_y, prior):
  """The official DeqIR settings; with sigma_y > 0 the "taa" preset with DDNM+'s noise-aware
  steps (the official code has no noise model: its range-space correction passes y's noise
  through). The official per-slot Anderson leaves the noise-aware chain unconverged in 15
  evaluations (natural64 denoising: residual 1.8-3.6e-2, up to 6.4 dB below the triangular
  one, which comes within 4e-3; `docs/quality.md`)."""
  from jaxir.solvers.deqir import DEQIR_PRESETS
  if sigma_y > 0:
    return dataclasses.replace(DEQIR_PRESETS["taa"], sigma_y=sigma_y)
  return DEQIR_PRESETS["official"]


def _deqir_fn(key, y, operator, prior, config):
  """DeqIR; with sigma_y > 0 (DDNM+ steps need the spectrum) a `Blur` runs in its circular
  SVD form, as DDRM/DDNM run it."""
  from jaxir.operators.blur import svd_form
  from jaxir.solvers.deqir import deqir
  if config.sigma_y > 0:
    operator = svd_form(operator, approximate=True) or operator
  return deqir(key, y, operator, prior, config)


def _ddnm_config(task, sigma_y, prior):
  """DDNM's paper preset for the task (100 steps, eta 0.85), DDNM+ when sigma_y > 0."""
  from jaxir.solvers.ddnm import DDNM_PRESETS, ddnm_preset
  return ddnm_preset(task if task in DDNM_PRESETS else "sr4", sigma_y=sigma_y)


def _ddrm_config(task, sigma_y, prior):
  """DDRM's official preset for the task (20 steps, eta 0.85, eta_b 1), at noise sigma_y."""
  from jaxir.solvers.ddrm import DDRM_PRESETS, ddrm_preset
  return ddrm_preset(task if task in DDRM_PRESETS else "sr4", sigma_y=sigma_y)


def _diffpir_config(task, sigma_y, prior):
  """DiffPIR's preset for the task (100 steps; lambda, zeta per task), at noise sigma_y."""
  from jaxir.solvers.diffpir import DIFFPIR_PRESETS, diffpir_preset
  return diffpir_preset(task if task in DIFFPIR_PRESETS else "sr4", sigma_y=sigma_y)


def _pigdm_config(task, sigma_y, prior):
  """PiGDM's preset for the task (100 steps), at noise sigma_y."""
  from jaxir.solvers.pigdm import PIGDM_PRESETS, pigdm_preset
  return pigdm_preset(task if task in PIGDM_PRESETS else "sr4", sigma_y=sigma_y)


def _in_svd_form(solver):
  """`solver` with a `Blur` operator replaced by its circular SVD form (DDRM/DDNM deblurring)."""
  def run(key, y, operator, prior, config):
    from jaxir.operators.blur import svd_form
    return solver(key, y, svd_form(operator, approximate=True) or operator, prior, config)
  run.__name__ = getattr(solver, "__name__", "solver")
  run.__doc__ = solver.__doc__
  return run


def _bird_config(task, sigma_y, prior):
  from jaxir.solvers.bird import bird_preset
  return bird_preset(BIRD_TASK_PRESETS.get(task, "paper"))


def _bird_fn(key, y, operator, prior, config):
  """BIRD with a known operator (`NonBlind`); blind degradations pass through."""
  from jaxir.operators.blind import BlindDegradation, NonBlind
  from jaxir.solvers.bird import bird
  deg = operator if isinstance(operator, BlindDegradation) else NonBlind(operator)
  return bird(key, y, deg, prior, config)


def _register_builtins():
  from jaxir.solvers import bird, dcdp, ddnm, ddrm, deqir, diffpir, dps, pigdm
  register(SolverSpec("dcdp", dcdp.dcdp, dcdp.DCDPConfig, _dcdp_config(False),
                      dcdp.DCDP_PRESETS, "any",
                      "DCDP: data-consistency steps alternated with DDIM purification",
                      DCDP_TASK_PRESETS))
  register(SolverSpec("dcdp-tweedie", dcdp.dcdp, dcdp.DCDPConfig, _dcdp_config(True),
                      dcdp.DCDP_PRESETS, "any",
                      "DCDP with one-step Tweedie purification (the fast variant)",
                      DCDP_TASK_PRESETS))
  register(SolverSpec("dps", dps.dps, dps.DPSConfig, _dps_config, dps.DPS_PRESETS, "any",
                      "DPS: ancestral sampling with measurement-gradient guidance",
                      DPS_TASK_PRESETS))
  register(SolverSpec("ddnm", _in_svd_form(ddnm.ddnm), ddnm.DDNMConfig, _ddnm_config, ddnm.DDNM_PRESETS, "svd",
                      "DDNM/DDNM+: DDIM with the range-space projection (noise-aware with "
                      "sigma_y > 0)"))
  register(SolverSpec("ddrm", _in_svd_form(ddrm.ddrm), ddrm.DDRMConfig, _ddrm_config, ddrm.DDRM_PRESETS, "svd",
                      "DDRM: variational-posterior DDIM in the operator's spectral domain"))
  register(SolverSpec("diffpir", diffpir.diffpir, diffpir.DiffPIRConfig, _diffpir_config,
                      diffpir.DIFFPIR_PRESETS, "any",
                      "DiffPIR: DDIM with a proximal data step (closed form via the SVD)"))
  register(SolverSpec("pigdm", pigdm.pigdm, pigdm.PiGDMConfig, _pigdm_config,
                      pigdm.PIGDM_PRESETS, "linear",
                      "PiGDM: DDIM guided by the pseudo-inverse residual through one VJP"))
  from jaxir.tasks import TASKS
  # DeqIR's preset per task at the task's default noise (`_deqir_config`: "taa" when noisy).
  deqir_tasks = {t: ("taa" if spec.sigma_y > 0 else "official") for t, spec in TASKS.items()}
  register(SolverSpec("deqir", _deqir_fn, deqir.DeqIRConfig, _deqir_config, deqir.DEQIR_PRESETS,
                      "linear", "DeqIR: the DDNM chain as one fixed point, all steps in parallel "
                      "(noise-aware with sigma_y > 0)", deqir_tasks))
  register(SolverSpec("bird", _bird_fn, bird.BIRDConfig, _bird_config, bird.BIRD_PRESETS, "any",
                      "BIRD: optimize the noise of a short DDIM chain (and a blind kernel)",
                      BIRD_TASK_PRESETS))


_register_builtins()
