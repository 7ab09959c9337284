"""The campaign's table and the default preset's decision, from the stored runs (issue 33, items 5 and 6).

    python benchmarks/campaign_table.py docs/results/runs/campaign

Per task: each method's IQM final return over dense's mean final return on that task, with its 95%
stratified-bootstrap CI (rliable, as ``python -m sparse_rl.report`` computes them), and P(method > dense).
Over tasks: the IQM of the dense-normalised scores of every task together, its CI and P(> dense), where a
method has runs on every task (as many seeds per task as its task with the fewest).

Cost: the training forward multiply-adds of actor and critic at each evaluation (``evaluations.csv``: the
masks of that moment), averaged over the run's evaluations and its seeds, over dense's. A method that starts
dense (GMP) pays for its dense phase there; static, SET and RigL cost the same by this count.

The decision rule (issue 33, item 5): the sparse method with the best aggregate IQM, unless another method
whose aggregate CI overlaps the best one's costs less (by at least ``--cheaper`` of dense's cost); then the
cheapest of those. Without the full grid (``--seeds`` seeds of every method on every task) it says what is
missing and decides nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from sparse_rl.report import Run, aggregate_metrics, gather_runs, improvement
from sparse_rl.run_directory import read_evaluations


def training_cost(run: Run) -> float:
    """Mean over evaluations of the (actor + critic) forward multiply-adds over the dense networks'."""
    rows = read_evaluations(run.path)
    fractions = [(float(r["actor_flops"]) + float(r["critic_flops"]))
                 / (float(r["actor_dense_flops"]) + float(r["critic_dense_flops"])) for r in rows if r.get("actor_flops")]
    return statistics.mean(fractions) if fractions else 1.0


def _fmt(est: tuple[float, float, float]) -> str:
    return f"{est[0]:.2f} [{est[1]:.2f}, {est[2]:.2f}]"


def table(runs: list[Run], baseline: str = "dense", reps: int = 10_000, seed: int = 0) -> tuple[list[str], dict]:
    """Markdown lines of the table, and per method its aggregate IQM estimate, cost and seeds per task."""
    envs = sorted({r.env for r in runs if r.method == baseline})
    methods = sorted({r.method for r in runs if r.env in envs}, key=lambda m: (m != baseline, m))
    base = {env: statistics.mean(r.final for r in runs if r.env == env and r.method == baseline) for env in envs}
    normalised: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    for env in envs:
        for m in methods:
            finals = [r.final for r in runs if r.env == env and r.method == m]
            if finals:
                normalised[m][env] = np.array(finals) / abs(base[env])
    per_env = {env: aggregate_metrics({m: v[env][:, None] for m, v in normalised.items() if env in v}, reps, seed)
               for env in envs}
    prob_env = {env: improvement({m: v[env][:, None] for m, v in normalised.items() if env in v}, baseline, reps, seed)
                for env in envs}
    complete = {m: v for m, v in normalised.items() if len(v) == len(envs)}
    stacked = {m: np.stack([v[env][: min(len(x) for x in v.values())] for env in envs], axis=1)
               for m, v in complete.items()}
    agg = aggregate_metrics(stacked, reps, seed) if stacked else {}
    prob = improvement(stacked, baseline, reps, seed) if baseline in stacked else {}
    info = {}
    over = f"all {len(envs)}" if len(envs) > 1 else envs[0]
    lines = [f"| method | {' | '.join(envs)} | {over}: IQM | {over}: P(> {baseline}) | training cost vs {baseline} |",
             "|---|" + "---|" * (len(envs) + 3)]
    for m in methods:
        cells = []
        for env in envs:
            if env not in normalised[m]:
                cells.append("–")
            elif m == baseline:
                cells.append(f"{base[env]:.0f} (return)")
            else:
                cells.append(f"{_fmt(per_env[env][m]['iqm'])}, P {prob_env[env][m][0]:.2f}")
        cost = statistics.mean(training_cost(r) for r in runs if r.method == m and r.env in envs)
        info[m] = {"iqm": agg[m]["iqm"] if m in agg else None, "cost": cost,
                   "seeds": {env: len(normalised[m].get(env, [])) for env in envs}}
        lines.append(f"| {m} | {' | '.join(cells)} | {_fmt(agg[m]['iqm']) if m in agg else '–'} | "
                     f"{f'{prob[m][0]:.2f} [{prob[m][1]:.2f}, {prob[m][2]:.2f}]' if m in prob else '–'} | {cost:.2f} |")
    return lines, info


def decide(info: dict, baseline: str, seeds: int, cheaper: float) -> str:
    """The decision rule of the module's docstring, as a sentence with its numbers."""
    missing = [f"{m} on {env} ({n} of {seeds})" for m, i in info.items() for env, n in i["seeds"].items() if n < seeds]
    if missing:
        return "No decision: the grid is not complete; missing seeds: " + "; ".join(missing) + "."
    sparse = {m: i for m, i in info.items() if m != baseline}
    best = max(sparse, key=lambda m: sparse[m]["iqm"][0])
    low = sparse[best]["iqm"][1]
    overlapping = [m for m, i in sparse.items() if m != best and i["iqm"][2] >= low]
    cheaper_ones = [m for m in overlapping if sparse[m]["cost"] <= sparse[best]["cost"] - cheaper]
    iqm = sparse[best]["iqm"]
    text = f"Best aggregate IQM: {best}, {_fmt(iqm)} of dense (training cost {sparse[best]['cost']:.2f} of dense)."
    if overlapping:
        text += " Overlapping its CI: " + ", ".join(
            f"{m} {_fmt(sparse[m]['iqm'])} (cost {sparse[m]['cost']:.2f})" for m in overlapping) + "."
    if cheaper_ones:
        pick = min(cheaper_ones, key=lambda m: (sparse[m]["cost"], -sparse[m]["iqm"][0]))
        return text + f" Default: {pick}, the cheapest of those within the best one's CI."
    return text + f" Default: {best} (no method within its CI costs less)."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("runs", type=Path, help="the store, e.g. docs/results/runs/campaign")
    p.add_argument("--baseline", default="dense")
    p.add_argument("--seeds", type=int, default=5, help="seeds every cell needs before a decision (default 5)")
    p.add_argument("--cheaper", type=float, default=0.05,
                   help="how much less (of dense's training cost) a method must cost to count as cheaper (default 0.05)")
    p.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples (default 10000, as the report)")
    args = p.parse_args(argv)
    runs = gather_runs(args.runs) if args.runs.is_dir() else []
    if not any(r.method == args.baseline for r in runs):
        print(f"error: no finished {args.baseline!r} runs under {str(args.runs)!r}", file=sys.stderr)
        return 2
    lines, info = table(runs, args.baseline, args.reps)
    print("\n".join(lines))
    print()
    print(decide(info, args.baseline, args.seeds, args.cheaper))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
