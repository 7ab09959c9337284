"""The run directory on disk: its layout, its lock, and writing its files so that a kill leaves them whole.

A run directory (``python -m sparse_rl.train --run-dir DIR``) holds::

    config.yaml         the resolved config, the algorithm, env, seed, preset, and the code that trained it
    evaluations.csv     one row per evaluation (sparse_rl.eval_callback)
    checkpoints/        atomic checkpoints (sparse_rl.checkpoint)
    tb/                 TensorBoard
    model.zip, curve.png, summary.json    written when the run finishes
    .lock               held by the process that trains it

Every file is written under a temporary name and renamed (:func:`atomic_write`). Building and loading the
models is :mod:`sparse_rl.models`; the training callbacks are :mod:`sparse_rl.callbacks`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

EVALUATIONS_FILE = "evaluations.csv"
CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")
SUMMARY_FILE = "summary.json"  # written when a run finishes


class RunError(ValueError):
    """A run directory is missing, unusable or corrupt."""


def read_evaluations(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's evaluations CSV, in order (``[]`` when it has none yet)."""
    path = Path(run_dir) / EVALUATIONS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def flat_env_id(env: str) -> str:
    """An env id as one file-name component: a namespaced id's ``/`` written ``-`` (``MinAtar-Breakout-v1``)."""
    return env.replace("/", "-")


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(timesteps, path)`` of every ``step-*`` directory, oldest first (not verified)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


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
    from sparse_rl.config import config_from_dict  # torch and SB3 come with it: not for a sweep's Ray workers

    try:
        data = yaml.safe_load(path.read_text())
        data["config"] = config_from_dict(data["algo"], data["config"])
    except Exception as err:
        raise RunError(f"corrupt run config {str(path)!r}: {err}") from None
    return data


def run_dir_of(path: Path) -> Path | None:
    """The run directory holding ``path`` (a model zip inside a run or one of its checkpoints), if any."""
    for parent in list(path.resolve().parents)[:3]:
        if (parent / "config.yaml").is_file():
            return parent
    return None
