"""Train a stored run again from its config.yaml and compare its evaluations with the stored ones, digit by digit.

    python benchmarks/repeat_run.py docs/results/runs/campaign/HalfCheetah-v5/dense-s0 --until 30000

Run it in a checkout of the commit the stored run records (``code.commit`` in its ``config.yaml``; the script
says when the checkout differs). The run is trained with the stored config, the same total steps (schedules
depend on it) and the same seed, into a temporary directory, and stopped (SIGTERM, which checkpoints) once
its evaluation at ``--until`` steps is written. Every column of every evaluation row up to that step, but the
wall clock, must equal the stored row's text exactly. Prints one line per row; exit 0 when all are equal,
1 when one differs. One training, one torch thread: run it while at most one other training runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.config import SPARSE_KEYS, config_to_dict, resolve_config
from sparse_rl.numerics import code_version
from sparse_rl.sweep.plan import _literal  # a value as --set reads it back

IGNORED = ("wall_clock_s",)


def train_argv(info: dict[str, Any], run_dir: Path) -> list[str]:
    """The ``sparse_rl.train`` arguments that rebuild ``info``'s config: its preset plus what differs from it."""
    algo, env, preset = info["algo"], info["env"], info.get("preset", "sparse_rl")
    stored = info["config"]
    base = config_to_dict(resolve_config(algo, env, preset))
    argv = ["--algo", algo, "--env", env, "--seed", str(info["seed"]), "--preset", preset, "--run-dir", str(run_dir),
            "--no-progress", "--threads", "1"]
    if info.get("save_replay_buffer"):
        argv.append("--save-replay-buffer")
    for key, value in stored.items():
        if value == base.get(key) or (stored.get("dense") and key in SPARSE_KEYS):
            continue
        argv += ["--set", f"{key}={_literal(value)}"]
    return argv


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a stored run directory (config.yaml, evaluations.csv)")
    p.add_argument("--until", type=int, default=30_000, help="last evaluation step to compare (default 30000)")
    p.add_argument("--keep", type=Path, default=None, help="keep the repeated run's directory here")
    args = p.parse_args()
    info = yaml.safe_load((args.run / "config.yaml").read_text())
    stored = [r for r in _rows(args.run / "evaluations.csv") if int(r["timesteps"]) <= args.until]
    if not stored or int(stored[-1]["timesteps"]) != args.until:
        print(f"error: {args.run} has no evaluation at {args.until} steps", file=sys.stderr)
        return 2
    here, then = code_version().get("commit"), (info.get("code") or {}).get("commit")
    print(f"stored run: {args.run} (commit {then}); this checkout: {here}"
          + ("" if here == then else "  <- not the run's commit: differences may come from the code"))
    work = Path(tempfile.mkdtemp(prefix="repeat-run-"))
    run_dir = work / "run"
    argv = train_argv(info, run_dir)
    print("$ python -m sparse_rl.train " + " ".join(argv), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.time()
    with open(work / "train.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.train", *argv], stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        csv_path = run_dir / "evaluations.csv"
        while proc.poll() is None:
            if csv_path.is_file() and any(int(r["timesteps"]) >= args.until for r in _rows(csv_path)):
                proc.send_signal(signal.SIGTERM)  # checkpoints where it stops, then exits
                break
            time.sleep(2)
        proc.wait()
    repeated = {r["timesteps"]: r for r in _rows(csv_path)} if csv_path.is_file() else {}
    differ = 0
    for row in stored:
        again = repeated.get(row["timesteps"])
        cols = [k for k in row if k not in IGNORED]
        bad = [k for k in cols if again is None or again.get(k) != row[k]]
        differ += bool(bad)
        shown = f"return {row['return_mean']} / {again['return_mean'] if again else '-'}"
        print(f"  {row['timesteps']:>7} steps: {'equal in all ' + str(len(cols)) + ' columns' if not bad else 'DIFFER in ' + ', '.join(bad[:4])}"
              f" ({shown})")
    print(f"{len(stored) - differ}/{len(stored)} evaluations equal to the last digit; {time.time() - start:.0f} s")
    if args.keep is not None:
        shutil.copytree(run_dir, args.keep, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
