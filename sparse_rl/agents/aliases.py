"""Make SB3's policy names mean sparse_rl's policies: ``SAC("MlpPolicy", env)`` then builds a sparse one.

SB3 resolves a policy given by name through the algorithm's ``policy_aliases``; :func:`install_aliases` points
them at our classes, for code (scripts, rl-zoo3, SB3's own test suite) that names its policies by string.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

#: per algorithm (``module:Class``), SB3's alias -> our class in :mod:`sparse_rl.agents`
ALIASES: dict[str, dict[str, str]] = {
    "stable_baselines3:SAC": {"MlpPolicy": "SparseSACPolicy", "MultiInputPolicy": "SparseMultiInputSACPolicy"},
    "stable_baselines3:TD3": {"MlpPolicy": "SparseTD3Policy", "MultiInputPolicy": "SparseMultiInputTD3Policy"},
    "stable_baselines3:DDPG": {"MlpPolicy": "SparseTD3Policy", "MultiInputPolicy": "SparseMultiInputTD3Policy"},
    "stable_baselines3:PPO": {"MlpPolicy": "SparseActorCriticPolicy", "MultiInputPolicy": "SparseMultiInputActorCriticPolicy"},
    "stable_baselines3:A2C": {"MlpPolicy": "SparseActorCriticPolicy", "MultiInputPolicy": "SparseMultiInputActorCriticPolicy"},
    "stable_baselines3:DQN": {"MlpPolicy": "SparseDQNPolicy", "CnnPolicy": "SparseCnnDQNPolicy"},
    "sb3_contrib:TQC": {"MlpPolicy": "SparseTQCPolicy"},
    "sb3_contrib:CrossQ": {"MlpPolicy": "SparseCrossQPolicy"},
}


def _algorithm(path: str) -> type | None:
    module, name = path.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:  # sb3-contrib not installed: its algorithms keep their own policies
        return None


def install_aliases(algorithms: Iterable[str] | None = None) -> Callable[[], None]:
    """Point the ``policy_aliases`` of ``algorithms`` (names such as ``"SAC"``, ``"DQN"``; default: all of
    :data:`ALIASES`) at sparse_rl's policies. Returns a function that restores SB3's own."""
    import sparse_rl.agents as agents

    wanted = {a.upper() for a in algorithms} if algorithms is not None else None
    saved: list[tuple[type, dict]] = []
    for path, aliases in ALIASES.items():
        if wanted is not None and path.split(":")[1].upper() not in wanted:
            continue
        algo = _algorithm(path)
        if algo is None:
            continue
        saved.append((algo, algo.__dict__.get("policy_aliases", algo.policy_aliases)))
        algo.policy_aliases = {**algo.policy_aliases, **{k: getattr(agents, v) for k, v in aliases.items()}}

    def restore() -> None:
        for algo, old in saved:
            algo.policy_aliases = old

    return restore


__all__ = ["ALIASES", "install_aliases"]
