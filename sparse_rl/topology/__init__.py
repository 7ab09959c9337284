"""Topology evolution: methods (what changes), schedules (when, how much) and the controller.

Depends on torch and :mod:`sparse_rl.sparse` only.
"""

from sparse_rl.topology.controller import (
    TopologyConfig,
    TopologyController,
    layer_flops,
    network_stats,
    sparse_seed,
)
from sparse_rl.topology.methods import (
    SET,
    DropGrow,
    MaskUpdate,
    Method,
    RigL,
    Static,
    available_methods,
    make_method,
    method_options,
    register_method,
)
from sparse_rl.topology.nnstd import nnstd
from sparse_rl.topology.schedules import available_schedules, get_schedule, register_schedule

__all__ = [
    "SET",
    "DropGrow",
    "MaskUpdate",
    "Method",
    "RigL",
    "Static",
    "TopologyConfig",
    "TopologyController",
    "available_methods",
    "available_schedules",
    "get_schedule",
    "layer_flops",
    "make_method",
    "method_options",
    "network_stats",
    "nnstd",
    "register_method",
    "register_schedule",
    "sparse_seed",
]
