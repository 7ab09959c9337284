"""Topology evolution: updaters (what to drop/grow), schedules (when/how much) and the controller.

Depends on torch and :mod:`sparse_rl.sparse` only.
"""

from sparse_rl.topology.controller import (
    TopologyConfig,
    TopologyController,
    layer_flops,
    network_stats,
    sparse_seed,
)
from sparse_rl.topology.schedules import available_schedules, get_schedule, register_schedule
from sparse_rl.topology.updaters import (
    MaskUpdate,
    Updater,
    available_updaters,
    make_updater,
    register_updater,
)

__all__ = [
    "MaskUpdate",
    "TopologyConfig",
    "TopologyController",
    "Updater",
    "available_schedules",
    "available_updaters",
    "get_schedule",
    "layer_flops",
    "make_updater",
    "network_stats",
    "register_schedule",
    "register_updater",
    "sparse_seed",
]
