"""``python -m sparse_rl.plot RUN_DIR... --out curves.png``: learning curves grouped by run label.

Each group (label from the config, e.g. ``sac-rigl-0.9``) is drawn as the mean over its runs with a
95% confidence band (1.96·sd/√n, across seeds), next to actor density and ITOP rate over time.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from sparse_rl.run_directory import EVALUATIONS_FILE, RunError, default_file_mode, read_run

LINE_STYLES = ("-", "--", ":", "-.")


def method_styles(methods: list[str]) -> dict[str, tuple[str, str]]:
    """A matplotlib color and line style for each method, distinct for up to 40 methods.

    Matplotlib's (and rliable's) palettes repeat after 10 colors, so a 12-method plot drew two pairs of
    methods alike; past 10 the colors come round again with the next line style. Sorted first, so one
    report draws a method alike in every plot whichever subset the plot holds.
    """
    ordered = sorted(set(methods))
    return {m: (f"C{i % 10}", LINE_STYLES[(i // 10) % len(LINE_STYLES)]) for i, m in enumerate(ordered)}


def _read_evaluations(run_dir: Path) -> dict[str, np.ndarray]:
    path = run_dir / EVALUATIONS_FILE
    if not path.is_file():
        raise RunError(f"run {str(run_dir)!r} has no evaluations.csv yet")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise RunError(f"{str(path)!r} is empty")
    return {key: np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows]) for key in rows[0]}


def _band(curves: list[dict[str, np.ndarray]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = min(len(c["timesteps"]) for c in curves)
    x = curves[0]["timesteps"][:n]
    ys = np.stack([c[key][:n] for c in curves])
    mean = ys.mean(0)
    half = 1.96 * ys.std(0, ddof=1) / math.sqrt(len(curves)) if len(curves) > 1 else np.zeros_like(mean)
    return x, mean, half


def plot_runs(run_dirs: list[Path], out: Path, title: str | None = None, labels: list[str] | None = None) -> Path:
    """Write a PNG of learning curves (left) and density/ITOP (right) for ``run_dirs``.

    Runs are grouped by ``labels`` (one per run) when given, else by the label and env in their config;
    the config's label names algorithm, topology and sparsity only, so variants that differ in other
    settings (n-step targets, replay) need explicit labels to be drawn apart.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"got {len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    if labels is None:
        labels = [f"{info['label']} ({info['env']})" for info in map(read_run, run_dirs)]
    groups: dict[str, list[dict[str, np.ndarray]]] = defaultdict(list)
    for label, run_dir in zip(labels, run_dirs):
        groups[label].append(_read_evaluations(run_dir))
    if not groups:
        raise RunError("no runs to plot")
    fig, (ax_ret, ax_sp) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = method_styles(list(groups))
    for label, curves in sorted(groups.items()):
        color, style = styles[label]  # the right panel's solid/dashed lines keep their meaning: color only
        x, mean, half = _band(curves, "return_mean")
        ax_ret.plot(x, mean, color=color, linestyle=style, label=f"{label}, n={len(curves)}")
        ax_ret.fill_between(x, mean - half, mean + half, color=color, alpha=0.2)
        x, density, _ = _band(curves, "actor_density")
        _, itop, _ = _band(curves, "actor_itop_rate")
        ax_sp.plot(x, density, color=color, linestyle="--")
        ax_sp.plot(x, itop, color=color, label=label)
    ax_ret.set(xlabel="env steps", ylabel="evaluation return", title=title or "learning curves (mean ± 95% CI)")
    ax_sp.set(xlabel="env steps", ylabel="fraction of actor weights", title="actor ITOP rate (solid), density (dashed)")
    ax_ret.legend(fontsize=8)
    ax_sp.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".png")
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def find_runs(paths: list[Path]) -> list[Path]:
    """The run directories ``paths`` name: each path a run itself, or a directory with runs below it.

    :raises RunError: for a path that does not exist or holds no run, naming it.
    """
    runs: list[Path] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            runs.append(path)
        elif not path.is_dir():
            raise RunError(f"{str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is not a directory")
        else:
            found = sorted(c.parent for c in path.rglob("config.yaml") if (c.parent / EVALUATIONS_FILE).is_file())
            if not found:
                raise RunError(f"{str(path)!r} holds no run (a directory with config.yaml and {EVALUATIONS_FILE})")
            runs += found
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.plot", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="run directories, or directories holding runs (a sweep's --out)")
    p.add_argument("--out", type=Path, default=Path("curves.png"))
    p.add_argument("--title")
    args = p.parse_args(argv)
    try:
        runs = find_runs(args.runs)
        out = plot_runs(runs, args.out, args.title)
    except (RunError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
