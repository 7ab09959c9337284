"""Sparse policies for sb3-contrib's TQC and CrossQ (the ``[contrib]`` extra: ``pip install 'sparse_rl[contrib]'``).

Their actors are SAC's (``latent_pi``, ``mu``, ``log_std``; CrossQ puts BatchRenorm before each linear), their
critics hold several ``q_networks`` (TQC's output quantiles). TQC keeps a target critic that follows the
critic's masks; CrossQ has no target network.
"""

from __future__ import annotations

try:
    from sb3_contrib.crossq.policies import CrossQPolicy
    from sb3_contrib.tqc.policies import TQCPolicy
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError("SparseTQCPolicy and SparseCrossQPolicy need sb3-contrib: pip install 'sparse_rl[contrib]'") from err
from torch import nn

from sparse_rl.agents.policies import SACLikeActorMixin, SparsePolicyMixin


class SparseTQCPolicy(SACLikeActorMixin, SparsePolicyMixin, TQCPolicy):
    """sb3-contrib's :class:`TQCPolicy` with sparse, evolving actor and quantile critics (and target)."""

    replay_scores = False

    def _networks(self) -> dict[str, tuple[nn.Module, list[nn.Module]]]:
        return {"actor": (self.actor, []), "critic": (self.critic, [self.critic_target])}


class SparseCrossQPolicy(SACLikeActorMixin, SparsePolicyMixin, CrossQPolicy):
    """sb3-contrib's :class:`CrossQPolicy` with sparse, evolving actor and batch-renormalised critics (no target)."""

    replay_scores = False

    def _networks(self) -> dict[str, tuple[nn.Module, list[nn.Module]]]:
        return {"actor": (self.actor, []), "critic": (self.critic, [])}


__all__ = ["SparseCrossQPolicy", "SparseTQCPolicy"]
