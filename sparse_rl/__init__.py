"""sparse_rl: sparse deep reinforcement learning agents for Stable-Baselines3.

Public names are imported lazily, so numpy-only parts (``sparse_rl.export.runtime``) work without
importing torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SparseActorCriticPolicy": "sparse_rl.agents",
    "SparseCnnDQNPolicy": "sparse_rl.agents",
    "SparseCrossQPolicy": "sparse_rl.agents",
    "SparseDQNPolicy": "sparse_rl.agents",
    "SparseMultiInputActorCriticPolicy": "sparse_rl.agents",
    "SparseMultiInputSACPolicy": "sparse_rl.agents",
    "SparseMultiInputTD3Policy": "sparse_rl.agents",
    "SparseSACPolicy": "sparse_rl.agents",
    "SparseTD3Policy": "sparse_rl.agents",
    "SparseTQCPolicy": "sparse_rl.agents",
    "SparsityConfig": "sparse_rl.agents",
    "sparsity_report": "sparse_rl.agents",
    "install_aliases": "sparse_rl.agents.aliases",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_rl' has no attribute {name!r}")
