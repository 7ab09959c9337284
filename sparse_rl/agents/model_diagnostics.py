"""Diagnostics of a training SAC/TD3 model on replay data: dormant neurons and critic gradient SNR.

They run on batches from the model's replay buffer and leave every random generator as they found it,
so evaluating does not change the course of training.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from sparse_rl.sparse import dense_gradient_view
from sparse_rl.topology.layer_diagnostics import dormant_neurons, gradient_snr


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


def critic_loss(model: Any, data: ReplayBufferSamples) -> torch.Tensor:
    """The critic loss SB3's SAC/TD3 ``train`` would minimise on ``data``."""
    discounts = data.discounts if data.discounts is not None else model.gamma
    with torch.no_grad():
        if hasattr(model, "ent_coef_optimizer"):  # SAC
            next_actions, next_log_prob = model.actor.action_log_prob(data.next_observations)
            next_q = torch.cat(model.critic_target(data.next_observations, next_actions), dim=1).min(dim=1, keepdim=True)[0]
            coef = torch.exp(model.log_ent_coef.detach()) if model.log_ent_coef is not None else model.ent_coef_tensor
            next_q = next_q - coef * next_log_prob.reshape(-1, 1)
            scale = 0.5
        else:  # TD3
            noise = (data.actions.clone().normal_(0, model.target_policy_noise)).clamp(
                -model.target_noise_clip, model.target_noise_clip
            )
            next_actions = (model.actor_target(data.next_observations) + noise).clamp(-1, 1)
            next_q = torch.cat(model.critic_target(data.next_observations, next_actions), dim=1).min(dim=1, keepdim=True)[0]
            scale = 1.0
        target = data.rewards + (1 - data.dones) * discounts * next_q
    current = model.critic(data.observations, data.actions)
    return scale * sum(F.mse_loss(q, target) for q in current)


def actor_loss(model: Any, data: ReplayBufferSamples) -> torch.Tensor:
    """The actor loss SB3's SAC/TD3 ``train`` would minimise on ``data``."""
    if hasattr(model, "ent_coef_optimizer"):  # SAC
        actions, log_prob = model.actor.action_log_prob(data.observations)
        coef = torch.exp(model.log_ent_coef.detach()) if model.log_ent_coef is not None else model.ent_coef_tensor
        q = torch.cat(model.critic(data.observations, actions), dim=1).min(dim=1, keepdim=True)[0]
        return (coef * log_prob.reshape(-1, 1) - q).mean()
    return -model.critic.q1_forward(data.observations, model.actor(data.observations)).mean()


def model_diagnostics(model: Any, batch_size: int = 256, tau: float = 0.1, snr_batches: int = 8) -> dict[str, float]:
    """``actor_dormant``, ``critic_dormant`` (fractions of hidden neurons with ReDo score <= tau) and
    ``critic_grad_snr`` of SAC, TD3 and DDPG; empty while the replay buffer holds fewer than ``batch_size``
    transitions, and for the other algorithms (their losses differ)."""
    from stable_baselines3 import SAC, TD3

    buffer = getattr(model, "replay_buffer", None)
    if type(model) not in (SAC, TD3) and type(model).__name__ != "DDPG":  # the losses below are SAC's and TD3's
        return {}
    if buffer is None or buffer.size() * buffer.n_envs < batch_size:
        return {}
    policy = model.policy
    with preserved_rng():
        data = buffer.sample(batch_size)
        actor = dormant_neurons(policy.actor, lambda: policy._predict(data.observations, deterministic=True), tau)
        critic = dormant_neurons(policy.critic, lambda: policy.critic(data.observations, data.actions), tau)
        batches = [buffer.sample(batch_size) for _ in range(snr_batches)]
        with dense_gradient_view(policy.critic) as params:  # the same dense gradients on every backend
            snr = gradient_snr(params, [lambda b=b: critic_loss(model, b) for b in batches])
    policy.critic.zero_grad(set_to_none=True)
    return {"actor_dormant": actor["fraction"], "critic_dormant": critic["fraction"], "critic_grad_snr": snr}
