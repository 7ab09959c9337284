"""Typed training configuration and YAML presets.

The dataclasses below are the schema; ``configs/<algo>.yml`` holds values. A preset file is keyed by
env id with a ``default`` entry, and has a ``presets`` section whose entries are keyed the same way::

    default: {learning_starts: 10000}          # every env, every preset
    Hopper-v5: {n_timesteps: 1000000}          # one env, every preset
    presets:
      dense: {default: {dense: true}}          # one preset, every env
      rlx2: {HalfCheetah-v5: {actor_sparsity: 0.9}}

Resolution, later wins: dataclass defaults, file ``default``, file env entry, preset ``default``,
preset env entry, command-line flags, ``--set key=value``. Values are plain YAML (numbers, strings,
lists, mappings): nothing is evaluated as Python.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.agents.policies import SparsityConfig
from sparse_rl.agents.replay import DynamicReplayBuffer, NStepSoftReplayBuffer
from sparse_rl.envs.wrappers import NOISE_KINDS
from sparse_rl.export.budget import TARGETS as DEPLOY_TARGETS
from sparse_rl.export.budget import BudgetError, parse_size
from sparse_rl.numerics import NumericsError, check_cpu_kernels
from sparse_rl.topology.methods import LEGACY_OPTIONS, migrate_legacy_options

#: DynamicReplayBuffer options, each from TrainConfig's ``buffer_<name>``
DYNAMIC_BUFFER_KEYS = ("check_interval", "probe_size", "mismatch_threshold", "shrink_fraction", "min_size")


class ConfigError(ValueError):
    """A configuration value or key is not valid; the message says which and what is allowed."""


@dataclass
class TrainConfig(SparsityConfig):
    """Everything a training run needs; one flat namespace so ``--set key=value`` reaches any field.

    The sparse settings (``sparsity``, ``topology``, ``update_interval``, ...) are inherited from
    :class:`~sparse_rl.agents.SparsityConfig`, which validates them.
    """

    # --- run
    n_timesteps: int = 1_000_000
    """total env steps"""
    n_envs: int = 1
    """parallel training envs"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """passed to ``gymnasium.make``"""
    eval_freq: int = 10_000
    """env steps between evaluations (0: none)"""
    eval_episodes: int = 10
    checkpoint_freq: int = 50_000
    """env steps between checkpoints (0: final only)"""
    normalize: bool = False
    """normalise observations and rewards with running statistics (SB3's ``VecNormalize``, rl-zoo3's
    ``normalize: true``); evaluation and export apply the observation statistics"""
    norm_reward: bool = True
    """with ``normalize``: also scale training rewards (by the running std of the return at ``gamma``)"""
    cpu_kernels: str = "native"
    """``native``: MKL's code path for this CPU; ``avx2``: its AVX2 path on every x86-64 CPU, so the run
    repeats bit for bit on any machine with AVX2 (:mod:`sparse_rl.numerics`)"""
    # --- SB3 off-policy hyperparameters
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    learning_starts: int = 10_000
    batch_size: int = 256
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    # --- sparsity: the fields of sparse_rl.agents.SparsityConfig (inherited, validated there)
    dense: bool = False
    """train SB3's dense MlpPolicy instead (the baseline)"""
    weight_decay: float = 0.0
    """Adam weight decay of actor and critic"""
    # --- replay for non-stationary targets (sparse_rl.agents.replay)
    n_steps: int = 1
    """horizon of (soft) n-step TD targets; 1 = ordinary 1-step targets"""
    n_step_delay: int = 0
    """env steps before n-step targets switch on"""
    dynamic_buffer: bool = False
    """shrink the replay capacity when the oldest data is off-policy (RLx2)"""
    buffer_check_interval: int = 10_000
    buffer_probe_size: int = 2048
    buffer_mismatch_threshold: float = 0.2
    buffer_shrink_fraction: float = 0.1
    buffer_min_size: int = 100_000
    # --- goal-conditioned envs (dict observations): hindsight experience replay (SB3's HerReplayBuffer)
    her: bool = False
    """relabel stored transitions with goals reached later (needs a goal-conditioned env: observation,
    achieved_goal and desired_goal)"""
    her_n_sampled_goal: int = 4
    """relabelled transitions per real one"""
    her_goal_selection_strategy: str = "future"
    """``future``, ``final`` or ``episode``"""
    # --- noisy and shifting inputs (sparse_rl.envs.wrappers), for training and evaluation envs alike
    noise_fraction: float = 0.0
    """fraction of the observation's features that are pure noise (appended to the real ones), in [0, 1)"""
    noise_kind: str = "normal"
    """``normal``, ``uniform``, or ``matched`` (each noise feature with a real feature's mean and std)"""
    permute_at: int = 0
    """env step from which the observation's features come permuted (the transfer setting); 0: never"""
    permute_seed: int = 0
    """seed of that permutation (the same one whatever the run's seed)"""
    # --- training to a microcontroller's budget (sparse_rl.export.budget): only the actor ships
    deploy_target: str | None = None
    """``cortex-m4``: size the actor's exported C for that chip (with ``deploy_flash``/``deploy_ram``)"""
    deploy_flash: str | int | None = None
    """flash budget of the actor's C, e.g. ``12K``; the run derives ``actor_sparsity`` from it before training"""
    deploy_ram: str | int | None = None
    """RAM budget, e.g. ``4K``"""
    deploy_quantize: str = "auto"
    """``auto`` (float32, or int8 with a float32 input layer: ``mixed``, whichever allows the denser actor;
    resolved when the run starts), ``none``, ``int8`` or ``mixed``"""


@dataclass
class SACConfig(TrainConfig):
    ent_coef: float | str = "auto"
    """entropy coefficient, or ``auto`` / ``auto_0.1`` to learn it"""


@dataclass
class TD3Config(TrainConfig):
    policy_delay: int = 2
    target_policy_noise: float = 0.2
    target_noise_clip: float = 0.5
    action_noise_std: float = 0.1
    """std of the Gaussian exploration noise, as a fraction of the action range's half-width"""


@dataclass
class DDPGConfig(TrainConfig):
    """DDPG (SB3's: TD3 without target smoothing, one critic update per actor update)."""

    action_noise_std: float = 0.1
    """std of the Gaussian exploration noise, as a fraction of the action range's half-width"""


@dataclass
class TQCConfig(SACConfig):
    """TQC (sb3-contrib): SAC with distributional critics that drop their top quantiles."""

    top_quantiles_to_drop_per_net: int = 2
    n_quantiles: int = 25
    n_critics: int = 2


@dataclass
class CrossQConfig(SACConfig):
    """CrossQ (sb3-contrib): SAC without target networks, batch-renormalised critics."""

    learning_rate: float = 1e-3
    learning_starts: int = 5000
    policy_delay: int = 3


@dataclass
class OnPolicyConfig(TrainConfig):
    """PPO and A2C. The replay keys (``buffer_size``, ``learning_starts``, ``tau``, ``train_freq``,
    ``gradient_steps``, ``n_step_delay``, ``dynamic_buffer``, ``buffer_*``) do not apply."""

    n_steps: int = 2048
    """env steps per env and rollout (SB3's ``n_steps``; off-policy configs use the name for n-step targets)"""
    gae_lambda: float = 0.95
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    activation: str = "tanh"
    """hidden activation of both networks: ``tanh`` (SB3's default) or ``relu``"""
    ortho_init: bool = True
    """SB3's orthogonal initialisation (before the masks are drawn)"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian policy (continuous actions)"""


@dataclass
class PPOConfig(OnPolicyConfig):
    batch_size: int = 64
    n_epochs: int = 10
    clip_range: float = 0.2


@dataclass
class A2CConfig(OnPolicyConfig):
    n_steps: int = 5
    learning_rate: float = 7e-4
    gae_lambda: float = 1.0
    use_rms_prop: bool = True


@dataclass
class DQNConfig(TrainConfig):
    """DQN; on image observations (MinAtar) the Q-network reads them through ``MinAtarCNN``."""

    learning_rate: float = 1e-4
    learning_starts: int = 100
    batch_size: int = 32
    tau: float = 1.0
    train_freq: int = 4
    target_update_interval: int = 10_000
    exploration_fraction: float = 0.1
    exploration_initial_eps: float = 1.0
    exploration_final_eps: float = 0.05


CONFIG_CLASSES: dict[str, type[TrainConfig]] = {
    "sac": SACConfig, "td3": TD3Config, "ddpg": DDPGConfig, "tqc": TQCConfig, "crossq": CrossQConfig,
    "ppo": PPOConfig, "a2c": A2CConfig, "dqn": DQNConfig,
}
#: the algorithms our replay buffers (n-step targets, the dynamic buffer) work with
REPLAY_OPTION_ALGOS = ("sac", "td3")
#: the algorithms with sparse dict-observation policies and hindsight replay in the CLI
HER_ALGOS = ("sac", "td3", "ddpg")
HER_STRATEGIES = ("future", "final", "episode")
#: OnPolicyConfig.activation values, as torch modules in sparse_rl.models
ACTIVATIONS = ("tanh", "relu")
ON_POLICY = ("ppo", "a2c")
SPARSE_KEYS = [f.name for f in fields(SparsityConfig)]


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, arg) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, tp)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config class, once per class: it evaluates every annotation anew on each
    call, which was a third of planning a 90-trial sweep. Read-only to its callers."""
    return typing.get_type_hints(cls)


def check_value(cls: type[TrainConfig], key: str, value: Any) -> Any:
    """Check ``value`` against the type of field ``key``; ints are accepted (and converted) for floats."""
    hints = _field_types(cls)
    if key in LEGACY_OPTIONS and key not in hints:
        raise ConfigError(f"{key} is an option of the method now: --set topology_kwargs.{key}={value!r}")
    if key not in hints:
        close = difflib.get_close_matches(key, list(hints), n=3)
        hint = f"did you mean {', '.join(map(repr, close))}?" if close else "see --list-keys"
        raise ConfigError(f"unknown config key {key!r} for {cls.__name__}; {hint}")
    tp = hints[key]
    if not _type_ok(value, tp):
        raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, expected {_type_name(tp)}")
    if tp is float and isinstance(value, int):
        value = float(value)
    return value


def parse_set(item: str, flag: str = "--set") -> tuple[str, Any]:
    """Parse ``key=value``; the value is a Python literal (``1e-3``, ``[64, 64]``, ``'rigl'``, ``True``), one of
    YAML's ``true``/``false``/``null`` (as the config files spell them), or a bare word."""
    if "=" not in item:
        raise ConfigError(f"{flag} expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    words: dict[str, Any] = {"true": True, "false": False, "null": None}
    if (word := raw.strip()) in words:
        return key.strip(), words[word]
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word such as rigl
    return key.strip(), value


def preset_path(algo: str) -> Path:
    return Path(str(resources.files("sparse_rl.configs").joinpath(f"{algo}.yml")))


def load_presets(algo: str) -> dict[str, Any]:
    """The parsed preset file of ``algo``: a fresh copy on each call, parsed once per version of the file."""
    path = preset_path(algo)
    stat = path.stat()
    return copy.deepcopy(_parse_presets(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=32)
def _parse_presets(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """YAML parsing was the other third of planning a 90-trial sweep (the file was read once per trial)."""
    with open(path) as f:
        return yaml.safe_load(f) or {}


def available_presets(algo: str) -> list[str]:
    return sorted(load_presets(algo).get("presets", {}))


def resolve_config(algo: str, env_id: str, preset: str = "sparse_rl", overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Build the validated config of ``algo`` on ``env_id`` from the presets and ``overrides``."""
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algo {algo!r}; known: {', '.join(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[algo]
    data = load_presets(algo)
    presets = data.get("presets", {})
    if preset not in presets:
        close = difflib.get_close_matches(preset, list(presets), n=3)
        extra = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ConfigError(f"unknown preset {preset!r} for {algo}; {extra}known: {', '.join(sorted(presets))}")
    layers = [data.get("default"), data.get(env_id), presets[preset].get("default"), presets[preset].get(env_id), overrides]
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if "." in key:  # one entry of a mapping field: topology_kwargs.grow_signal=momentum
                field_name, entry = key.split(".", 1)
                hints = _field_types(cls)
                if field_name in hints and typing.get_origin(hints[field_name]) is not dict:
                    raise ConfigError(f"{key}: {field_name} is not a mapping; set it as a whole")
                check_value(cls, field_name, {})  # unknown field: named, with suggestions
                mapping = {**values.get(field_name, getattr(cls(), field_name)), entry: value}
                values[field_name] = check_value(cls, field_name, mapping)
            else:
                values[key] = check_value(cls, key, value)
    config = _build(cls, values)
    if not config.dense and algo not in ("sac", "td3", "ddpg"):
        from sparse_rl.agents.policies import replay_method_problem
        from sparse_rl.models import ALGO_CLASSES

        problem = replay_method_problem(config.topology_config(), ALGO_CLASSES[algo][2])
        if problem:
            raise ConfigError(problem)
    return config


def _build(cls: type[TrainConfig], values: dict[str, Any]) -> TrainConfig:
    try:
        config = cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Range checks, including the sparse settings (through :class:`SparsityConfig`)."""
    for key in ("n_timesteps", "n_envs", "batch_size", "buffer_size", "train_freq", "eval_episodes"):
        if getattr(config, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {getattr(config, key)!r}")
    for key in ("eval_freq", "checkpoint_freq", "learning_starts"):
        if getattr(config, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(config, key)!r}")
    if not config.learning_rate > 0:
        raise ConfigError(f"learning_rate must be positive, got {config.learning_rate!r}")
    if not 0 < config.tau <= 1:
        raise ConfigError(f"tau must be in (0, 1], got {config.tau!r}")
    if not 0 <= config.gamma <= 1:
        raise ConfigError(f"gamma must be in [0, 1], got {config.gamma!r}")
    if config.gradient_steps == 0 or config.gradient_steps < -1:
        raise ConfigError(f"gradient_steps must be positive or -1 (as many as env steps), got {config.gradient_steps!r}")
    if not config.net_arch or any(width <= 0 for width in config.net_arch):
        raise ConfigError(f"net_arch must be a non-empty list of positive widths, got {config.net_arch!r}")
    try:
        check_cpu_kernels(config.cpu_kernels)
    except NumericsError as err:
        raise ConfigError(str(err)) from None
    if config.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay!r}")
    if isinstance(config, SACConfig):
        ent = config.ent_coef
        ok = ent > 0 if isinstance(ent, float) else ent == "auto" or _auto_with_init(ent)
        if not ok:
            raise ConfigError(f"ent_coef must be a positive number, 'auto' or 'auto_<initial value>', got {ent!r}")
    if isinstance(config, (TD3Config, CrossQConfig)) and config.policy_delay < 1:
        raise ConfigError(f"policy_delay must be >= 1, got {config.policy_delay!r}")
    if isinstance(config, DDPGConfig) and config.action_noise_std < 0:
        raise ConfigError(f"action_noise_std must be >= 0, got {config.action_noise_std!r}")
    if isinstance(config, TD3Config):
        for key in ("target_policy_noise", "target_noise_clip", "action_noise_std"):
            if getattr(config, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(config, key)!r}")
    if not 0.0 <= config.noise_fraction < 1.0:
        raise ConfigError(f"noise_fraction must be in [0, 1), got {config.noise_fraction!r}")
    if config.noise_kind not in NOISE_KINDS:
        raise ConfigError(f"noise_kind must be one of {', '.join(NOISE_KINDS)}, got {config.noise_kind!r}")
    if not 0 <= config.permute_at <= config.n_timesteps:
        raise ConfigError(f"permute_at must be in [0, n_timesteps={config.n_timesteps}] (0: never), got {config.permute_at!r}")
    if config.deploy_target is not None and config.deploy_target not in DEPLOY_TARGETS:
        raise ConfigError(f"deploy_target must be one of {', '.join(DEPLOY_TARGETS)}, got {config.deploy_target!r}")
    if config.deploy_target is None and (config.deploy_flash is not None or config.deploy_ram is not None):
        raise ConfigError("deploy_flash and deploy_ram are budgets of a deploy_target (cortex-m4)")
    if config.deploy_target is not None and config.deploy_flash is None and config.deploy_ram is None:
        raise ConfigError("deploy_target needs a budget: deploy_flash (e.g. 12K) and/or deploy_ram (e.g. 4K)")
    if config.deploy_quantize not in ("auto", "none", "int8", "mixed"):
        raise ConfigError(f"deploy_quantize must be one of auto, none, int8, mixed, got {config.deploy_quantize!r}")
    try:
        for key in ("deploy_flash", "deploy_ram"):
            if getattr(config, key) is not None:
                parse_size(getattr(config, key), key)
    except BudgetError as err:
        raise ConfigError(str(err)) from None
    if config.her:
        if not isinstance(config, (SACConfig, TD3Config, DDPGConfig)) or isinstance(config, (TQCConfig, CrossQConfig)):
            raise ConfigError(f"her: hindsight replay works with {', '.join(HER_ALGOS)}, not with "
                              f"{type(config).__name__.removesuffix('Config').lower()}")
        if config.n_steps > 1 or config.dynamic_buffer:
            raise ConfigError("her replaces the replay buffer: it cannot be combined with n_steps > 1 or dynamic_buffer")
        if config.her_goal_selection_strategy not in HER_STRATEGIES:
            raise ConfigError(f"her_goal_selection_strategy must be one of {', '.join(HER_STRATEGIES)}, got "
                              f"{config.her_goal_selection_strategy!r}")
        if config.her_n_sampled_goal < 1:
            raise ConfigError(f"her_n_sampled_goal must be >= 1, got {config.her_n_sampled_goal!r}")
    if isinstance(config, OnPolicyConfig):
        if config.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {config.activation!r}")
        for key in ("n_steps", "gae_lambda", "vf_coef", "max_grad_norm"):
            if not getattr(config, key) > 0 and not (key == "gae_lambda" and getattr(config, key) == 0):
                raise ConfigError(f"{key} must be positive, got {getattr(config, key)!r}")
        given = [k for k in ("dynamic_buffer", "n_step_delay") if getattr(config, k)]
        if given:
            raise ConfigError(f"{', '.join(given)}: replay options do not apply to on-policy PPO/A2C (no replay buffer); "
                              "they work with sac and td3")
        return
    if type(config) not in (SACConfig, TD3Config):  # REPLAY_OPTION_ALGOS' configs
        given = [k for k in ("dynamic_buffer", "n_step_delay") if getattr(config, k)]
        given += ["n_steps"] if config.n_steps > 1 else []
        if given:
            raise ConfigError(f"{', '.join(given)}: n-step targets and the dynamic buffer work with sac and td3, "
                              f"not with {type(config).__name__.removesuffix('Config').lower()}")
    if isinstance(config, DQNConfig):
        for key in ("exploration_fraction", "exploration_initial_eps", "exploration_final_eps"):
            if not 0 <= getattr(config, key) <= 1:
                raise ConfigError(f"{key} must be in [0, 1], got {getattr(config, key)!r}")
    # the replay buffer's options are checked by the buffer classes themselves, here before anything runs
    try:
        NStepSoftReplayBuffer.check_options(n_steps=config.n_steps, n_step_delay=config.n_step_delay)
        kwargs = {key: getattr(config, f"buffer_{key}") for key in DYNAMIC_BUFFER_KEYS}
        DynamicReplayBuffer.check_dynamic_options(**kwargs, prefix="buffer_")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _auto_with_init(value: str) -> bool:
    head, _, init = value.partition("_")
    try:
        return head == "auto" and float(init) > 0
    except ValueError:
        return False


#: TrainConfig fields that wrap the envs (sparse_rl.envs.wrappers)
WRAPPER_KEYS = ("noise_fraction", "noise_kind", "permute_at", "permute_seed")


def wrapper_options(config: TrainConfig) -> dict[str, Any]:
    """The env wrappers ``config`` asks for, as :func:`sparse_rl.envs.make_env` takes them (``{}``: none)."""
    if config.noise_fraction == 0 and config.permute_at == 0:
        return {}
    return {key: getattr(config, key) for key in WRAPPER_KEYS}


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(algo: str, data: dict[str, Any]) -> TrainConfig:
    cls = CONFIG_CLASSES[algo]
    data = migrate_legacy_options(data)  # run directories written before methods were objects
    return _build(cls, {k: check_value(cls, k, v) for k, v in data.items()})
