"""Shared helpers of the learning benchmarks: run CLI trainings in parallel, summarise run directories."""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sparse_rl.run import CHECKPOINT_DIR, EVALUATIONS_FILE, MODEL_FILE, checkpoint_has_replay_buffer


@dataclass
class Run:
    name: str  # group name, e.g. "rigl"
    seed: int
    run_dir: Path
    args: list[str]  # python -m sparse_rl.train arguments (without --seed/--run-dir)

    def command(self) -> list[str]:
        ckpt = self.run_dir / CHECKPOINT_DIR
        if (ckpt / MODEL_FILE).is_file() and checkpoint_has_replay_buffer(self.run_dir):
            # started before with its replay buffer checkpointed: continue exactly where it stopped
            return [sys.executable, "-m", "sparse_rl.train", "--resume", str(self.run_dir), "--no-progress"]
        # never started, or its checkpoint lacks the replay buffer: resuming with an empty buffer would be
        # a different experiment from the uninterrupted runs it is compared with, so start afresh
        return [
            sys.executable,
            "-m",
            "sparse_rl.train",
            *self.args,
            "--seed",
            str(self.seed),
            "--run-dir",
            str(self.run_dir),
            "--no-progress",
            "--overwrite",
        ]


def run_all(runs: list[Run], jobs: int, log_dir: Path) -> None:
    """Run every unfinished run (no summary.json yet), ``jobs`` at a time, one torch thread each."""
    todo = [r for r in runs if not (r.run_dir / "summary.json").is_file()]
    log_dir.mkdir(parents=True, exist_ok=True)

    def one(run: Run) -> int:
        # the parent folder is the env in the benchmarks' layouts: same-named runs on two envs keep their logs
        with open(log_dir / f"{run.run_dir.parent.name}-{run.run_dir.name}.log", "w") as f:
            return subprocess.call(run.command(), stdout=f, stderr=subprocess.STDOUT)

    start = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, todo))
    print(f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min, exit codes {codes}")


def summarize(groups: dict[str, list[Path]]) -> list[dict]:
    """Final return mean and 95% CI (1.96·sd/√n over seeds), density, FLOPs ratio, wall-clock per group."""
    rows = []
    for name, dirs in groups.items():
        finished = [d for d in dirs if (d / "summary.json").is_file()]
        summaries = [json.loads((d / "summary.json").read_text()) for d in finished]
        if not summaries:
            continue
        finals = [s["final_eval"]["return_mean"] for s in summaries]
        # one evaluation is noisy (a single bad episode moves it); the last three are steadier
        evals = [_evaluations(d) for d in finished]
        curves = [[(int(e["timesteps"]), float(e["return_mean"])) for e in ev] for ev in evals]
        sp = [s["sparsity"] for s in summaries]
        rows.append(
            {
                "method": name,
                "seeds": len(finals),
                "final_return_mean": statistics.mean(finals),
                "ci95": 1.96 * statistics.stdev(finals) / math.sqrt(len(finals)) if len(finals) > 1 else float("nan"),
                "actor_density": statistics.mean(p["actor"]["density"] for p in sp),
                "critic_density": statistics.mean(p["critic"]["density"] for p in sp),
                # a gradient step costs ~3 forward passes of actor and critic, sparse or dense alike
                "train_flops_ratio": statistics.mean(
                    (p["actor"]["flops"] + p["critic"]["flops"]) / (p["actor"]["dense_flops"] + p["critic"]["dense_flops"])
                    for p in sp
                ),
                "last3_return_mean": statistics.mean(statistics.mean(r for _, r in c[-3:]) for c in curves),
                # the area under the later learning curve: every evaluation after the first third of training
                "late_return_mean": statistics.mean(statistics.mean(r for t, r in c if t > c[-1][0] / 3) for c in curves),
                "wall_clock_min": statistics.median(s["wall_clock_s"] for s in summaries) / 60,
                # ReDo dormant fractions at the last evaluation (runs from before the diagnostics: empty)
                **{
                    f"{net}_dormant_final": statistics.mean(float(ev[-1][f"{net}_dormant"]) for ev in evals)
                    if all(ev[-1].get(f"{net}_dormant") for ev in evals)
                    else ""
                    for net in ("actor", "critic")
                },
                "finals": finals,
            }
        )
    return rows


def _evaluations(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's evaluations.csv, in order."""
    with open(run_dir / EVALUATIONS_FILE) as f:
        return list(csv.DictReader(f))


def markdown(rows: list[dict], baseline: str = "dense") -> str:
    base_rows = [r for r in rows if r["method"] == baseline]

    def vs_base(r: dict, key: str) -> str:
        return f"{r[key]:.0f}" + (f" ({r[key] / base_rows[0][key]:.2f})" if base_rows else "")

    lines = [
        "| method | seeds | final return (mean ± 95% CI) | per seed | ratio to dense | last 3 evals | evals after ⅓ | actor / critic density | training FLOPs vs dense | wall-clock (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['final_return_mean'] / base_rows[0]['final_return_mean']:.2f}" if base_rows else "-"
        per_seed = ", ".join(f"{v:.0f}" for v in r["finals"])
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['final_return_mean']:.0f} ± {r['ci95']:.0f} | {per_seed} | {ratio} | "
            f"{vs_base(r, 'last3_return_mean')} | {vs_base(r, 'late_return_mean')} | "
            f"{r['actor_density']:.3f} / {r['critic_density']:.3f} | {r['train_flops_ratio']:.3f} | {r['wall_clock_min']:.0f} min |"
        )
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in rows[0] if k != "finals"] if rows else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
