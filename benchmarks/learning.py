"""Learning benchmark: dense vs static vs SET vs RigL, SAC at 90% sparsity, through the CLI.

Also the sparse compute backend: ``rigl-sparse-backend`` and ``rigl-dense-backend`` are RigL with
``backend=sparse`` and ``backend=dense`` on the same code (the ``rigl`` rows come from an earlier version,
dense kernels), ``rigl-wide-0.98`` a 98%-sparse [1024, 1024] RigL SAC on the sparse backend, to compare
with the dense 256x256 baseline on the same budget.

Runs ``python -m sparse_rl.train`` for every method x seed (``--jobs`` at a time, one torch thread
each), skipping finished runs and resuming started ones; then writes ``docs/results/learning.csv`` and
``docs/results/learning.png`` and prints the Markdown table recorded in ``docs/benchmarks.md``.

    python benchmarks/learning.py --env HalfCheetah-v5 --seeds 0 1 --n-timesteps 100000 --jobs 2
    python benchmarks/learning.py --methods rigl-sparse-backend rigl-dense-backend rigl-wide-0.98 --jobs 2
    python benchmarks/learning.py --report-only        # tables and plots from existing runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import (
    Run,
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

#: method -> its train arguments beyond the shared ones (the preset, then overrides)
METHODS = {
    "dense": ["--preset", "dense"],
    "static": ["--preset", "static"],
    "set": ["--preset", "set"],
    "rigl": ["--preset", "rigl"],
    "gmp": ["--preset", "gmp"],
    "granet": ["--preset", "granet"],
    "snip": ["--preset", "snip"],
    "rigl-sparse-backend": ["--preset", "rigl", "--set", "backend=sparse"],
    "rigl-dense-backend": ["--preset", "rigl", "--set", "backend=dense"],
    "rigl-wide-0.98": ["--preset", "rigl", "--set", "sparsity=0.98", "--set", "net_arch=[1024, 1024]", "--set", "backend=sparse"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="HalfCheetah-v5")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--n-timesteps", type=int, default=100_000)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--root", type=Path, default=Path("runs/learning"))
    p.add_argument("--out", type=Path, default=Path("docs/results"))
    p.add_argument(
        "--store",
        type=Path,
        default=Path("docs/results/runs/learning"),
        help="where finished runs' config, evaluations and summary are kept (in git)",
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()

    runs = [
        Run(
            method,
            seed,
            args.root / f"{method}-s{seed}",
            [
                "--algo",
                "sac",
                "--env",
                args.env,
                *([] if method == "dense" else ["--sparsity", str(args.sparsity)]),  # the dense preset refuses it
                "--n-timesteps",
                str(args.n_timesteps),
                "--set",
                "eval_episodes=5",
                *METHODS[method],
            ],
        )
        for seed in args.seeds
        for method in args.methods
    ]
    # finished runs are kept in the repository (args.store), so a fresh clone skips them and reports them
    runs = keep_results(runs, args.root, args.store)
    if not args.report_only:
        run_all(runs, args.jobs, args.root / "logs")
        runs = keep_results(runs, args.root, args.store)
    groups = {m: [r.run_dir for r in runs if r.name == m] for m in args.methods}
    csv_path = args.out / "learning.csv"
    # rows of methods with no finished run here are kept from the CSV, not dropped
    rows = merge_rows(read_csv(csv_path), summarize(groups), ("method",))
    if rows:
        write_csv(rows, csv_path)
    from sparse_rl.plot import plot_runs

    drawn = [(method, d) for method, dirs in groups.items() for d in dirs if finished(d)]
    missing = without_curves(rows, groups)
    # labelled by method: the config's label (algo-topology-sparsity) would merge the backend variants
    path = args.out / f"learning{'-partial' if missing else ''}.png"
    if drawn:
        plot_runs([d for _, d in drawn], path, title=f"SAC {args.env} (mean ± 95% CI over seeds)",
                  labels=[method for method, _ in drawn])
    if missing:
        print(f"no learning curves on disk for {missing}: wrote {path}, kept {args.out / 'learning.png'}")
    print(f"SAC on {args.env}, {args.n_timesteps} steps, final evaluation (5 episodes per seed):\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
