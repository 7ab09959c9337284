"""Drop-fraction schedules: *how much* to change, as a function of training progress.

``progress`` is the fraction of the planned training done, in [0, 1]. After ``end_fraction`` the
topology is frozen (the fraction is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

ScheduleFn = Callable[[float, float, float], float]

_SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Make ``fn(progress, drop_fraction, end_fraction) -> fraction`` selectable by ``name``."""

    def deco(fn: ScheduleFn) -> ScheduleFn:
        _SCHEDULES[name] = fn
        return fn

    return deco


@register_schedule("constant")
def constant(progress: float, drop_fraction: float, end_fraction: float) -> float:
    return drop_fraction if progress < end_fraction else 0.0


@register_schedule("cosine")
def cosine(progress: float, drop_fraction: float, end_fraction: float) -> float:
    """RigL's decay: ``drop_fraction / 2 * (1 + cos(pi * progress / end_fraction))``."""
    if progress >= end_fraction:
        return 0.0
    return drop_fraction / 2 * (1 + math.cos(math.pi * progress / end_fraction))


def available_schedules() -> list[str]:
    return sorted(_SCHEDULES)


def get_schedule(name: str) -> ScheduleFn:
    """:raises ValueError: for an unknown name (the message lists the known ones)."""
    if name not in _SCHEDULES:
        raise ValueError(f"unknown drop schedule {name!r}; known: {', '.join(available_schedules())}")
    return _SCHEDULES[name]
