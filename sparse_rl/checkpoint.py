"""Checkpoints of a run: complete sets, written atomically, verified at resume, state stored as data.

A checkpoint is one directory, ``<run>/checkpoints/step-<timesteps>/``, holding

- ``model.zip``: SB3's own save (policy and optimizer weights, counters; SB3 pickles part of its data),
- ``state.json`` + ``state.npz``: what SB3 does not save, as JSON and numpy arrays (loaded without
  pickle): the global RNG states (torch, numpy, random) and the training env's state (physics, its RNG,
  ``TimeLimit`` and ``Monitor`` counters),
- ``replay_buffer.pkl``, with ``--save-replay-buffer`` (SB3's pickle),
- ``manifest.json``, written last: the step, and each file's size and sha256.

The set is built in a hidden temporary directory beside the others, renamed into place when complete,
and only then are older checkpoints removed. A process killed at any moment therefore leaves either
the previous complete checkpoint or the new one, never a mix; :func:`latest_checkpoint` takes the newest
directory whose manifest verifies and clears interrupted writes.

Pickle is still read from ``model.zip`` and ``replay_buffer.pkl`` (SB3's formats): never resume a run
directory from an untrusted source.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sparse_rl.envs.normalize import normalization_state, set_normalization_state
from sparse_rl.envs.state import get_env_state, set_env_state, was_reset
from sparse_rl.run_directory import (  # re-exported: light, for a sweep's Ray workers
    CHECKPOINT_DIR,
    checkpoint_dirs,
    current_umask,
)

MODEL_FILE = "model.zip"
STATE_JSON, STATE_ARRAYS = "state.json", "state.npz"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint directory exists but does not verify (missing file, wrong size or hash)."""


# ----------------------------------------------------------------------------------- fault injection
_KILL_ENV = "SPARSE_RL_KILL_AT"
_kill_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    """For the kill-safety tests: ``SPARSE_RL_KILL_AT=<name>:<n>`` makes this process SIGKILL itself the
    ``n``-th time it reaches the point ``name`` (e.g. ``checkpoint:placed:2``). Unset, it does nothing."""
    spec = os.environ.get(_KILL_ENV)
    if not spec:
        return
    point, _, count = spec.rpartition(":")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


# -------------------------------------------------------------------------------- state as plain data
def to_data(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """``obj`` (nested dicts, lists, tuples, numbers, strings, numpy arrays/scalars) as JSON-able data;
    arrays go into ``arrays`` and are referenced by key. Anything else raises ``TypeError``."""
    if isinstance(obj, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_data(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [to_data(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if not all(isinstance(k, str) and not k.startswith("__") for k in obj):
            raise TypeError(f"cannot store a dict with keys {list(obj)} as data")
        return {k: to_data(v, arrays) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} as data")


def from_data(data: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The inverse of :func:`to_data`."""
    if isinstance(data, list):
        return [from_data(v, arrays) for v in data]
    if isinstance(data, dict):
        if "__array__" in data:
            value = arrays[data["__array__"]]
            return value[()] if data.get("scalar") else value
        if "__tuple__" in data:
            return tuple(from_data(v, arrays) for v in data["__tuple__"])
        return {k: from_data(v, arrays) for k, v in data.items()}
    return data


def _unnormalized(venv: VecEnv) -> VecEnv:
    return venv.venv if isinstance(venv, VecNormalize) else venv


def _training_state(model: BaseAlgorithm, eval_env: VecEnv | None) -> dict[str, Any]:
    venv = model.get_env()
    normalized = venv if isinstance(venv, VecNormalize) else None
    state = {
        "timesteps": int(model.num_timesteps),
        "torch_rng": torch.get_rng_state().numpy(),
        "numpy_rng": np.random.get_state(),
        "random_rng": random.getstate(),
        "env": get_env_state(_unnormalized(venv)),  # type: ignore[arg-type]
        # SB3 reseeds the action space when it loads a model; DQN's epsilon-greedy (and every algorithm before
        # learning_starts) samples from it
        "action_space_rng": json.dumps(model.action_space.np_random.bit_generator.state),
        # VecNormalize's running statistics (sparse_rl.envs.normalize), for runs that normalise
        **({"normalize": normalization_state(normalized)} if normalized is not None else {}),
    }
    if eval_env is not None:  # where the evaluation env's episodes stand (its statistics follow the training env's)
        inner = _unnormalized(eval_env)
        state["eval_env"] = get_env_state(inner) if was_reset(inner) else None  # type: ignore[arg-type]
    return state


def read_checkpoint_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """The training state saved with ``checkpoint`` (RNG states, env state, normalisation statistics)."""
    try:
        with np.load(checkpoint.path / STATE_ARRAYS, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        return from_data(json.loads((checkpoint.path / STATE_JSON).read_text()), arrays)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"corrupt checkpoint state in {str(checkpoint.path)!r}: {err}") from None


# ----------------------------------------------------------------------------------------- the set
@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint directory."""

    path: Path
    timesteps: int
    files: tuple[str, ...]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def has_replay_buffer(self) -> bool:
        return REPLAY_BUFFER_FILE in self.files

    def describe(self) -> str:
        parts = ["model", "state"] + (["replay buffer"] if self.has_replay_buffer else [])
        return f"{self.path} ({self.timesteps} steps; {', '.join(parts)} verified)"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checkpoint(path: Path) -> Checkpoint:
    """Check a checkpoint directory against its manifest; :raises CheckpointError: naming what is wrong."""
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
        timesteps = int(manifest["timesteps"])
        fmt = manifest["format"]
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} has no {MANIFEST_FILE}") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt {MANIFEST_FILE}: {err}") from None
    if fmt != MANIFEST_FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r} has format {fmt!r}; this version reads {MANIFEST_FORMAT}")
    for name in (MODEL_FILE, STATE_JSON, STATE_ARRAYS):
        if name not in files:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks {name}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} is missing")
        if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {str(path)!r}: {name} does not match its manifest (size or sha256)")
    return Checkpoint(path, timesteps, tuple(sorted(files)))


def latest_checkpoint(run_dir: Path, clean: bool = False) -> Checkpoint | None:
    """The newest checkpoint of a run, verified; ``None`` when it has none.

    With ``clean``, interrupted writes (hidden temporary directories) and checkpoints older than the one
    returned are removed. :raises CheckpointError: when the newest checkpoint does not verify (a kill
    cannot cause this, only damage to the files).
    """
    dirs = checkpoint_dirs(run_dir)
    if clean:
        root = run_dir / CHECKPOINT_DIR
        for stale in root.glob(".step-*") if root.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
    if not dirs:
        return None
    newest = verify_checkpoint(dirs[-1][1])
    if clean:
        for _, old in dirs[:-1]:
            shutil.rmtree(old, ignore_errors=True)
    return newest


def save_checkpoint(model: BaseAlgorithm, run_dir: Path, save_replay_buffer: bool,
                    eval_env: VecEnv | None = None) -> Checkpoint:
    """Write the model, the training state and (optionally) the replay buffer as one atomic checkpoint; with
    ``eval_env``, also where the evaluation env stands, so evaluations after a resume repeat an uninterrupted
    run's."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    steps = int(model.num_timesteps)
    final = root / f"step-{steps:09d}"
    if final.is_dir():
        try:
            return verify_checkpoint(final)  # this very state is saved already (a finished run resumed)
        except CheckpointError:
            shutil.rmtree(final)
    kill_point("checkpoint:begin")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        arrays: dict[str, np.ndarray] = {}
        data = to_data(_training_state(model, eval_env), arrays)
        _write_file(tmp / STATE_ARRAYS, lambda f: np.savez(f, **arrays))
        _write_file(tmp / STATE_JSON, lambda f: f.write(json.dumps(data).encode()))
        if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
            _write_file(tmp / REPLAY_BUFFER_FILE, model.save_replay_buffer)  # type: ignore[attr-defined]
        kill_point("checkpoint:buffer")
        _write_file(tmp / MODEL_FILE, model.save)
        kill_point("checkpoint:model")
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()
        }
        manifest = {"format": MANIFEST_FORMAT, "timesteps": steps, "files": files}
        _write_file(tmp / MANIFEST_FILE, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        os.chmod(tmp, 0o777 & ~current_umask())
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point("checkpoint:placed")
    for _, old in checkpoint_dirs(run_dir):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return Checkpoint(final, steps, tuple(sorted(files)))


def restore_checkpoint_state(model: BaseAlgorithm, checkpoint: Checkpoint, eval_env: VecEnv | None = None) -> bool:
    """Restore the replay buffer, the training env and the global RNGs saved with ``checkpoint`` into
    ``model``, which was loaded from ``checkpoint.model_path``, and the evaluation env into ``eval_env``
    (freshly made). Returns False when ``eval_env`` was given and the checkpoint predates evaluation-env
    state: evaluations from here on then start from a fresh evaluation env."""
    if checkpoint.has_replay_buffer:
        model.load_replay_buffer(checkpoint.path / REPLAY_BUFFER_FILE)  # type: ignore[attr-defined]
    state = read_checkpoint_state(checkpoint)
    if state["timesteps"] != model.num_timesteps or state["timesteps"] != checkpoint.timesteps:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.path)!r} is inconsistent: its state is at {state['timesteps']} steps, "
            f"its model at {model.num_timesteps}"
        )
    venv = model.get_env()
    if isinstance(venv, VecNormalize) != ("normalize" in state):
        raise CheckpointError(f"{str(checkpoint.path)!r} was saved {'with' if 'normalize' in state else 'without'} "
                              "normalised observations, and the run's env is not")
    if isinstance(venv, VecNormalize):
        set_normalization_state(venv, state["normalize"])
        venv = venv.venv
    set_env_state(venv, state["env"])  # type: ignore[arg-type]
    torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(state["torch_rng"])))
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["random_rng"])
    if "action_space_rng" in state:  # checkpoints written before it was kept resume as they did
        model.action_space.np_random.bit_generator.state = json.loads(state["action_space_rng"])
    if eval_env is None:
        return True
    if "eval_env" not in state:
        return False
    if state["eval_env"] is not None:  # None: no evaluation had run, the fresh env is where it stood
        set_env_state(_unnormalized(eval_env), state["eval_env"])  # type: ignore[arg-type]
    return True
