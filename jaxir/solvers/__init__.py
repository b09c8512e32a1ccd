"""Restoration solvers: pure functions `solver(key, y, operator, prior, config) -> (x, info)`.

Layer: imports `jaxir.operators`, `jaxir.diffusion`, `jaxir.fixed_point`, `jaxir.tasks`
and `jaxir.errors`; a prior is only passed in (duck-typed), never imported.

`jaxir.solvers.dcdp`, `dps`, `ddnm`, `ddrm`, `diffpir`, `pigdm`, `deqir` and `bird` are modules holding each solver's
building blocks, and are callable as the solver itself:
`jaxir.solvers.dcdp(key, y, op, prior, jaxir.solvers.dcdp_preset("sr4"))`.
"""
from jaxir.solvers import bird, dcdp, ddnm, ddrm, deqir, diffpir, dps, pigdm
from jaxir.solvers.bird import BIRD_PRESETS, BIRDConfig, BIRDInfo, bird_preset
from jaxir.solvers.dcdp import DCDP_PRESETS, DCDPConfig, DCDPInfo, dcdp_nfe, dcdp_preset
from jaxir.solvers.ddnm import DDNM_PRESETS, DDNMConfig, DDNMInfo, ddnm_preset
from jaxir.solvers.ddrm import DDRM_PRESETS, DDRMConfig, DDRMInfo, ddrm_preset
from jaxir.solvers.deqir import DeqIRConfig, DeqIRInfo
from jaxir.solvers.diffpir import DIFFPIR_PRESETS, DiffPIRConfig, DiffPIRInfo, diffpir_preset
from jaxir.solvers.dps import DPS_PRESETS, DPSConfig, DPSInfo, dps_preset
from jaxir.solvers.pigdm import PIGDM_PRESETS, PiGDMConfig, PiGDMInfo, pigdm_preset

__all__ = ["bird", "BIRDConfig", "BIRDInfo", "BIRD_PRESETS", "bird_preset",
           "dcdp", "dps", "DCDPConfig", "DCDPInfo", "DCDP_PRESETS", "dcdp_preset", "dcdp_nfe",
           "ddrm", "DDRMConfig", "DDRMInfo", "DDRM_PRESETS", "ddrm_preset",
           "ddnm", "DDNMConfig", "DDNMInfo", "DDNM_PRESETS", "ddnm_preset", "deqir", "DeqIRConfig", "DeqIRInfo",
           "DPSConfig", "DPSInfo", "DPS_PRESETS", "dps_preset",
           "diffpir", "DiffPIRConfig", "DiffPIRInfo", "DIFFPIR_PRESETS", "diffpir_preset",
           "pigdm", "PiGDMConfig", "PiGDMInfo", "PIGDM_PRESETS", "pigdm_preset"]
