"""Extremely noisy and shifting inputs (Grooten et al., AAMAS 2023): noise features, and a feature permutation.

:class:`NoiseFeatures` appends ``k`` features of pure noise to a flat ``Box`` observation, so that a chosen
fraction of the observation is noise; :class:`PermuteFeatures` permutes the observation's features from a
given step of training on (the transfer setting). Both compose with any flat-``Box`` env and any algorithm,
and both keep their state (the noise generator, the step count, whether the permutation is on) where
:mod:`sparse_rl.envs.state` snapshots it, so ``--resume`` continues the same noise and permutation.

Noise kinds: ``normal`` (N(0, 1)), ``uniform`` (U[-1, 1]) and ``matched``: noise feature ``j`` is drawn from
a normal distribution with the mean and standard deviation of real feature ``j mod n``, measured by us on
:data:`MATCH_STEPS` steps of uniformly random actions (seed 0), so that scale alone does not tell noise from
signal, in the spirit of the ANF code's fake features.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import gymnasium as gym
import numpy as np

NOISE_KINDS = ("normal", "uniform", "matched")
#: random-action steps over which ``matched`` noise measures the real features' statistics
MATCH_STEPS = 2000


class WrapperError(ValueError):
    """A wrapper cannot be applied as asked; the message names the value and what is allowed."""


def noise_feature_count(n_real: int, fraction: float) -> int:
    """``k`` such that ``k / (n_real + k)`` is ``fraction`` (rounded to the nearest count)."""
    if not 0.0 <= fraction < 1.0:
        raise WrapperError(f"noise_fraction must be in [0, 1), got {fraction!r}")
    return round(fraction * n_real / (1.0 - fraction))


def _flat_box(env: gym.Env, what: str) -> gym.spaces.Box:
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise WrapperError(f"{what} needs a flat Box observation space; this env has {space}")
    return space


def feature_statistics(env_id: str, env_kwargs: dict[str, Any] | None = None, steps: int = MATCH_STEPS
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each observation feature of ``env_id`` over ``steps`` steps of uniformly
    random actions (env and action seeds 0): what ``matched`` noise copies. Measured once per process for each
    env and kwargs (a run's check, training env and evaluation env share it)."""
    key = tuple(sorted((env_kwargs or {}).items()))
    try:
        hash(key)
    except TypeError:  # kwargs with lists or mappings: measured each time
        return _feature_statistics.__wrapped__(env_id, key, steps)
    return _feature_statistics(env_id, key, steps)


@functools.lru_cache(maxsize=8)
def _feature_statistics(env_id: str, kwargs: tuple, steps: int) -> tuple[np.ndarray, np.ndarray]:
    env = gym.make(env_id, **dict(kwargs))
    try:
        env.action_space.seed(0)
        obs, _ = env.reset(seed=0)
        seen = [obs]
        for _ in range(steps - 1):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            seen.append(obs)
            if terminated or truncated:
                obs, _ = env.reset()
                seen.append(obs)
    finally:
        env.close()
    data = np.asarray(seen, dtype=np.float64)
    mean, std = data.mean(0), np.maximum(data.std(0), 1e-6)
    mean.flags.writeable = std.flags.writeable = False  # shared through the cache
    return mean, std


class NoiseFeatures(gym.ObservationWrapper):
    """Append ``count`` noise features to each observation (after the real ones).

    :param count: how many noise features (:func:`noise_feature_count` turns a fraction into one).
    :param kind: ``normal``, ``uniform`` or ``matched`` (then ``stats`` = the real features' mean and std).
    :param seed: the noise generator's seed; it is re-seeded with ``seed + reset seed`` whenever the env is
        reset with a seed, so vectorised copies (seeded ``seed + rank`` by SB3) draw different noise.
    """

    def __init__(self, env: gym.Env, count: int, kind: str = "normal", seed: int = 0,
                 stats: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__(env)
        space = _flat_box(env, "noise features")
        if kind not in NOISE_KINDS:
            raise WrapperError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        if count < 0:
            raise WrapperError(f"the number of noise features must be >= 0, got {count}")
        if kind == "matched" and stats is None:
            raise WrapperError("matched noise needs the real features' statistics (feature_statistics)")
        self.count, self.kind, self.seed = int(count), kind, int(seed)
        self.n_real = int(space.shape[0])
        if kind == "matched":
            mean, std = (np.asarray(a, dtype=np.float64) for a in stats)  # type: ignore[union-attr]
            index = np.arange(self.count) % self.n_real
            self._mean, self._std = mean[index], std[index]
        bound = np.inf if kind != "uniform" else 1.0
        low = np.concatenate([space.low, np.full(self.count, -bound)]).astype(space.dtype)
        high = np.concatenate([space.high, np.full(self.count, bound)]).astype(space.dtype)
        self.observation_space = gym.spaces.Box(low, high, dtype=space.dtype)
        self.rng = np.random.default_rng(self.seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.rng = np.random.default_rng([self.seed, seed])
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if self.kind == "normal":
            noise = self.rng.standard_normal(self.count)
        elif self.kind == "uniform":
            noise = self.rng.uniform(-1.0, 1.0, self.count)
        else:
            noise = self._mean + self._std * self.rng.standard_normal(self.count)
        return np.concatenate([observation, noise.astype(observation.dtype)])

    def get_wrapper_state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def set_wrapper_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class PermuteFeatures(gym.ObservationWrapper):
    """From this env's ``at``-th step on, the observation's features come in a fixed random order.

    :param at: the env steps (of this copy) after which the permutation is on; 0 never switches it on by
        itself (an evaluation env follows its training env through :attr:`active`).
    :param seed: the permutation's own seed (the same permutation whatever the run's seed); never the
        identity (drawn again until it is not).
    """

    def __init__(self, env: gym.Env, at: int, seed: int = 0):
        super().__init__(env)
        space = _flat_box(env, "a feature permutation")
        if at < 0:
            raise WrapperError(f"permute_at must be >= 0, got {at}")
        self.at, self.seed = int(at), int(seed)
        rng, n = np.random.default_rng(self.seed), space.shape[0]
        self.order = rng.permutation(n)
        while n > 1 and np.array_equal(self.order, np.arange(n)):  # a transfer needs the features to move
            self.order = rng.permutation(n)
        self.observation_space = gym.spaces.Box(space.low[self.order], space.high[self.order], dtype=space.dtype)
        self.steps = 0
        self.active = False

    def step(self, action):
        self.steps += 1
        if self.at and self.steps >= self.at:
            self.active = True
        return super().step(action)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.order] if self.active else observation

    def get_wrapper_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "active": self.active}

    def set_wrapper_state(self, state: dict[str, Any]) -> None:
        self.steps, self.active = int(state["steps"]), bool(state["active"])


def wrap_env(env: gym.Env, env_id: str, options: dict[str, Any], env_kwargs: dict[str, Any] | None = None,
             n_envs: int = 1) -> gym.Env:
    """Apply the wrappers ``options`` ask for (:func:`wrapper_options`): noise features, then the permutation
    (which then permutes real and noise features alike). ``permute_at`` counts the steps of all ``n_envs``
    copies together, as SB3's ``num_timesteps`` does."""
    fraction = float(options.get("noise_fraction", 0.0))
    if fraction > 0:
        space = _flat_box(env, "noise features")
        kind = options.get("noise_kind", "normal")
        stats = feature_statistics(env_id, env_kwargs) if kind == "matched" else None
        env = NoiseFeatures(env, noise_feature_count(space.shape[0], fraction), kind, options.get("noise_seed", 0), stats)
    at = int(options.get("permute_at", 0))
    if at > 0:
        env = PermuteFeatures(env, math.ceil(at / n_envs), options.get("permute_seed", 0))
    return env


def sync_permutation(venv: Any, num_timesteps: int, *, at: int) -> None:
    """Switch the permutation of every copy in ``venv`` (an evaluation env) on when training has passed ``at``;
    from then on the copies follow their training env only (their own steps no longer switch it)."""
    for env in getattr(venv, "envs", []):
        while isinstance(env, gym.Wrapper):
            if isinstance(env, PermuteFeatures):
                env.at = 0
                env.active = bool(at) and num_timesteps >= at
            env = env.env


__all__ = ["MATCH_STEPS", "NOISE_KINDS", "NoiseFeatures", "PermuteFeatures", "WrapperError", "feature_statistics",
           "noise_feature_count", "sync_permutation", "wrap_env"]
