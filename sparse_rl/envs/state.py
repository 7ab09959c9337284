"""Snapshot and restore the state of SB3 ``DummyVecEnv`` training envs, so ``--resume`` continues the
very episode that was running: MuJoCo physics (``mj_getState`` with the integration state, warm-start
included), the state of classic-control envs and MinAtar games, the env's random generator, the counters of ``TimeLimit``
and SB3's ``Monitor``, and the state of our own wrappers (``get_wrapper_state``). Envs it cannot capture
raise ``TypeError`` (no silent fallback).
"""

from __future__ import annotations

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

#: MinAtar game attributes that never change (the rest is the game's state)
_MINATAR_FIXED = ("random", "channels", "action_map")
_MONITOR_FIELDS = ("rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times", "total_steps")


def _chain(env: gym.Env) -> list[gym.Env]:
    chain = [env]
    while isinstance(chain[-1], gym.Wrapper):
        chain.append(chain[-1].env)
    return chain


def _maze_inner(core: gym.Env) -> gym.Env | None:
    """The MuJoCo env inside a gymnasium-robotics maze (PointMaze's ``point_env``, AntMaze's ``ant_env``)."""
    for name in ("point_env", "ant_env"):
        inner = getattr(core, name, None)
        if inner is not None and hasattr(inner, "data") and hasattr(core, "goal"):
            return inner
    return None


def _core_state(core: gym.Env) -> dict[str, Any]:
    state: dict[str, Any] = {"np_random": copy.deepcopy(core.np_random.bit_generator.state)}
    inner = _maze_inner(core)
    if inner is not None:  # a maze: its goal and start, the goal's marker, and the robot's own env
        state["maze"] = {
            "goal": np.array(core.goal), "reset_pos": np.array(core.reset_pos),
            "target_site": np.array(inner.model.site_pos[core.target_site_id]),
            "inner": _core_state(inner),
        }
    elif hasattr(core, "data") and hasattr(core, "model"):
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        buf = np.empty(mujoco.mj_stateSize(core.model, spec))
        mujoco.mj_getState(core.model, core.data, buf, spec)
        state["mujoco"] = buf
    elif isinstance(getattr(core, "state", None), (np.ndarray, tuple, list)):
        state["state"] = copy.deepcopy(core.state)
        if hasattr(core, "last_u"):
            state["last_u"] = copy.deepcopy(core.last_u)
    elif hasattr(core, "game") and type(core.game).__module__.startswith("minatar"):
        game = core.game  # MinAtar: the game's own attributes, and its numpy RandomState (shared with game.env)
        state["minatar"] = {
            "last_action": game.last_action,
            "random": game.random.get_state(),
            "env_random": game.env.random.get_state(),
            "env": {k: copy.deepcopy(v) for k, v in vars(game.env).items() if k not in _MINATAR_FIXED},
        }
    else:
        raise TypeError(f"cannot snapshot the state of {type(core).__name__}")
    return state


def _set_core_state(core: gym.Env, state: dict[str, Any]) -> None:
    core.np_random.bit_generator.state = state["np_random"]
    if "maze" in state:
        maze, inner = state["maze"], _maze_inner(core)
        core.goal, core.reset_pos = np.array(maze["goal"]), np.array(maze["reset_pos"])
        inner.model.site_pos[core.target_site_id] = maze["target_site"]  # type: ignore[union-attr]
        _set_core_state(inner, maze["inner"])  # type: ignore[arg-type]
    elif "mujoco" in state:
        import mujoco

        mujoco.mj_setState(core.model, core.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(core.model, core.data)
    elif "minatar" in state:
        game, saved = core.game, state["minatar"]
        game.last_action = saved["last_action"]
        game.random.set_state(saved["random"])
        game.env.random.set_state(saved["env_random"])
        for k, v in saved["env"].items():  # checkpoint data keeps lists as lists and arrays as arrays
            setattr(game.env, k, copy.deepcopy(v))
    else:
        core.state = copy.deepcopy(state["state"])
        if "last_u" in state:
            core.last_u = state["last_u"]


def was_reset(venv: VecEnv) -> bool:
    """Whether ``venv`` (a ``DummyVecEnv``) has been reset since it was made: SB3 keeps the seeds it was made
    with until the first reset uses them. A never-reset env has no state worth a snapshot; left fresh, its first
    reset draws from its seed, as an uninterrupted run's does."""
    return all(seed is None for seed in getattr(venv, "_seeds", [None]))


def get_env_state(venv: VecEnv) -> list[dict[str, Any]]:
    """Picklable state of each env of a ``DummyVecEnv``."""
    if not isinstance(venv, DummyVecEnv):
        raise TypeError(f"env snapshots need a DummyVecEnv, got {type(venv).__name__}")
    states = []
    for env in venv.envs:
        entry: dict[str, Any] = {"core": _core_state(env.unwrapped), "wrappers": []}
        for w in _chain(env):
            ws: dict[str, Any] = {}
            if isinstance(w, Monitor):
                ws = {k: copy.deepcopy(getattr(w, k)) for k in _MONITOR_FIELDS}
            if hasattr(w, "_elapsed_steps"):
                ws["_elapsed_steps"] = w._elapsed_steps
            if hasattr(w, "get_wrapper_state"):  # ours (sparse_rl.envs.wrappers): noise generator, permutation
                ws["wrapper_state"] = copy.deepcopy(w.get_wrapper_state())
            entry["wrappers"].append(ws)
        states.append(entry)
    return states


def set_env_state(venv: VecEnv, states: list[dict[str, Any]]) -> None:
    """Restore :func:`get_env_state` output into a freshly made env of the same kind (resets it first)."""
    if not isinstance(venv, DummyVecEnv) or len(states) != venv.num_envs:
        raise TypeError("env state does not match this vector env")
    venv.reset()
    for env, entry in zip(venv.envs, states):
        chain = _chain(env)
        if len(chain) != len(entry["wrappers"]):
            raise TypeError("env state was taken from a differently wrapped env")
        for w, ws in zip(chain, entry["wrappers"]):
            for k, v in ws.items():
                if k == "wrapper_state":
                    w.set_wrapper_state(copy.deepcopy(v))
                else:
                    setattr(w, k, copy.deepcopy(v))
        _set_core_state(env.unwrapped, entry["core"])
