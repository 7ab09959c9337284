"""Environment names: short names for Gymnasium's MuJoCo and classic-control tasks."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

#: short name -> current Gymnasium id
SHORT_NAMES: dict[str, str] = {
    "HalfCheetah": "HalfCheetah-v5",
    "Hopper": "Hopper-v5",
    "Walker2d": "Walker2d-v5",
    "Ant": "Ant-v5",
    "Humanoid": "Humanoid-v5",
    "Swimmer": "Swimmer-v5",
    "Reacher": "Reacher-v5",
    "InvertedPendulum": "InvertedPendulum-v5",
    "InvertedDoublePendulum": "InvertedDoublePendulum-v5",
    "Pusher": "Pusher-v5",
    "Pendulum": "Pendulum-v1",
}


def resolve_env_id(name: str) -> str:
    """Map a short name (``HalfCheetah``) to its Gymnasium id; registered ids pass through.

    :raises ValueError: for an unknown name, with close matches among short names and registered ids.
    """
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name in gym.registry:
        return name
    candidates = list(SHORT_NAMES) + list(gym.registry)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"short names: {', '.join(SHORT_NAMES)}"
    raise ValueError(f"unknown environment {name!r}; {hint}")


def make_env(env_id: str, n_envs: int = 1, seed: int | None = None, env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """A monitored SB3 vector env of ``n_envs`` copies of ``env_id`` (short names accepted)."""
    return make_vec_env(resolve_env_id(env_id), n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or {})


__all__ = ["SHORT_NAMES", "make_env", "resolve_env_id"]
