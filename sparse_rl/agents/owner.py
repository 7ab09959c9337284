"""Finding the SB3 algorithm that owns a policy or replay buffer, without subclassing the algorithm."""

from __future__ import annotations

import sys
import weakref
from typing import Any


def find_owner(part: Any, attribute: str, cached: weakref.ReferenceType | None) -> tuple[Any, weakref.ReferenceType | None]:
    """The algorithm whose ``attribute`` (``"policy"``, ``"replay_buffer"``) is ``part``.

    Tries the cached weak reference first, then the call stack: the ``self`` of the SB3 method calling
    into ``part`` (``SAC.train``, ``collect_rollouts``). Returns ``(algorithm or None, reference to cache)``.
    """
    owner = cached() if cached is not None else None
    if owner is not None and getattr(owner, attribute, None) is part:
        return owner, cached
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if candidate is not part and getattr(candidate, attribute, None) is part and hasattr(candidate, "num_timesteps"):
            return candidate, weakref.ref(candidate)
        frame = frame.f_back
    return None, cached
