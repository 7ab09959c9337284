"""Stable-Baselines3 integration: sparse policies for SAC, TD3/DDPG, PPO/A2C, DQN, and sb3-contrib's TQC and CrossQ."""

from typing import Any

from sparse_rl.agents.family import (
    SparseActorCriticPolicy,
    SparseCnnDQNPolicy,
    SparseDQNPolicy,
    SparseMultiInputActorCriticPolicy,
    SparseMultiInputSACPolicy,
    SparseMultiInputTD3Policy,
)
from sparse_rl.agents.policies import (
    SparsePolicyMixin,
    SparseSACPolicy,
    SparseTD3Policy,
    SparsityConfig,
    sparsity_report,
)


def __getattr__(name: str) -> Any:
    if name in ("SparseTQCPolicy", "SparseCrossQPolicy"):  # sb3-contrib is an optional extra
        from sparse_rl.agents import contrib

        return getattr(contrib, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SparseActorCriticPolicy",
    "SparseCnnDQNPolicy",
    "SparseCrossQPolicy",
    "SparseDQNPolicy",
    "SparseMultiInputActorCriticPolicy",
    "SparseMultiInputSACPolicy",
    "SparseMultiInputTD3Policy",
    "SparsePolicyMixin",
    "SparseSACPolicy",
    "SparseTD3Policy",
    "SparseTQCPolicy",
    "SparsityConfig",
    "sparsity_report",
]
