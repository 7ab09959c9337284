"""Stable-Baselines3 integration: sparse SAC and TD3 policies."""

from sparse_rl.agents.policies import (
    SparsePolicyMixin,
    SparseSACPolicy,
    SparseTD3Policy,
    SparsityConfig,
    sparsity_report,
)

__all__ = ["SparsePolicyMixin", "SparseSACPolicy", "SparseTD3Policy", "SparsityConfig", "sparsity_report"]
