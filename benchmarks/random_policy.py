"""The return of uniformly random actions: the floor a trained agent is compared with.

    python benchmarks/random_policy.py --env HalfCheetah --episodes 10
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np

from sparse_rl.envs import resolve_env_id


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="HalfCheetah")
    p.add_argument("--episodes", type=int, default=10)
    args = p.parse_args()
    env = gym.make(resolve_env_id(args.env))
    env.action_space.seed(0)
    returns = []
    for episode in range(args.episodes):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    print(f"{env.spec.id}: random actions, {args.episodes} episodes (seeds 0..{args.episodes - 1}): "
          f"return {np.mean(returns):.1f} ± {np.std(returns):.1f}")


if __name__ == "__main__":
    main()
