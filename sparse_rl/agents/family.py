"""Sparse policies for the rest of the Stable-Baselines3 family: dict observations (HER), PPO/A2C, DQN, and
sb3-contrib's TQC and CrossQ.

Each class is SB3's own policy with :class:`~sparse_rl.agents.policies.SparsePolicyMixin` in front, named like
SB3's aliases, so ``PPO(SparseActorCriticPolicy, env)`` is the whole change. Networks get the names the rest of
the toolkit reads (``sparsity_report``, TensorBoard's ``sparsity/`` keys, ``actor_sparsity``/``critic_sparsity``):

=========================== ====================================================== ==========================
policy                      ``actor``                                              ``critic``
=========================== ====================================================== ==========================
SAC/TD3 ``MultiInput``      as the flat ones, behind SB3's ``CombinedExtractor``   as the flat ones
``SparseActorCriticPolicy`` ``mlp_extractor.policy_net`` + ``action_net``          ``value_net`` path
``SparseDQNPolicy``         (none)                                                 ``q_net``, target ``q_net_target``
``SparseTQCPolicy``         as SAC's                                               quantile critics + target
``SparseCrossQPolicy``      as SAC's (with BatchRenorm)                            critics, no target
=========================== ====================================================== ==========================

PPO and A2C train both networks with one optimizer: each network has its own controller (its own method
instance, schedule and counters) hooked to that optimizer, and each masks only its own layers' gradients and
Adam slots.
"""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.policies import ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.dqn.policies import CnnPolicy as DQNCnnPolicy
from stable_baselines3.dqn.policies import DQNPolicy
from stable_baselines3.sac.policies import MultiInputPolicy as SACMultiInputPolicy
from stable_baselines3.td3.policies import MultiInputPolicy as TD3MultiInputPolicy
from torch import nn

from sparse_rl.agents.policies import SparsePolicyMixin, SparseSACPolicy, SparseTD3Policy, _chain_first_last, _chain_inputs
from sparse_rl.sparse import MaskedLinear, masked_layers


class SparseMultiInputSACPolicy(SparseSACPolicy, SACMultiInputPolicy):
    """SB3's SAC ``MultiInputPolicy`` (dict observations, e.g. with ``HerReplayBuffer``), sparse."""


class SparseMultiInputTD3Policy(SparseTD3Policy, TD3MultiInputPolicy):
    """SB3's TD3/DDPG ``MultiInputPolicy`` (dict observations, e.g. with ``HerReplayBuffer``), sparse."""


class SparseActorCriticPolicy(SparsePolicyMixin, ActorCriticPolicy):
    """SB3's :class:`ActorCriticPolicy` (PPO, A2C) with a sparse, evolving policy network (``actor``: the
    extractor's ``policy_net`` and ``action_net``) and value network (``critic``: ``value_net``'s path)."""

    replay_scores = False

    def _prepare_networks(self) -> None:
        super()._prepare_networks()
        # the heads are bare nn.Linear attributes of the policy: wrap them in place (same Parameters, so the
        # optimizer SB3 just built keeps training them)
        for attr in ("action_net", "value_net"):
            head = getattr(self, attr)
            if isinstance(head, nn.Linear) and not isinstance(head, MaskedLinear):
                setattr(self, attr, MaskedLinear.from_linear(head))

    def _networks(self) -> dict[str, tuple[Any, list[nn.Module]]]:
        heads = {"actor": self.action_net, "critic": self.value_net}
        bodies = {"actor": self.mlp_extractor.policy_net, "critic": self.mlp_extractor.value_net}
        return {name: ([bodies[name], heads[name]] if isinstance(heads[name], nn.Linear) else [bodies[name]], [])
                for name in ("actor", "critic")}

    def _first_last(self, name: str, network: Any) -> tuple[list[nn.Module], list[nn.Module]]:
        return _chain_first_last([layer for module in network for layer in masked_layers(module)])

    def layer_inputs(self, name: str) -> list[int | None]:
        network = self._networks()[name][0]
        return _chain_inputs(sum(len(masked_layers(module)) for module in network))


class SparseMultiInputActorCriticPolicy(SparseActorCriticPolicy, MultiInputActorCriticPolicy):
    """SB3's ``MultiInputActorCriticPolicy`` (PPO, A2C on dict observations), sparse."""


class SparseDQNPolicy(SparsePolicyMixin, DQNPolicy):
    """SB3's :class:`DQNPolicy` with a sparse, evolving Q-network (``q_net``; its target ``q_net_target``
    follows its masks)."""

    replay_scores = False

    def _networks(self) -> dict[str, tuple[Any, list[nn.Module]]]:
        return {"q_net": (self.q_net, [self.q_net_target])}

    def _first_last(self, name: str, network: Any) -> tuple[list[nn.Module], list[nn.Module]]:
        return _chain_first_last(masked_layers(network))

    def layer_inputs(self, name: str) -> list[int | None]:
        return _chain_inputs(len(masked_layers(self.q_net)))


class SparseCnnDQNPolicy(SparseDQNPolicy, DQNCnnPolicy):
    """SB3's DQN ``CnnPolicy`` (NatureCNN) with sparse, evolving conv and linear layers."""


__all__ = [
    "SparseActorCriticPolicy",
    "SparseCnnDQNPolicy",
    "SparseDQNPolicy",
    "SparseMultiInputActorCriticPolicy",
    "SparseMultiInputSACPolicy",
    "SparseMultiInputTD3Policy",
]
