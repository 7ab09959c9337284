"""Run directories: building models from configs, atomic checkpoints, resume."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import stable_baselines3
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecEnv

import sparse_rl
from sparse_rl.agents import SparsePolicyMixin, SparseSACPolicy, SparseTD3Policy, sparsity_report
from sparse_rl.agents.replay import DynamicReplayBuffer, NStepSoftReplayBuffer
from sparse_rl.checkpoint import (
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    current_umask,
    latest_checkpoint,
    save_checkpoint,
)
from sparse_rl.config import DYNAMIC_BUFFER_KEYS, SPARSE_KEYS, TrainConfig, config_from_dict
from sparse_rl.envs import EnvError, probe_env
from sparse_rl.numerics import code_version, machine_numerics

ALGOS: dict[str, tuple[type[BaseAlgorithm], type]] = {"sac": (SAC, SparseSACPolicy), "td3": (TD3, SparseTD3Policy)}
#: TrainConfig fields passed unchanged to SAC/TD3
SB3_KEYS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq", "gradient_steps")
EVALUATIONS_FILE = "evaluations.csv"
SUMMARY_FILE = "summary.json"  # written when a run finishes


class RunError(ValueError):
    """A run directory is missing, unusable or corrupt."""



def read_evaluations(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's evaluations CSV, in order (``[]`` when it has none yet)."""
    import csv

    path = Path(run_dir) / EVALUATIONS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


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


def check_env_for(algo: str, env_id: str, env_kwargs: dict[str, Any] | None = None) -> None:
    """Make the env once and check its spaces against ``algo``: SAC/TD3 need a ``Box`` action space.

    :raises EnvError: naming the env, its spaces and what the algorithm needs.
    """
    obs_space, action_space = probe_env(env_id, env_kwargs)
    if not isinstance(action_space, spaces.Box):
        raise EnvError(
            f"{env_id!r} has a {action_space} action space; {algo.upper()} needs a continuous (Box) action space "
            "(e.g. Pendulum, HalfCheetah, Hopper)"
        )
    if isinstance(obs_space, (spaces.Dict, spaces.Tuple)):
        kind = type(obs_space).__name__
        raise EnvError(f"{env_id!r} has a {kind} observation space; sparse_rl's policies take flat (Box) observations")


def run_label(algo: str, config: TrainConfig) -> str:
    """Group label for plots, e.g. ``sac-rigl-0.9`` or ``sac-dense``."""
    if config.dense:
        return f"{algo}-dense"
    actor, critic = config.network_sparsity("actor"), config.network_sparsity("critic")
    return f"{algo}-{config.topology}-{actor:g}" + ("" if actor == critic else f"-{critic:g}")


def build_model(
    algo: str, config: TrainConfig, env: VecEnv, seed: int, device: str = "cpu", tensorboard_log: str | None = None
) -> BaseAlgorithm:
    """An SB3 SAC/TD3 model with the sparse policy (or SB3's dense ``MlpPolicy`` when ``config.dense``)."""
    algo_cls, sparse_policy = ALGOS[algo]
    policy_kwargs: dict[str, Any] = {"net_arch": list(config.net_arch)}
    if config.weight_decay:
        policy_kwargs["optimizer_kwargs"] = {"weight_decay": config.weight_decay}
    if config.dense:
        policy: Any = "MlpPolicy"
    else:
        policy = sparse_policy
        policy_kwargs.update({k: getattr(config, k) for k in SPARSE_KEYS})
    kwargs: dict[str, Any] = {key: getattr(config, key) for key in SB3_KEYS}
    if config.dynamic_buffer or config.n_steps > 1:
        kwargs["replay_buffer_class"] = DynamicReplayBuffer if config.dynamic_buffer else NStepSoftReplayBuffer
        kwargs["replay_buffer_kwargs"] = dict(n_steps=config.n_steps, n_step_delay=config.n_step_delay, gamma=config.gamma)
        if config.dynamic_buffer:
            kwargs["replay_buffer_kwargs"].update({key: getattr(config, f"buffer_{key}") for key in DYNAMIC_BUFFER_KEYS})
    if algo == "sac":
        kwargs["ent_coef"] = config.ent_coef  # type: ignore[attr-defined]
    else:
        kwargs["policy_delay"] = config.policy_delay  # type: ignore[attr-defined]
        kwargs["target_policy_noise"] = config.target_policy_noise  # type: ignore[attr-defined]
        kwargs["target_noise_clip"] = config.target_noise_clip  # type: ignore[attr-defined]
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


def default_file_mode() -> int:
    """Permissions of a new regular file under the current umask (``mkstemp`` makes them private)."""
    return 0o666 & ~current_umask()


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, default_file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(yaml.safe_dump(data, sort_keys=False).encode()))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2).encode()))


def _parse_cell(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text or None


def rewind_evaluations(path: Path, timesteps: int) -> tuple[float, dict[str, Any] | None]:
    """Drop the rows of an ``evaluations.csv`` made after ``timesteps``, the step a resumed run restarts from.

    Without this, a run resumed from a checkpoint older than its last evaluation would list those
    evaluations twice. Returns the ``wall_clock_s`` of the last row kept (0.0 if none), so that the resumed
    run's clock continues from it, and that row (numbers parsed; ``None`` if none).
    """
    if not path.is_file():
        return 0.0, None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    if "timesteps" not in fields or "wall_clock_s" not in fields:
        raise RunError(f"{str(path)!r} is not an evaluations file: its header {fields} lacks timesteps or wall_clock_s")
    try:
        kept = [row for row in rows if int(row["timesteps"]) <= timesteps]
        last_clock = float(kept[-1]["wall_clock_s"]) if kept else 0.0
    except (TypeError, ValueError) as err:
        raise RunError(f"corrupt evaluations file {str(path)!r}: {err}") from None
    if len(kept) < len(rows):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    last = {k: _parse_cell(v) for k, v in kept[-1].items()} if kept else None
    return last_clock, last


class CheckpointCallback(BaseCallback):
    """Every ``freq`` env steps, an atomic checkpoint in the run directory.

    It is written at the start of a rollout, i.e. after the gradient steps that follow the previous
    rollout, so resuming from it replays exactly what an uninterrupted run does next.
    """

    def __init__(self, run_dir: Path, freq: int, save_replay_buffer: bool):
        super().__init__()
        self.run_dir, self.freq, self.save_replay_buffer = run_dir, freq, save_replay_buffer
        self._next = 0
        self._stop_asked: int | None = None
        #: ``(signal number, checkpoint)`` once training stopped on :meth:`stop_at_next_checkpoint`
        self.stopped: tuple[int, Checkpoint] | None = None

    def stop_at_next_checkpoint(self, signum: int) -> None:
        """Write a checkpoint at the next rollout start and stop training there (safe in a signal handler:
        it only sets a flag)."""
        self._stop_asked = signum

    @property
    def stop_asked(self) -> bool:
        return self._stop_asked is not None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_rollout_start(self) -> None:
        if self.stopped is None and self._stop_asked is not None:
            self.stopped = (self._stop_asked, save_checkpoint(self.model, self.run_dir, self.save_replay_buffer))
        elif self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq
            save_checkpoint(self.model, self.run_dir, self.save_replay_buffer)

    def _on_step(self) -> bool:
        return self.stopped is None  # False: SB3 ends learn() after this env step, which nothing records


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step, the network and the last good checkpoint."""


#: SB3's logged losses and the network each one trains
_LOSSES = {"train/critic_loss": "critic", "train/actor_loss": "actor", "train/ent_coef_loss": "entropy coefficient"}


class DivergenceGuard(BaseCallback):
    """Stops training with :class:`TrainingDiverged` when a loss SB3 just logged is not finite.

    It checks at the start of each rollout, i.e. right after the gradient steps and *before* a checkpoint
    could be written (place it first in the callback list), and at the end of training, so a diverged
    model is never checkpointed over the last good one.
    """

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def _check(self) -> None:
        values = self.model.logger.name_to_value
        for key, net in _LOSSES.items():
            value = values.get(key)
            if value is None or math.isfinite(value):
                continue
            bad = [
                name
                for name, p in self.model.policy.named_parameters()
                if not bool(torch.isfinite(p.detach()).all())
            ]
            listed = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
            where = f"non-finite parameters: {listed}" if bad else "parameters still finite"
            try:
                last = latest_checkpoint(self.run_dir)
            except CheckpointError:
                last = None
            kept = f"the last good checkpoint, {last.describe()}, is kept" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"the {net} loss ({key}) is {value} at step {self.num_timesteps} ({where}); {kept}")

    def _on_rollout_start(self) -> None:
        self._check()

    def _on_training_end(self) -> None:
        self._check()

    def _on_step(self) -> bool:
        return True


LOCK_FILE = ".lock"


def lock_run(run_dir: Path) -> int:
    """Take the run directory's lock for this process (released when the process ends, even by SIGKILL);
    returns the lock's file descriptor. :raises RunError: when another process holds it."""
    import fcntl

    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"run {str(run_dir)!r} is being trained by another process right now") from None
    return fd


def read_run(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a run: ``{algo, env, seed, preset, label, config: TrainConfig, ...}``."""
    path = run_dir / "config.yaml"
    if run_dir.is_file():
        raise RunError(f"{str(run_dir)!r} is a file; a run directory (the one holding config.yaml) is expected")
    if not run_dir.is_dir():
        raise RunError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise RunError(f"{str(run_dir)!r} is not a run directory: it has no config.yaml")
    try:
        data = yaml.safe_load(path.read_text())
        data["config"] = config_from_dict(data["algo"], data["config"])
    except Exception as err:
        raise RunError(f"corrupt run config {str(path)!r}: {err}") from None
    return data


def load_model_file(path: Path, env: VecEnv | None = None, device: str = "cpu") -> BaseAlgorithm:
    """A SAC/TD3 model from an SB3 ``.zip`` (the algorithm read from the policy class it holds)."""
    from stable_baselines3.common.save_util import load_from_zip_file
    from stable_baselines3.sac.policies import SACPolicy
    from stable_baselines3.td3.policies import TD3Policy

    try:
        data, _, _ = load_from_zip_file(path, load_data=True, device=device)
    except Exception as err:
        raise RunError(f"{str(path)!r} is not a readable SB3 model zip: {type(err).__name__}: {err}") from None
    policy_class = (data or {}).get("policy_class")
    algo_cls: type[BaseAlgorithm] | None = None
    if isinstance(policy_class, type) and issubclass(policy_class, SACPolicy):
        algo_cls = SAC
    elif isinstance(policy_class, type) and issubclass(policy_class, TD3Policy):
        algo_cls = TD3
    if algo_cls is None:
        kind = getattr(policy_class, "__name__", policy_class)
        raise RunError(f"{str(path)!r} holds a {kind} model; only SAC/TD3 are supported")
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
    algo_cls = ALGOS[info["algo"]][0]
    try:
        return bind(algo_cls.load(path, env=env, device=device, force_reset=False))
    except Exception as err:
        raise RunError(f"corrupt model file {str(path)!r}: {type(err).__name__}: {err}") from None


def run_dir_of(path: Path) -> Path | None:
    """The run directory holding ``path`` (a model zip inside a run or one of its checkpoints), if any."""
    for parent in list(path.resolve().parents)[:3]:
        if (parent / "config.yaml").is_file():
            return parent
    return None


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
