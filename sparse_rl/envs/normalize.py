"""Observation and reward normalisation (SB3's ``VecNormalize``, rl-zoo3's ``normalize: true``) for CLI runs.

The training env normalises observations and rewards with running statistics; the evaluation env takes the
training env's observation statistics before each evaluation and reports raw rewards. The statistics are
part of the run's state: every checkpoint keeps them as plain arrays (no pickle) beside the env's state, so
a resumed run continues them exactly, and evaluation and export read them from the run's latest checkpoint
(the final one for a finished run).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

#: what of a VecNormalize is state (the rest, clip ranges, epsilon, gamma, comes from the run's config)
_RMS = ("mean", "var", "count")


def normalize_env(venv: VecEnv, gamma: float, norm_reward: bool = True, training: bool = True) -> VecNormalize:
    """``venv`` under SB3's ``VecNormalize`` with rl-zoo3's settings: observations clipped to +-10 standard
    deviations, rewards scaled by the running std of the discounted return at the algorithm's ``gamma``. An
    evaluation env (``training=False``) neither updates statistics nor scales rewards."""
    return VecNormalize(venv, training=training, norm_obs=True, norm_reward=norm_reward and training, gamma=gamma)


def normalization_state(venv: VecNormalize) -> dict[str, Any]:
    """The running statistics and per-env return accumulators of ``venv``, as numpy arrays and numbers."""
    state: dict[str, Any] = {f"obs_{k}": np.asarray(getattr(venv.obs_rms, k), dtype=np.float64) for k in _RMS}
    state.update({f"ret_{k}": np.asarray(getattr(venv.ret_rms, k), dtype=np.float64) for k in _RMS})
    state["returns"] = np.asarray(venv.returns, dtype=np.float64)
    if getattr(venv, "old_obs", None) is not None and not isinstance(venv.old_obs, dict):
        state["old_obs"] = np.asarray(venv.old_obs)
        state["old_reward"] = np.asarray(venv.old_reward)
    state.update(clip_obs=float(venv.clip_obs), epsilon=float(venv.epsilon))
    return state


def set_normalization_state(venv: VecNormalize, state: dict[str, Any]) -> None:
    """Restore :func:`normalization_state` into ``venv`` (its statistics; also its accumulators while training)."""
    for prefix, rms in (("obs", venv.obs_rms), ("ret", venv.ret_rms)):
        rms.mean = np.array(state[f"{prefix}_mean"], dtype=np.float64)
        rms.var = np.array(state[f"{prefix}_var"], dtype=np.float64)
        rms.count = float(np.asarray(state[f"{prefix}_count"]))
    if venv.training:
        venv.returns = np.array(state["returns"], dtype=np.float64)
        if "old_obs" in state:
            venv.old_obs = np.array(state["old_obs"])
            venv.old_reward = np.array(state["old_reward"])


def obs_normalization(state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mean, std, clip)`` such that the policy sees ``clip((obs - mean) / std, -clip, clip)``, as
    ``VecNormalize.normalize_obs`` computes it (``std = sqrt(var + epsilon)``)."""
    mean = np.asarray(state["obs_mean"], dtype=np.float64)
    std = np.sqrt(np.asarray(state["obs_var"], dtype=np.float64) + float(state["epsilon"]))
    return mean, std, float(state["clip_obs"])


__all__ = ["normalization_state", "normalize_env", "obs_normalization", "set_normalization_state"]
