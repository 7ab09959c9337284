"""Sparse PPO on SB3's continuous identity task (tests/test_identity.py::test_continuous's settings), by sparsity.

    python benchmarks/ppo_identity.py [--seeds 3]

SB3's own test trains PPO for 1,000 steps (4 rollouts of 256, 4 epochs) on ``IdentityEnvBox(eps=0.5)`` and asks
for a mean reward of 90 over 20 episodes; SB3's default ``net_arch`` is [64, 64]. Prints the mean reward per
seed for dense, 90% and 50% sparse (RigL; no topology update happens in 64 optimizer steps).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.envs import IdentityEnvBox
from stable_baselines3.common.evaluation import evaluate_policy

from sparse_rl import SparseActorCriticPolicy


def score(seed: int, sparsity: float | None) -> float:
    env = IdentityEnvBox(eps=0.5)
    policy, kwargs = ("MlpPolicy", None) if sparsity is None else (SparseActorCriticPolicy, {"sparsity": sparsity})
    model = PPO(policy, env, learning_rate=1e-3, n_steps=256, n_epochs=4, seed=seed, policy_kwargs=kwargs, device="cpu")
    model.learn(1000)
    return float(evaluate_policy(model, env, n_eval_episodes=20)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    print("| seed | dense | 90% sparse | 50% sparse |\n|---|---|---|---|")
    for seed in range(args.seeds):
        print(f"| {seed} | {score(seed, None):.1f} | {score(seed, 0.9):.1f} | {score(seed, 0.5):.1f} |", flush=True)


if __name__ == "__main__":
    main()
