"""Run directories: building models from configs, atomic checkpoints, resume."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import platform
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import stable_baselines3
import torch
import yaml
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import VecEnv

import sparse_rl
from sparse_rl.agents import SparseSACPolicy, SparseTD3Policy, sparsity_report
from sparse_rl.agents.replay import DynamicReplayBuffer, NStepSoftReplayBuffer
from sparse_rl.config import SPARSE_KEYS, TrainConfig, config_from_dict
from sparse_rl.envs.state import get_env_state, set_env_state

ALGOS: dict[str, tuple[type[BaseAlgorithm], type]] = {"sac": (SAC, SparseSACPolicy), "td3": (TD3, SparseTD3Policy)}
MODEL_FILE = "model.zip"
#: TrainConfig fields passed unchanged to SAC/TD3
SB3_KEYS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq", "gradient_steps")
#: DynamicReplayBuffer kwargs, each from TrainConfig's ``buffer_<name>``
DYNAMIC_BUFFER_KEYS = ("check_interval", "probe_size", "mismatch_threshold", "shrink_fraction", "min_size")
CHECKPOINT_DIR = "checkpoints"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"  # inside CHECKPOINT_DIR, only with --save-replay-buffer
EVALUATIONS_FILE = "evaluations.csv"
SUMMARY_FILE = "summary.json"  # written when a run finishes


class RunError(ValueError):
    """A run directory is missing, unusable or corrupt."""


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
    return algo_cls(
        policy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=0,
        **kwargs,
    )


def default_file_mode() -> int:
    """Permissions of a new regular file under the current umask (``mkstemp`` makes them private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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


def save_checkpoint(model: BaseAlgorithm, run_dir: Path, save_replay_buffer: bool) -> None:
    """Write ``checkpoints/``: the model, the training env's state, the global RNG states and (optionally)
    the replay buffer, each atomically. The model file is renamed into place last, so a checkpoint whose
    model exists is complete, and one interrupted mid-write leaves the previous checkpoint valid.
    """
    ckpt = run_dir / CHECKPOINT_DIR
    if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
        atomic_write(ckpt / REPLAY_BUFFER_FILE, model.save_replay_buffer)  # type: ignore[attr-defined]
    extra = {
        "timesteps": int(model.num_timesteps),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "env": get_env_state(model.get_env()),  # type: ignore[arg-type]
    }
    atomic_write(ckpt / "state.pkl", lambda f: pickle.dump(extra, f))
    atomic_write(ckpt / MODEL_FILE, model.save)


def checkpoint_has_replay_buffer(run_dir: Path) -> bool:
    """Whether the run's checkpoint holds its replay buffer, i.e. ``--resume`` will continue exactly."""
    return (run_dir / CHECKPOINT_DIR / REPLAY_BUFFER_FILE).is_file()


def restore_checkpoint_state(model: BaseAlgorithm, run_dir: Path) -> None:
    """Restore the training env, the global RNGs and the replay buffer saved beside the checkpoint."""
    ckpt = run_dir / CHECKPOINT_DIR
    if checkpoint_has_replay_buffer(run_dir):
        model.load_replay_buffer(ckpt / REPLAY_BUFFER_FILE)  # type: ignore[attr-defined]
    state_file = ckpt / "state.pkl"
    if not state_file.is_file():
        return
    try:
        with open(state_file, "rb") as f:
            extra = pickle.load(f)
    except Exception as err:
        raise RunError(f"corrupt checkpoint state {str(state_file)!r}: {err}") from None
    if extra["timesteps"] != model.num_timesteps:
        return  # a final model newer than the checkpoint: nothing of the checkpoint applies
    set_env_state(model.get_env(), extra["env"])  # type: ignore[arg-type]
    torch.set_rng_state(extra["torch"])
    np.random.set_state(extra["numpy"])
    random.setstate(extra["random"])


def rewind_evaluations(path: Path, timesteps: int) -> float:
    """Drop the rows of an ``evaluations.csv`` made after ``timesteps``, the step a resumed run restarts from.

    Without this, a run resumed from a checkpoint older than its last evaluation would list those
    evaluations twice. Returns the ``wall_clock_s`` of the last row kept (0.0 if none), so that the resumed
    run's clock continues from it.
    """
    if not path.is_file():
        return 0.0
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
    return last_clock


class CheckpointCallback(BaseCallback):
    """Every ``freq`` env steps, an atomic checkpoint in the run directory.

    It is written at the start of a rollout, i.e. after the gradient steps that follow the previous
    rollout, so resuming from it replays exactly what an uninterrupted run does next.
    """

    def __init__(self, run_dir: Path, freq: int, save_replay_buffer: bool):
        super().__init__()
        self.run_dir, self.freq, self.save_replay_buffer = run_dir, freq, save_replay_buffer
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq
            save_checkpoint(self.model, self.run_dir, self.save_replay_buffer)

    def _on_step(self) -> bool:
        return True


def read_run(run_dir: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a run: ``{algo, env, seed, preset, label, config: TrainConfig, ...}``."""
    path = run_dir / "config.yaml"
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


def load_run_model(
    run_dir: Path, env: VecEnv | None = None, device: str = "cpu", prefer_checkpoint: bool = False
) -> BaseAlgorithm:
    """The final model of a run, else its latest checkpoint (the other way round with ``prefer_checkpoint``)."""
    info = read_run(run_dir)
    algo_cls = ALGOS[info["algo"]][0]
    paths = [run_dir / MODEL_FILE, run_dir / CHECKPOINT_DIR / MODEL_FILE]
    for path in paths[::-1] if prefer_checkpoint else paths:
        if path.is_file():
            try:
                return algo_cls.load(path, env=env, device=device, force_reset=False)
            except Exception as err:
                raise RunError(f"corrupt model file {str(path)!r}: {type(err).__name__}: {err}") from None
    raise RunError(f"run {str(run_dir)!r} has no model yet (no {MODEL_FILE} nor checkpoint)")


def summary(model: BaseAlgorithm, eval_row: dict[str, Any] | None, wall_clock: float, steps: int) -> dict[str, Any]:
    report = sparsity_report(model)
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
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
