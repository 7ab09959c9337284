"""Non-stationarity benchmark: dense, RigL, RLx2 and sparse_rl (+ one-component ablation), SAC.

For each env x sparsity x seed, through the CLI (``--jobs`` at a time, resumable):

- ``dense``: SB3's MlpPolicy;  ``rigl``: the rigl preset;
- ``rlx2``: the rlx2 preset with its horizons scaled to the budget (RLx2 switches n-step targets on at
  10% of training and never shrinks the buffer below 1/15 of its size: 300k and 2e5 of 3M steps; at
  150k steps the published absolute values would never act);
- ``sparse_rl+all``: plain RigL (the rigl preset) with every candidate component (delayed 3-step soft
  targets, dynamic replay, momentum grow signal, dormant-neuron rewiring), ``-<component>`` with one
  removed, and ``+accumulate`` with the accumulated grow signal (10 batches) in momentum's place. The
  components are added to the rigl preset, not the sparse_rl one, so that removing one really removes it
  whatever the sparse_rl preset holds;
- ``rigl+momentum``, ``rigl+nstep``: plain RigL with the momentum grow signal, or the delayed 3-step
  targets, and nothing else.

All sparse methods use the same actor and critic sparsity. Writes ``docs/results/nonstationary.csv``, one
learning-curve PNG per env and sparsity, and prints the Markdown tables for ``docs/benchmarks.md``.

    python benchmarks/nonstationary.py --envs HalfCheetah-v5 Hopper-v5 --sparsities 0.9 0.95 --seeds 0 1 \\
        --n-timesteps 150000 --jobs 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    Run,
    curve_table,
    finished,
    keep_results,
    markdown,
    merge_rows,
    read_csv,
    run_all,
    summarize,
    without_curves,
    write_csv,
)


def components(n: int) -> dict[str, list[str]]:
    delay, floor = n // 10, max(n // 15, 10_000)
    return {
        "nstep": ["n_steps=3", f"n_step_delay={delay}"],
        "dynamic": ["dynamic_buffer=True", f"buffer_min_size={floor}", f"buffer_check_interval={max(n // 300, 500)}"],
        "momentum": ["topology_kwargs.grow_signal=momentum"],
        "rewire": ["topology_kwargs.rewire_dormant=True"],
    }


def methods(n: int) -> dict[str, tuple[str, list[str]]]:
    comp = components(n)
    every = [s for sets in comp.values() for s in sets]
    out = {
        "dense": ("dense", []),
        "rigl": ("rigl", []),
        "rlx2": (
            "rlx2",
            [
                f"n_step_delay={n // 10}",
                f"buffer_min_size={max(n // 15, 10_000)}",
                f"buffer_check_interval={max(n // 300, 500)}",
                "learning_starts=10000",
            ],
        ),
        "sparse_rl+all": ("rigl", every),
    }
    for name, sets in comp.items():
        out[f"sparse_rl-{name}"] = ("rigl", [s for s in every if s not in sets])
    # the other robust grow signal in momentum's place: the mean of the last 10 batches, about the
    # effective window of momentum 0.9 (sparse_rl-momentum is the single-batch RigL signal)
    accumulate = ["topology_kwargs.grow_signal=accumulate", "topology_kwargs.grow_batches=10"]
    out["sparse_rl+accumulate"] = ("rigl", [s for s in every if s not in comp["momentum"]] + accumulate)
    # single components on plain RigL alone: momentum helped inside the bundle on HalfCheetah; the
    # n-step targets are the suspect for rlx2's and the bundle's early hopping on Hopper
    out["rigl+momentum"] = ("rigl", comp["momentum"])
    out["rigl+nstep"] = ("rigl", comp["nstep"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-timesteps", type=int, default=150_000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--root", type=Path, default=Path("runs/nonstationary"))
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument(
        "--store",
        type=Path,
        default=Path("docs/results/runs/nonstationary"),
        help="where finished runs' config, evaluations and summary are kept (in git)",
    )
    p.add_argument("--methods", nargs="+", help="subset of methods, run in the order given (default: all)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    table = methods(args.n_timesteps)
    unknown = [m for m in args.methods or [] if m not in table]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {list(table)}")
    chosen = {m: table[m] for m in args.methods} if args.methods else table
    runs: list[Run] = []
    for env in args.envs:
        for sparsity in args.sparsities:
            # seeds innermost, so that with a limited budget each started method gets its seeds first
            for name, (preset, sets) in chosen.items():
                for seed in args.seeds:
                    if name == "dense" and sparsity != args.sparsities[0]:
                        continue  # one dense baseline per env
                    cli = [
                        "--algo",
                        "sac",
                        "--env",
                        env,
                        "--preset",
                        preset,
                        "--n-timesteps",
                        str(args.n_timesteps),
                        "--set",
                        "eval_episodes=5",
                    ]
                    if name != "dense":  # the dense preset refuses sparsity settings
                        cli += ["--set", f"actor_sparsity={sparsity}", "--set", f"critic_sparsity={sparsity}"]
                    for s in sets:
                        cli += ["--set", s]
                    tag = "dense" if name == "dense" else f"{name}-{sparsity}"
                    runs.append(Run(f"{env}|{tag}", seed, args.root / env / f"{tag}-s{seed}", cli))
    # finished runs are kept in the repository (args.store), so a fresh clone skips them and reports them
    runs = keep_results(runs, args.root, args.store)
    if not args.report_only:
        run_all(runs, args.jobs, args.root / "logs")
        runs = keep_results(runs, args.root, args.store)
    report(runs, args.envs, args.sparsities, args.out, args.n_timesteps)


def report(runs: list[Run], envs: list[str], sparsities: list[float], out: Path, n_timesteps: int) -> None:
    """Print one table per env x sparsity, update the results CSV and re-draw the complete figures.

    The CSV keeps the rows of methods not reported this time. A figure is re-drawn only when every
    method of its table has learning curves on disk; otherwise the available curves go to a
    ``-partial.png`` beside it, so the figure in the docs never loses a method.
    """
    from sparse_rl.plot import plot_runs

    csv_path = out / "nonstationary.csv"
    figures: dict[tuple[str, float], dict[str, list[Path]]] = {}
    fresh = []
    for env in envs:
        for sparsity in sparsities:
            groups: dict[str, list[Path]] = {}
            for r in runs:
                method = r.name.split("|", 1)[1]
                if r.name.startswith(f"{env}|") and (method.endswith(f"-{sparsity}") or method == "dense"):
                    groups.setdefault(method, []).append(r.run_dir)
            figures[env, sparsity] = groups
            rows = summarize(groups)
            for row in rows:
                row["env"], row["sparsity"] = env, sparsity
            fresh += rows
    merged = merge_rows(read_csv(csv_path), fresh, ("env", "sparsity", "method"))
    for (env, sparsity), groups in figures.items():
        rows = [r for r in merged if r["env"] == env and float(r["sparsity"]) == sparsity]
        if not rows:
            continue
        print(f"\nSAC on {env}, {sparsity:.0%} sparsity, {n_timesteps} steps:\n")
        print(markdown(rows))
        drawn = [(method, d) for method, dirs in groups.items() for d in dirs if finished(d)]
        if not drawn:
            continue
        print("\nEvaluation returns per seed (runs with curves on disk):\n")
        print(curve_table(groups))
        missing = without_curves(rows, groups)
        path = out / f"nonstationary-{env}-{sparsity}{'-partial' if missing else ''}.png"
        plot_runs(
            [d for _, d in drawn],
            path,
            title=f"SAC {env}, {sparsity:.0%} (mean ± 95% CI over seeds)",
            labels=[method for method, _ in drawn],
        )
        if missing:
            print(f"\nno learning curves on disk for {missing}: wrote {path}, kept the complete figure")
        else:
            path.with_name(f"{path.stem}-partial.png").unlink(missing_ok=True)
    if merged:
        write_csv(merged, csv_path)


if __name__ == "__main__":
    main()
