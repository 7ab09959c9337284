"""Shared helpers of the learning benchmarks: run CLI trainings in parallel, summarise run directories."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from sparse_rl.checkpoint import CheckpointError, latest_checkpoint
from sparse_rl.run_directory import EVALUATIONS_FILE, SUMMARY_FILE, atomic_write, read_run

#: The files of a finished run that the reports read (a few kB). ``runs/`` is not in git and goes with
#: the machine, so ``keep_results`` copies these into the repository's results folder, from which
#: ``--report-only`` re-makes every table and figure on a fresh clone.
KEPT_FILES = ("config.yaml", EVALUATIONS_FILE, SUMMARY_FILE)


@dataclass
class Run:
    name: str  # group name, e.g. "rigl"
    seed: int
    run_dir: Path
    args: list[str]  # python -m sparse_rl.train arguments (without --seed/--run-dir)

    def command(self) -> list[str]:
        try:
            checkpoint = latest_checkpoint(self.run_dir)
        except CheckpointError:
            checkpoint = None
        if checkpoint is not None and checkpoint.has_replay_buffer:
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
    todo = [r for r in runs if not finished(r.run_dir)]
    log_dir.mkdir(parents=True, exist_ok=True)

    def one(run: Run) -> int:
        # the parent folder is the env in the benchmarks' layouts: same-named runs on two envs keep their logs
        with open(log_dir / f"{run.run_dir.parent.name}-{run.run_dir.name}.log", "w") as f:
            return subprocess.call(run.command(), stdout=f, stderr=subprocess.STDOUT)

    start = time.time()
    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(one, todo))
    print(f"{len(todo)} runs in {(time.time() - start) / 60:.1f} min, exit codes {codes}")


def finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def keep_results(runs: list[Run], root: Path, store: Path) -> list[Run]:
    """Copy each finished run's ``KEPT_FILES`` from under ``root`` to the same place under ``store``.

    Returns the runs with ``run_dir`` pointing at the stored copy wherever the run directory itself is
    not finished (another machine ran it), so that reports read every finished run either way.
    """
    out = []
    for run in runs:
        kept = store / run.run_dir.relative_to(root)
        if finished(run.run_dir):
            for name in KEPT_FILES:
                data = (run.run_dir / name).read_bytes()
                atomic_write(kept / name, lambda f, data=data: f.write(data))
        elif finished(kept):
            run = replace(run, run_dir=kept)
        out.append(run)
    return out


def summarize(groups: dict[str, list[Path]]) -> list[dict]:
    """Final return mean and 95% CI (1.96·sd/√n over seeds), density, FLOPs ratio, wall-clock per group."""
    rows = []
    for name, dirs in groups.items():
        done = [d for d in dirs if finished(d)]
        summaries = [json.loads((d / SUMMARY_FILE).read_text()) for d in done]
        if not summaries:
            continue
        finals = [s["final_eval"]["return_mean"] for s in summaries]
        # one evaluation is noisy (a single bad episode moves it); the last three are steadier
        evals = [_evaluations(d) for d in done]
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


def without_curves(rows: list[dict], groups: dict[str, list[Path]]) -> list[str]:
    """The methods of ``rows`` that have no finished run among ``groups`` (a figure of them would lack them)."""
    return [r["method"] for r in rows if not any(finished(d) for d in groups.get(r["method"], []))]


def curve_table(groups: dict[str, list[Path]], every: int = 2) -> str:
    """A Markdown table of each finished run's evaluation returns, one row per seed, every ``every``-th evaluation."""
    lines = []
    for name, dirs in groups.items():
        for d in dirs:
            if finished(d):
                ev = _evaluations(d)[::every]
                if not lines:
                    steps = [f"{int(e['timesteps']) // 1000}k" for e in ev]
                    lines = ["| run | " + " | ".join(steps) + " |", "|---|" + "---|" * len(steps)]
                lines.append(
                    f"| {name}, seed {read_run(d)['seed']} | "
                    + " | ".join(f"{float(e['return_mean']):.0f}" for e in ev)
                    + " |"
                )
    return "\n".join(lines)


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
        per_seed = ", ".join(f"{v:.0f}" for v in r["finals"]) or "–"
        lines.append(
            f"| {r['method']} | {r['seeds']} | {r['final_return_mean']:.0f} ± {r['ci95']:.0f} | {per_seed} | {ratio} | "
            f"{vs_base(r, 'last3_return_mean')} | {vs_base(r, 'late_return_mean')} | "
            f"{r['actor_density']:.3f} / {r['critic_density']:.3f} | {r['train_flops_ratio']:.3f} | {r['wall_clock_min']:.0f} min |"
        )
    return "\n".join(lines)


#: CSV columns that hold text or a count; every other column holds a float (or nothing)
TEXT_COLUMNS = ("method", "env")
INT_COLUMNS = ("seeds",)


def write_csv(rows: list[dict], path: Path) -> None:
    """Write ``rows`` (with their per-seed final returns as ``finals``, space-separated) atomically."""
    keys = [k for k in rows[0] if k != "finals"] + ["finals"] if rows else []

    def write(f) -> None:
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows({**r, "finals": " ".join(repr(float(v)) for v in r.get("finals", []))} for r in rows)
        f.write(text.getvalue().encode())

    atomic_write(path, write)


def read_csv(path: Path) -> list[dict]:
    """The rows ``write_csv`` wrote (``[]`` if there is no file); a row from before ``finals`` has ``[]``."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        {
            **{k: _parse(k, v) for k, v in r.items() if k != "finals"},
            "finals": [float(v) for v in (r.get("finals") or "").split()],
        }
        for r in rows
    ]


def _parse(column: str, value: str) -> str | int | float:
    if column in TEXT_COLUMNS or value == "":
        return value
    return int(value) if column in INT_COLUMNS else float(value)


def merge_rows(old: list[dict], new: list[dict], key: tuple[str, ...]) -> list[dict]:
    """``old`` with each row replaced by the ``new`` row of the same ``key``, then the other new rows.

    A report over some methods (or after ``runs/`` was lost) then updates its rows of the results CSV
    and keeps the rest instead of dropping them.
    """

    def k(row: dict) -> tuple[str, ...]:
        return tuple(str(float(row[c])) if c not in TEXT_COLUMNS else str(row[c]) for c in key)

    fresh = {k(r): r for r in new}
    merged = [fresh.pop(k(r), r) for r in old]
    return merged + list(fresh.values())
