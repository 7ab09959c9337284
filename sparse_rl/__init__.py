"""sparse_rl: sparse deep reinforcement learning agents for Stable-Baselines3."""

from sparse_rl.agents import SparseSACPolicy, SparseTD3Policy, SparsityConfig, sparsity_report

__version__ = "0.1.0"

__all__ = ["SparseSACPolicy", "SparseTD3Policy", "SparsityConfig", "__version__", "sparsity_report"]
