"""How much of the input reaches a sparse DQN's Q-values at initialisation, against SB3's dense network.

At 90% sparsity SB3's default initialisation (drawn for the dense fan-in) leaves each neuron with a tenth of
its inputs, so activations shrink layer by layer; ``sparse_init=True`` rescales each neuron's weights by
sqrt(dense fan-in / actual fan-in). For NatureCNN (three convolutions, 4x84x84 uint8 frames) and MinAtarCNN
(one convolution, 10x10x4 boolean frames), over a batch of random frames: the standard deviation across
frames of the features and of the Q-values (how much the Q-values depend on the frame at all), mean over
units. Torch seed 0; prints a Markdown table.

    python benchmarks/signal_at_init.py
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.dqn.policies import CnnPolicy

from sparse_rl import SparseCnnDQNPolicy
from sparse_rl.agents.extractors import MinAtarCNN


def spreads(policy, space, obs) -> tuple[float, float]:
    x = preprocess_obs(policy.obs_to_tensor(obs)[0], space)
    with torch.no_grad():
        features = policy.q_net.features_extractor(x)
        q = policy.q_net.q_net(features)
    return features.std(0).mean().item(), q.std(0).mean().item()


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    cases = {
        "NatureCNN, 4x84x84": (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(4), {},
                               rng.integers(0, 256, (32, 4, 84, 84)).astype(np.uint8)),
        "MinAtarCNN + 128, 10x10x4": (gym.spaces.Box(0, 1, (10, 10, 4), bool), gym.spaces.Discrete(3),
                                      dict(features_extractor_class=MinAtarCNN, net_arch=[128]),
                                      rng.uniform(size=(64, 10, 10, 4)) > 0.8),
    }
    print("| network | policy | feature std across frames | Q std across frames | Q std / dense |")
    print("|---|---|---|---|---|")
    for name, (space, actions, kwargs, obs) in cases.items():
        dense_q = None
        for label, extra in (("dense (SB3)", None), ("90% sparse", {}), ("90% sparse, sparse_init=True",
                                                                          dict(sparse_init=True))):
            torch.manual_seed(0)
            if extra is None:
                policy = CnnPolicy(space, actions, lambda _: 1e-3, **kwargs)
            else:
                policy = SparseCnnDQNPolicy(space, actions, lambda _: 1e-3, sparsity=0.9, **kwargs, **extra)
            f, q = spreads(policy, space, obs)
            dense_q = q if dense_q is None else dense_q
            print(f"| {name} | {label} | {f:.2e} | {q:.2e} | {q / dense_q:.3f} |")


if __name__ == "__main__":
    main()
