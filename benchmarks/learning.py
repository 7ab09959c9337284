"""Learning benchmark: dense vs static vs SET vs RigL, SAC at 90% sparsity, through the CLI.

Runs ``python -m sparse_rl.train`` for every method x seed (``--jobs`` at a time, one torch thread
each), skipping runs that already have a ``summary.json``; then writes ``docs/results/learning.csv``,
``docs/results/learning.png`` and prints the Markdown table recorded in ``docs/benchmarks.md``.

    python benchmarks/learning.py --env HalfCheetah-v5 --seeds 0 1 --n-timesteps 100000 --jobs 2
    python benchmarks/learning.py --report-only        # tables and plots from existing runs
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ["dense", "static", "set", "rigl"]


def run_one(cmd: list[str], log: Path) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)


def training_flops(summary: dict, config: dict, n_timesteps: int) -> float:
    """Training FLOPs relative to dense: every gradient step costs ~3 forward passes' worth (forward,
    two backward products) of the actor and critic, so the ratio is that of FLOPs per forward pass."""
    sp = summary["sparsity"]
    sparse = sp["actor"]["flops"] + sp["critic"]["flops"]
    dense = sp["actor"]["dense_flops"] + sp["critic"]["dense_flops"]
    return sparse / dense


def report(root: Path, env: str, out_dir: Path) -> str:
    from sparse_rl.plot import plot_runs

    rows = []
    for method in METHODS:
        finals, densities, walls, flops = [], [], [], []
        for run in sorted(root.glob(f"{method}-s*")):
            s = run / "summary.json"
            if not s.is_file():
                continue
            summary = json.loads(s.read_text())
            finals.append(summary["final_eval"]["return_mean"])
            densities.append((summary["sparsity"]["actor"]["density"] + summary["sparsity"]["critic"]["density"]) / 2)
            walls.append(summary["wall_clock_s"])
            flops.append(training_flops(summary, {}, summary["timesteps"]))
        if finals:
            rows.append((method, finals, densities, walls, flops))
    dense_mean = next((statistics.mean(f) for m, f, *_ in rows if m == "dense"), None)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "learning.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["method", "seeds", "final_return_mean", "ci95", "ratio_to_dense", "density", "train_flops_ratio", "wall_clock_s"]
        )
        lines = [
            f"SAC on {env}, final evaluation return (mean over seeds, 95% CI = 1.96·sd/√n):",
            "",
            "| method | seeds | final return | ratio to dense | density | training FLOPs vs dense | wall-clock (median) |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, finals, densities, walls, flops in rows:
            mean = statistics.mean(finals)
            ci = 1.96 * statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else float("nan")
            ratio = mean / dense_mean if dense_mean else float("nan")
            w.writerow(
                [
                    method,
                    len(finals),
                    f"{mean:.1f}",
                    f"{ci:.1f}",
                    f"{ratio:.3f}",
                    f"{statistics.mean(densities):.4f}",
                    f"{statistics.mean(flops):.3f}",
                    f"{statistics.median(walls):.0f}",
                ]
            )
            lines.append(
                f"| {method} | {len(finals)} | {mean:.0f} ± {ci:.0f} | {ratio:.2f} | {statistics.mean(densities):.3f} | "
                f"{statistics.mean(flops):.3f} | {statistics.median(walls) / 60:.1f} min |"
            )
    plot_runs(
        sorted(p for p in root.iterdir() if (p / "config.yaml").is_file()),
        out_dir / "learning.png",
        title=f"SAC {env}, 90% sparsity",
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-timesteps", type=int, default=100_000)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--root", type=Path, default=Path("runs/learning"))
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    if not args.report_only:
        cmds = []
        for seed in args.seeds:
            for method in METHODS:
                run_dir = args.root / f"{method}-s{seed}"
                if (run_dir / "summary.json").is_file():
                    continue
                cmd = [
                    sys.executable,
                    "-m",
                    "sparse_rl.train",
                    "--algo",
                    "sac",
                    "--env",
                    args.env,
                    "--preset",
                    method,
                    "--sparsity",
                    str(args.sparsity),
                    "--seed",
                    str(seed),
                    "--n-timesteps",
                    str(args.n_timesteps),
                    "--run-dir",
                    str(run_dir),
                    "--no-progress",
                    "--set",
                    "eval_episodes=5",
                ]
                if (run_dir / "config.yaml").is_file():
                    cmd = [sys.executable, "-m", "sparse_rl.train", "--resume", str(run_dir), "--no-progress"]
                cmds.append((cmd, args.root / "logs" / f"{method}-s{seed}.log"))
        start = time.time()
        with ThreadPoolExecutor(args.jobs) as pool:
            codes = list(pool.map(lambda c: run_one(*c), cmds))
        print(f"{len(cmds)} runs in {(time.time() - start) / 60:.1f} min, exit codes {codes}")
    print(report(args.root, args.env, args.out))


if __name__ == "__main__":
    main()
