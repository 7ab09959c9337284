"""Kill a training run with SIGKILL at random moments, ``--resume`` it each time, and compare the end with
a run that never stopped (the reproduction of the reliability issue, repeated until the run finishes).

    python benchmarks/kill_resume.py --seed 1                         # Pendulum, 3000 steps, checkpoint every 100
    python benchmarks/kill_resume.py --env HalfCheetah --n-timesteps 2000 --min-delay 3 --max-delay 10

Prints one line per attempt (delay, exit code, what the resume said) and a summary line. Exit code 1
if any attempt failed (an exit code other than 0 or -9) or the final weights differ.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sparse_rl.models import load_run_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="Pendulum")
    p.add_argument("--n-timesteps", type=int, default=3000)
    p.add_argument("--checkpoint-freq", type=int, default=100)
    p.add_argument("--eval-freq", type=int, default=1000)
    p.add_argument("--min-delay", type=float, default=1.5, help="seconds before a kill, drawn uniformly")
    p.add_argument("--max-delay", type=float, default=6.0)
    p.add_argument("--max-attempts", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    p.add_argument("--root", type=Path, help="where the two runs go (default: a temporary directory)")
    args = p.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    argv = ["--algo", "sac", "--env", args.env, "--n-timesteps", str(args.n_timesteps),
            "--set", f"checkpoint_freq={args.checkpoint_freq}", "--save-replay-buffer",
            "--eval-freq", str(args.eval_freq), "--no-progress"]
    train = [sys.executable, "-m", "sparse_rl.train"]
    for d in ("uninterrupted", "killed"):
        shutil.rmtree(root / d, ignore_errors=True)
    subprocess.run([*train, *argv, "--run-dir", str(root / "uninterrupted")], check=True, capture_output=True)
    rng = random.Random(args.seed)
    run = root / "killed"
    codes = []
    for attempt in range(args.max_attempts):
        fresh = not (run / "config.yaml").exists()  # killed before its config was written: start again
        cmd = [*train, *argv, "--run-dir", str(run)] if fresh else [*train, "--resume", str(run), "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        delay = rng.uniform(args.min_delay, args.max_delay)
        try:
            _, err = proc.communicate(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
        codes.append(proc.returncode)
        said = next((line for line in err.splitlines() if line.startswith(("resuming", "error", "warning"))), "")
        print(f"{attempt:4d} {'start ' if fresh else 'resume'} {delay:5.2f}s exit {proc.returncode:3d}  {said[:110]}", flush=True)
        if proc.returncode not in (0, -signal.SIGKILL):
            print(err, file=sys.stderr)
            print(f"FAILED: attempt {attempt} exited {proc.returncode}")
            return 1
        if proc.returncode == 0:
            break
    a, b = load_run_model(root / "uninterrupted"), load_run_model(run)
    sd_a, sd_b = a.policy.state_dict(), b.policy.state_dict()
    same = sd_a.keys() == sd_b.keys() and all(
        torch.equal(v, sd_b[k]) for k, v in sd_a.items() if torch.is_tensor(v)
    )
    print(f"attempts {len(codes)}, killed {codes.count(-signal.SIGKILL)}, failed 0, steps {a.num_timesteps} / "
          f"{b.num_timesteps}, final weights equal to the uninterrupted run: {same}")
    return 0 if same and codes[-1] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
