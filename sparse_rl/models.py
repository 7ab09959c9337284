"""SB3 models from a run's config, and back from its files: build, bind, load, check, summarise.

:func:`build_model` turns a :class:`~sparse_rl.config.TrainConfig` into an SB3 model (SAC, TD3, DDPG,
TQC, CrossQ, PPO, A2C, DQN) with the sparse policy (or SB3's dense one) and our replay buffers;
:func:`load_run_model` and :func:`load_model_file` read them back; :func:`summary` is what ``summary.json``
says of a finished one.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecEnv

import sparse_rl
from sparse_rl.agents import SparsePolicyMixin, sparsity_report
from sparse_rl.agents.replay import DynamicReplayBuffer, NStepSoftReplayBuffer
from sparse_rl.checkpoint import MODEL_FILE, CheckpointError, latest_checkpoint
from sparse_rl.config import DYNAMIC_BUFFER_KEYS, REPLAY_OPTION_ALGOS, SPARSE_KEYS, OnPolicyConfig, TrainConfig
from sparse_rl.envs import EnvError, probe_env
from sparse_rl.numerics import code_version, machine_numerics
from sparse_rl.run_directory import RunError, read_run

#: per algorithm: (module, SB3 class, sparse policy class in sparse_rl.agents)
ALGO_CLASSES: dict[str, tuple[str, str, str]] = {
    "sac": ("stable_baselines3", "SAC", "SparseSACPolicy"),
    "td3": ("stable_baselines3", "TD3", "SparseTD3Policy"),
    "ddpg": ("stable_baselines3", "DDPG", "SparseTD3Policy"),
    "tqc": ("sb3_contrib", "TQC", "SparseTQCPolicy"),
    "crossq": ("sb3_contrib", "CrossQ", "SparseCrossQPolicy"),
    "ppo": ("stable_baselines3", "PPO", "SparseActorCriticPolicy"),
    "a2c": ("stable_baselines3", "A2C", "SparseActorCriticPolicy"),
    "dqn": ("stable_baselines3", "DQN", "SparseDQNPolicy"),
}
#: TrainConfig fields passed unchanged to the off-policy algorithms
SB3_KEYS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq", "gradient_steps")
#: per algorithm, the config fields passed to its constructor
ALGO_KEYS: dict[str, tuple[str, ...]] = {
    "sac": (*SB3_KEYS, "ent_coef"),
    "td3": (*SB3_KEYS, "policy_delay", "target_policy_noise", "target_noise_clip"),
    "ddpg": SB3_KEYS,
    "tqc": (*SB3_KEYS, "ent_coef", "top_quantiles_to_drop_per_net"),
    "crossq": tuple(k for k in (*SB3_KEYS, "ent_coef", "policy_delay") if k != "tau"),
    "ppo": ("learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "ent_coef",
            "vf_coef", "max_grad_norm"),
    "a2c": ("learning_rate", "n_steps", "gamma", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm", "use_rms_prop"),
    "dqn": (*SB3_KEYS, "target_update_interval", "exploration_fraction", "exploration_initial_eps",
            "exploration_final_eps"),
}
#: the algorithms that act in a continuous (Box) action space only, and those that need a discrete one
CONTINUOUS_ONLY = ("sac", "td3", "ddpg", "tqc", "crossq")
#: the algorithms whose dict-observation (multi-input) policies the CLI builds
DICT_ALGOS = ("sac", "td3", "ddpg", "ppo", "a2c")
DISCRETE_ONLY = ("dqn",)


def algo_classes(algo: str) -> tuple[type[BaseAlgorithm], type]:
    """``(SB3 algorithm class, sparse policy class)`` of ``algo`` (sb3-contrib's on first use)."""
    import importlib

    module, name, policy = ALGO_CLASSES[algo]
    try:
        algo_cls = getattr(importlib.import_module(module), name)
    except ImportError:
        raise RunError(f"--algo {algo} needs sb3-contrib: pip install 'sparse_rl[contrib]'") from None
    import sparse_rl.agents

    return algo_cls, getattr(sparse_rl.agents, policy)


def check_device(device: str) -> str:
    """``device`` if torch can train on it here (``cpu``, ``cuda``, ``cuda:<i>``, ``mps`` or SB3's ``auto``)."""
    allowed = "allowed: cpu, cuda, cuda:<index>, mps, auto"
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RunError(f"unknown device {device!r}; {allowed}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RunError(f"device {device!r} is not available: this torch sees no CUDA device; use cpu")
        if dev.index is not None and dev.index >= count:
            raise RunError(f"device {device!r} is not available: this machine has {count} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise RunError(f"device {device!r} is not available on this machine; use cpu")
    elif dev.type != "cpu":
        raise RunError(f"device {device!r} is not supported; {allowed}")
    return device


def check_env_for(algo: str, env_id: str, env_kwargs: dict[str, Any] | None = None,
                  wrappers: dict[str, Any] | None = None) -> tuple[spaces.Space, spaces.Space]:
    """Make the env once (with its ``wrappers``) and check its spaces against ``algo``: SAC, TD3, DDPG, TQC
    and CrossQ need a ``Box`` action space, DQN a ``Discrete`` one. Returns its observation and action spaces.

    :raises EnvError: naming the env, its spaces and what the algorithm needs.
    """
    obs_space, action_space = probe_env(env_id, env_kwargs, wrappers)
    if algo in CONTINUOUS_ONLY and not isinstance(action_space, spaces.Box):
        raise EnvError(
            f"{env_id!r} has a {action_space} action space; {algo.upper()} needs a continuous (Box) action space "
            "(e.g. Pendulum, HalfCheetah, Hopper); for discrete actions use --algo dqn, ppo or a2c"
        )
    if algo in DISCRETE_ONLY and not isinstance(action_space, spaces.Discrete):
        raise EnvError(f"{env_id!r} has a {action_space} action space; DQN needs a Discrete one (e.g. CartPole, "
                       "MinAtar/Breakout-v1); for continuous actions use --algo sac, td3, ddpg, tqc, crossq, ppo or a2c")
    if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
        raise EnvError(f"{env_id!r} has a {action_space} action space; sparse_rl's CLI takes Box or Discrete ones")
    if isinstance(obs_space, spaces.Dict):
        if algo not in DICT_ALGOS:
            raise EnvError(f"{env_id!r} has dict observations; the CLI trains them with --algo "
                           f"{', '.join(DICT_ALGOS)} (multi-input policies)")
        flat = all(isinstance(s, spaces.Box) and len(s.shape) == 1 for s in obs_space.spaces.values())
        if not flat:
            raise EnvError(f"{env_id!r} has dict observations of other than vectors ({obs_space}); the CLI takes dicts "
                           "of vectors")
        return obs_space, action_space
    if isinstance(obs_space, spaces.Tuple):
        raise EnvError(f"{env_id!r} has a Tuple observation space; the CLI takes vectors, dicts of vectors and images")
    if len(obs_space.shape or ()) not in (1, 3) or (len(obs_space.shape) == 3 and algo != "dqn"):
        raise EnvError(f"{env_id!r} has observations of shape {obs_space.shape}; the CLI takes vectors, and images "
                       "(MinAtar's 10x10xC) with --algo dqn")
    return obs_space, action_space


def run_label(algo: str, config: TrainConfig) -> str:
    """Group label for plots, e.g. ``sac-rigl-0.9`` or ``sac-dense``."""
    if config.dense:
        return f"{algo}-dense"
    if config.input_layer_sparsity is not None:
        return f"{algo}-{config.topology}-input{config.input_layer_sparsity:g}"
    actor, critic = config.network_sparsity("actor"), config.network_sparsity("critic")
    return f"{algo}-{config.topology}-{actor:g}" + ("" if actor == critic else f"-{critic:g}")


def build_model(
    algo: str, config: TrainConfig, env: VecEnv, seed: int, device: str = "cpu", tensorboard_log: str | None = None
) -> BaseAlgorithm:
    """An SB3 model of ``algo`` with the sparse policy (or SB3's dense one when ``config.dense``)."""
    algo_cls, sparse_policy = algo_classes(algo)
    policy_kwargs: dict[str, Any] = {"net_arch": list(config.net_arch)}
    if config.weight_decay:
        policy_kwargs["optimizer_kwargs"] = {"weight_decay": config.weight_decay}
    image = len(env.observation_space.shape or ()) == 3
    multi = isinstance(env.observation_space, spaces.Dict)
    if config.dense:
        policy: Any = "CnnPolicy" if image else "MultiInputPolicy" if multi else "MlpPolicy"
    else:
        policy = sparse_policy
        if image:
            from sparse_rl.agents import SparseCnnDQNPolicy

            policy = SparseCnnDQNPolicy
        if multi:
            import sparse_rl.agents

            policy = getattr(sparse_rl.agents, {"SparseSACPolicy": "SparseMultiInputSACPolicy",
                                                "SparseTD3Policy": "SparseMultiInputTD3Policy",
                                                "SparseActorCriticPolicy": "SparseMultiInputActorCriticPolicy"
                                                }[sparse_policy.__name__])
        policy_kwargs.update({k: getattr(config, k) for k in SPARSE_KEYS})
    if image:  # MinAtar's 10x10 frames: its own small convolution, not NatureCNN's
        from sparse_rl.agents.extractors import MinAtarCNN

        policy_kwargs["features_extractor_class"] = MinAtarCNN
    if algo == "tqc":
        policy_kwargs.update(n_quantiles=config.n_quantiles, n_critics=config.n_critics)  # type: ignore[attr-defined]
    if isinstance(config, OnPolicyConfig):  # SB3's defaults are left out of the kwargs (a model saved as before)
        if config.activation != "tanh":
            policy_kwargs["activation_fn"] = {"relu": torch.nn.ReLU}[config.activation]
        if not config.ortho_init:
            policy_kwargs["ortho_init"] = False
        if config.log_std_init != 0.0 and isinstance(env.action_space, spaces.Box):
            policy_kwargs["log_std_init"] = config.log_std_init
    kwargs: dict[str, Any] = {key: getattr(config, key) for key in ALGO_KEYS[algo]}
    if algo in REPLAY_OPTION_ALGOS and (config.dynamic_buffer or config.n_steps > 1):
        kwargs["replay_buffer_class"] = DynamicReplayBuffer if config.dynamic_buffer else NStepSoftReplayBuffer
        kwargs["replay_buffer_kwargs"] = dict(n_steps=config.n_steps, n_step_delay=config.n_step_delay, gamma=config.gamma)
        if config.dynamic_buffer:
            kwargs["replay_buffer_kwargs"].update({key: getattr(config, f"buffer_{key}") for key in DYNAMIC_BUFFER_KEYS})
    if config.her:
        from stable_baselines3 import HerReplayBuffer

        kwargs["replay_buffer_class"] = HerReplayBuffer
        kwargs["replay_buffer_kwargs"] = dict(n_sampled_goal=config.her_n_sampled_goal,
                                              goal_selection_strategy=config.her_goal_selection_strategy)
    if algo in ("td3", "ddpg"):
        space = env.action_space
        half_range = (space.high - space.low) / 2  # type: ignore[attr-defined]
        kwargs["action_noise"] = NormalActionNoise(np.zeros_like(half_range), config.action_noise_std * half_range)  # type: ignore[attr-defined]
    model = algo_cls(
        policy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=0,
        **kwargs,
    )
    return bind(model)


def bind(model: BaseAlgorithm) -> BaseAlgorithm:
    """Link the sparse policy and our replay buffers to ``model`` explicitly (training progress, logger,
    SAC's entropy coefficient), instead of their call-stack lookup, which is kept for bare
    ``SAC(SparseSACPolicy, env)`` use. Returns ``model``."""
    if isinstance(model.policy, SparsePolicyMixin):
        model.policy.bind(model)
    buffer = getattr(model, "replay_buffer", None)
    if isinstance(buffer, NStepSoftReplayBuffer):
        buffer.bind(model)
    return model


def _algo_of_policy(policy_class: Any, data: dict[str, Any]) -> str | None:
    """Which of our algorithms saved a model whose policy class is ``policy_class``."""
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    if not isinstance(policy_class, type):
        return None
    bases = {c.__module__.split(".")[0] + ":" + c.__name__ for c in policy_class.__mro__}
    for name, algo in (("sb3_contrib:TQCPolicy", "tqc"), ("sb3_contrib:CrossQPolicy", "crossq")):
        if name in bases:
            return algo
    if issubclass(policy_class, SACPolicy):
        return "sac"
    if issubclass(policy_class, TD3Policy):
        return "td3"  # DDPG is TD3 with other settings: TD3.load reads either
    if issubclass(policy_class, ActorCriticPolicy):
        return "ppo" if "clip_range" in data else "a2c"
    if issubclass(policy_class, DQNPolicy):
        return "dqn"
    return None


def load_model_file(path: Path, env: VecEnv | None = None, device: str = "cpu") -> BaseAlgorithm:
    """A model from an SB3 ``.zip`` (the algorithm read from the policy class it holds)."""
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(path, load_data=True, device=device)
    except Exception as err:
        raise RunError(f"{str(path)!r} is not a readable SB3 model zip: {type(err).__name__}: {err}") from None
    policy_class = (data or {}).get("policy_class")
    algo = _algo_of_policy(policy_class, data or {})
    if algo is None:
        kind = getattr(policy_class, "__name__", policy_class)
        raise RunError(f"{str(path)!r} holds a {kind} model; supported: {', '.join(ALGO_CLASSES)}")
    algo_cls = algo_classes(algo)[0]
    try:
        return bind(algo_cls.load(path, env=env, device=device, force_reset=False))
    except Exception as err:
        raise RunError(f"corrupt model file {str(path)!r}: {type(err).__name__}: {err}") from None


def load_run_model(run_dir: Path, env: VecEnv | None = None, device: str = "cpu") -> BaseAlgorithm:
    """The final model of a run, else the model of its latest checkpoint."""
    info = read_run(run_dir)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        try:
            checkpoint = latest_checkpoint(run_dir)
        except CheckpointError as err:
            raise RunError(str(err)) from None
        if checkpoint is None:
            raise RunError(f"run {str(run_dir)!r} has no model yet (no {MODEL_FILE} nor checkpoint)")
        path = checkpoint.model_path
    algo_cls = algo_classes(info["algo"])[0]
    if env is None and getattr(info["config"], "her", False):  # SB3 loads a HerReplayBuffer model with its env only
        from sparse_rl.envs import make_env

        env = make_env(info["env"], n_envs=1, seed=int(info["seed"]), env_kwargs=info["config"].env_kwargs)
    try:
        return bind(algo_cls.load(path, env=env, device=device, force_reset=False))
    except Exception as err:
        raise RunError(f"corrupt model file {str(path)!r}: {type(err).__name__}: {err}") from None


def run_normalization(run_dir: Path) -> dict[str, Any] | None:
    """The observation/reward statistics of a run trained with ``normalize`` (from its latest checkpoint, which
    a finished run writes with its final model), or ``None`` for a run that does not normalise."""
    from sparse_rl.checkpoint import read_checkpoint_state

    info = read_run(run_dir)
    if not getattr(info["config"], "normalize", False):
        return None
    try:
        checkpoint = latest_checkpoint(run_dir)
        state = read_checkpoint_state(checkpoint) if checkpoint is not None else {}
    except CheckpointError as err:
        raise RunError(str(err)) from None
    if "normalize" not in state:
        raise RunError(f"run {str(run_dir)!r} normalises observations, but has no checkpoint holding their statistics")
    return state["normalize"]


def model_normalization(path: Path) -> dict[str, Any] | None:
    """The normalisation statistics that go with the model at ``path``: a run directory's (its final model's), a
    checkpoint's own for a model inside a checkpoint, the run's for its final ``model.zip``; ``None`` for a run
    that does not normalise or a ``.zip`` outside any run."""
    from sparse_rl.checkpoint import STATE_JSON, read_checkpoint_state, verify_checkpoint
    from sparse_rl.run_directory import run_dir_of

    if path.is_dir():
        return run_normalization(path)
    run = run_dir_of(path)
    if run is None or not getattr(read_run(run)["config"], "normalize", False):
        return None
    if (path.parent / STATE_JSON).is_file():  # a checkpoint's model: that checkpoint's statistics
        try:
            return read_checkpoint_state(verify_checkpoint(path.parent)).get("normalize")
        except CheckpointError as err:
            raise RunError(str(err)) from None
    return run_normalization(run)


def normalized_for_run(venv: VecEnv, path: Path) -> VecEnv:
    """``venv`` as the policy at ``path`` (a run directory, or a model zip in one) sees it: under
    ``VecNormalize`` with the matching observation statistics (:func:`model_normalization`; frozen, raw
    rewards) when its run normalises, else unchanged."""
    state = model_normalization(path)
    if state is None:
        return venv
    from sparse_rl.envs.normalize import normalize_env, set_normalization_state

    normalized = normalize_env(venv, gamma=0.99, training=False)  # gamma only scales rewards, off here
    set_normalization_state(normalized, state)
    return normalized


def summary(model: BaseAlgorithm, eval_row: dict[str, Any] | None, wall_clock: float, steps: int) -> dict[str, Any]:
    # per layer: its storage too, which decides (with the machine below) the order of floating-point sums
    report = sparsity_report(model, per_layer=True)
    return {
        "timesteps": int(model.num_timesteps),
        "final_eval": eval_row,
        "sparsity": report,
        "wall_clock_s": wall_clock,
        "steps_per_s": steps / wall_clock if wall_clock > 0 else None,
        "versions": {
            "sparse_rl": sparse_rl.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        # runs of one seed agree bit for bit only where these and every layer's storage agree: the CPU's
        # instruction set, MKL's code path and the thread count select the kernels, hence the order of sums
        "machine": machine_numerics(),
        "code": code_version(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
