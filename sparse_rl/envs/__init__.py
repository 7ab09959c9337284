"""Environment names: short names for Gymnasium's MuJoCo and classic-control tasks."""

from __future__ import annotations

import difflib
import inspect
import sys
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


class EnvError(ValueError):
    """An environment cannot be made as asked (unknown id, missing dependency, bad kwargs, wrong spaces)."""


def register_optional_envs(name: str) -> None:
    """Register the Gymnasium envs of optional packages that ``name`` belongs to: MinAtar (``MinAtar/...``,
    the ``[minatar]`` extra) and gymnasium-robotics (``PointMaze_UMaze-v3``, ... the ``[robotics]`` extra)."""
    if name.startswith("MinAtar/"):
        try:
            import minatar.gym
        except ImportError:
            raise EnvError(f"{name!r} needs MinAtar: pip install 'sparse_rl[minatar]'") from None
        minatar.gym.register_envs()
        return
    if any(part in name for part in ("Maze", "Fetch", "Hand", "Adroit", "Franka")):
        try:
            import gymnasium_robotics
        except ImportError:
            return  # an unknown id after all: named with close matches below
        gym.register_envs(gymnasium_robotics)


def resolve_env_id(name: str) -> str:
    """Map a short name (``HalfCheetah``) to its Gymnasium id; registered ids pass through.

    :raises EnvError: for an unknown name, with close matches among short names and registered ids.
    """
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name not in gym.registry:
        register_optional_envs(name)
    if name in gym.registry:
        return name
    candidates = list(SHORT_NAMES) + list(gym.registry)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(map(repr, close))}?" if close else f"short names: {', '.join(SHORT_NAMES)}"
    raise EnvError(f"unknown environment {name!r}; {hint}")


#: MuJoCo warnings about Gymnasium's own model files, not the user's to act on
_HARMLESS_MUJOCO_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)
_warning_filter_installed = False


def _mujoco_warning(message: str) -> None:
    if not message.startswith(_HARMLESS_MUJOCO_WARNINGS):
        sys.stderr.write(f"WARNING: {message}\n")


def _quiet_harmless_mujoco_warnings() -> None:
    """MuJoCo 3.5+ prints a deprecation warning for ``settotalmass`` each time Gymnasium's HalfCheetah
    (and other) model files are compiled; drop that one and print every other warning as MuJoCo does."""
    global _warning_filter_installed
    if _warning_filter_installed:
        return
    _warning_filter_installed = True
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_mujoco_warning)


def _accepted_kwargs(env_id: str) -> list[str]:
    try:
        creator = gym.envs.registration.load_env_creator(gym.spec(env_id).entry_point)
        names = [n for n, p in inspect.signature(creator).parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    except Exception:
        return []
    return [n for n in names if n not in ("self", "render_mode")]


def probe_env(env_id: str, env_kwargs: dict[str, Any] | None = None, wrappers: dict[str, Any] | None = None
              ) -> tuple[gym.Space, gym.Space]:
    """Make ``env_id`` once with ``env_kwargs`` (and ``wrappers``, :func:`~sparse_rl.envs.wrappers.wrap_env`),
    reset it and take one random step; return its observation and action spaces.

    :raises EnvError: when the env needs an optional dependency that is missing, when ``env_kwargs``
        are not accepted (the message lists the keyword arguments the env takes), or name a file that
        cannot be read, or when a wrapper does not fit the env (a non-flat observation).
    """
    env_id = resolve_env_id(env_id)
    kwargs = dict(env_kwargs or {})
    _quiet_harmless_mujoco_warnings()
    env = None
    try:
        env = gym.make(env_id, **kwargs)
        if wrappers:
            from sparse_rl.envs.wrappers import WrapperError, wrap_env

            try:
                env = wrap_env(env, env_id, wrappers, kwargs)
            except WrapperError as err:
                raise EnvError(f"{env_id!r}: {err}") from None
        env.reset(seed=0)
        env.step(env.action_space.sample())
        return env.observation_space, env.action_space
    except gym.error.DependencyNotInstalled as err:
        raise EnvError(f"environment {env_id!r} needs an optional dependency that is not installed: {err}") from None
    except OSError as err:  # a file the kwargs name (xml_file=...) is missing or unreadable
        if not kwargs:
            raise
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise EnvError(f"--env-kwargs {given}: {env_id!r} cannot read what they name ({err})") from None
    except (TypeError, ValueError) as err:
        if not kwargs:
            raise
        accepted = _accepted_kwargs(env_id)
        allowed = f"; it accepts: {', '.join(accepted)}" if accepted else ""
        given = " ".join(f"{k}={v!r}" for k, v in kwargs.items())
        reason = str(err).split(" was raised from the environment creator")[0]
        raise EnvError(f"--env-kwargs {given} not accepted by {env_id!r} ({reason}){allowed}") from None
    finally:
        if env is not None:
            env.close()


def make_env(env_id: str, n_envs: int = 1, seed: int | None = None, env_kwargs: dict[str, Any] | None = None,
             wrappers: dict[str, Any] | None = None) -> VecEnv:
    """A monitored SB3 vector env of ``n_envs`` copies of ``env_id`` (short names accepted), each wrapped as
    ``wrappers`` asks (:func:`~sparse_rl.envs.wrappers.wrap_env`: noise features, a feature permutation)."""
    _quiet_harmless_mujoco_warnings()
    env_id = resolve_env_id(env_id)
    if not wrappers:
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or {})
    from sparse_rl.envs.wrappers import wrap_env

    def wrapper(env: gym.Env) -> gym.Env:
        return wrap_env(env, env_id, wrappers, env_kwargs, n_envs)

    return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs or {}, wrapper_class=wrapper)


__all__ = ["SHORT_NAMES", "EnvError", "make_env", "probe_env", "resolve_env_id"]
