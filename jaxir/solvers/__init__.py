"""Restoration solvers: pure functions `solver(key, y, operator, prior, config) -> (x, info)`.

`jaxir.solvers.dcdp` and `jaxir.solvers.dps` are modules holding each solver's
building blocks, and are callable as the solver itself:
`jaxir.solvers.dcdp(key, y, op, prior, jaxir.solvers.dcdp_preset("sr4"))`.
"""
from jaxir.solvers import dcdp, dps
from jaxir.solvers.dcdp import DCDP_PRESETS, DCDPConfig, DCDPInfo, dcdp_nfe, dcdp_preset
from jaxir.solvers.dps import DPS_PRESETS, DPSConfig, DPSInfo, dps_preset

__all__ = ["dcdp", "dps", "DCDPConfig", "DCDPInfo", "DCDP_PRESETS", "dcdp_preset", "dcdp_nfe",
           "DPSConfig", "DPSInfo", "DPS_PRESETS", "dps_preset"]
