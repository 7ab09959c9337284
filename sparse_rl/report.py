"""``python -m sparse_rl.report RUNS --out DIR``: rliable statistics of a set of finished runs.

    python -m sparse_rl.report runs/learning --out runs/learning/report

``RUNS`` is any directory holding run directories at any depth (a sweep's ``--out``, or
``docs/results/runs/learning``). A run is grouped by its env (from ``config.yaml``) and its method, the
run directory's name without the ``-s<seed>`` suffix (``rigl-0.9-s1`` → ``rigl-0.9``). Only finished runs
(with ``summary.json``) count. ``--compare DIR...`` adds runs kept elsewhere, e.g. a new method's sweep
against the stored dense runs: ``python -m sparse_rl.report runs/dst --compare
docs/results/runs/learning/HalfCheetah-v5/dense-s*``.

Written to ``DIR``: ``report.md`` and PNGs. Per env: the final evaluation return of every method as the
old mean ± 95% t-interval (1.96·sd/√n) next to rliable's IQM with a stratified-bootstrap 95% CI, the
ratio to the baseline, the probability of improvement over it, densities, ITOP and training FLOPs; and
the IQM learning curves with CIs; where runs had noise features (``noise_fraction``), the share of each
network's input-layer connections on real features over training (``real-inputs-<env>.png``). Over
envs: scores normalised by the baseline (each score divided by the baseline's mean final return on that
env, over its seeds there; by its absolute value where it is negative, which keeps the order but makes
γ = 1 no longer the baseline's level), then IQM, mean, median and optimality gap (γ = 1, the baseline's
level) with CIs, probability of improvement, performance profiles, and the IQM learning curves of the
normalised returns (sample efficiency) at the steps every run evaluated.
Agarwal et al. (2021), "Deep reinforcement learning at the edge of the statistical precipice".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparse_rl.plot import method_styles
from sparse_rl.run_directory import SUMMARY_FILE, atomic_write, flat_env_id, read_evaluations

EXIT_BAD_INPUT = 2
NETS = ("actor", "critic")
_SEED = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")


@dataclass
class Run:
    env: str
    method: str
    seed: int
    path: Path
    final: float
    summary: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)
    #: per network (``actor``, ``critic``): the share of its input layer's connections on real features at each
    #: evaluation, where the run had noise features (``<net>_real_input_fraction`` in ``evaluations.csv``)
    real_inputs: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


class ReportError(ValueError):
    """Nothing to report, or a bad option; the message says which."""


def find_runs(root: Path) -> list[Run]:
    """Every finished run directory under ``root`` (``root`` itself included), sorted."""
    import yaml

    runs = []
    for summary_path in sorted(Path(root).rglob(SUMMARY_FILE)):
        run_dir = summary_path.parent
        config_path = run_dir / "config.yaml"
        match = _SEED.match(run_dir.name)
        hidden = any(part.startswith(".") for part in run_dir.relative_to(root).parts)  # a sweep's .tune
        if not config_path.is_file() or match is None or hidden:
            continue
        info = yaml.safe_load(config_path.read_text())
        summary = json.loads(summary_path.read_text())
        if not summary.get("final_eval"):
            continue
        rows = read_evaluations(run_dir)
        curve = [(int(float(r["timesteps"])), float(r["return_mean"])) for r in rows]
        real_inputs = {net: [(int(float(r["timesteps"])), float(r[f"{net}_real_input_fraction"])) for r in rows
                             if r.get(f"{net}_real_input_fraction")] for net in NETS}
        runs.append(Run(str(info["env"]), match["method"], int(match["seed"]), run_dir,
                        float(summary["final_eval"]["return_mean"]), summary, curve,
                        {net: c for net, c in real_inputs.items() if c}))
    return runs


#: the small files of a finished run that a report (and a fresh clone) needs; models and checkpoints stay out
KEPT_FILES = ("config.yaml", "evaluations.csv", "summary.json", "features.csv")


def keep_runs(root: Path, store: Path) -> list[Path]:
    """Copy the :data:`KEPT_FILES` of every finished run under ``root`` to ``store/<env>/<name>`` (each file
    written atomically); returns the stored run directories. Runs stored before (other machines) stay."""
    kept = []
    for run in find_runs(root):
        target = store / run.env / run.path.name
        for name in KEPT_FILES:
            source = run.path / name
            if source.is_file():
                data = source.read_bytes()
                atomic_write(target / name, lambda f, data=data: f.write(data))
        kept.append(target)
    return kept


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, then given back its state: rliable's
    ``StratifiedBootstrap`` and ``create_performance_profile`` draw from it (not from the ``random_state`` they are
    given), so without this a report's CIs depended on whatever had drawn from it before."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _estimates(score_dict: dict[str, Any], func: Any, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's point estimates and stratified-bootstrap CIs, the same on every call with the same ``seed``."""
    import warnings

    from rliable import library as rly

    with _global_numpy_seed(seed), warnings.catch_warnings():
        # arch >= 7 deprecates the RandomState argument rliable passes on
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(seed))


# The statistics below run once per bootstrap resample (10,000 per cell by default). rliable's IQM and probability
# of improvement call scipy's ``trim_mean`` and ``mannwhitneyu``, whose argument handling costs ~0.5 ms a call: most
# of a report's time. These compute the same numbers the same way, to the last bit (tests/test_sweep.py holds them
# to rliable's on random scores with ties), without that overhead.


def iqm(scores: np.ndarray) -> float:
    """rliable's ``aggregate_iqm``: the 25%-trimmed mean over all runs and tasks (scipy's ``trim_mean``)."""
    a = np.asarray(scores).reshape(-1)
    if a.size == 0 or np.isnan(a).any():
        return float("nan")
    low = int(0.25 * a.size)
    high = a.size - low
    return np.mean(np.partition(a, (low, high - 1))[low:high])


def probability_of_improvement(scores_x: np.ndarray, scores_y: np.ndarray) -> float:
    """rliable's ``probability_of_improvement``: per task, the Mann-Whitney U of x over y (pairs x > y, ties
    half) over the number of pairs, then the mean over tasks."""
    per_task = []
    for task in range(scores_x.shape[1]):
        x, y = scores_x[:, task], scores_y[:, task]
        if np.array_equal(x, y):
            per_task.append(0.5)
        elif np.isnan(x).any() or np.isnan(y).any():
            per_task.append(float("nan"))
        else:
            u = np.sum(x[:, None] > y[None, :]) + 0.5 * np.sum(x[:, None] == y[None, :])
            per_task.append(u / (x.shape[0] * y.shape[0]))
    return np.mean(per_task)


def score_distributions(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's performance profile ``score_distributions``: the share of all scores above each τ."""
    return np.mean(np.asarray(scores).reshape(-1, 1) > np.asarray(taus).reshape(1, -1), axis=0)


def aggregate_metrics(scores: dict[str, np.ndarray], reps: int = 10_000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """IQM, mean, median, optimality gap (γ=1) with 95% stratified-bootstrap CIs; ``scores[m]`` is runs × tasks."""
    from rliable import metrics

    def func(x: np.ndarray) -> np.ndarray:
        return np.array([iqm(x), metrics.aggregate_mean(x), metrics.aggregate_median(x),
                         metrics.aggregate_optimality_gap(x, 1.0)])

    points, intervals = _estimates(scores, func, reps, seed)
    names = ("iqm", "mean", "median", "optimality_gap")
    return {m: {n: (float(points[m][i]), float(intervals[m][0][i]), float(intervals[m][1][i])) for i, n in enumerate(names)}
            for m in scores}


def improvement(scores: dict[str, np.ndarray], baseline: str, reps: int = 10_000, seed: int = 0) -> dict[str, tuple]:
    """P(method > baseline) with its 95% CI, for every method other than the baseline."""
    pairs = {m: (s, scores[baseline]) for m, s in scores.items() if m != baseline}
    if not pairs:
        return {}
    points, intervals = _estimates(pairs, probability_of_improvement, reps, seed)  # type: ignore[arg-type]
    return {m: (float(np.ravel(points[m])[0]), float(np.ravel(intervals[m][0])[0]), float(np.ravel(intervals[m][1])[0]))
            for m in pairs}


def _t_interval(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    return mean, 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _fmt(est: tuple[float, float, float], digits: int = 2) -> str:
    return f"{est[0]:.{digits}f} [{est[1]:.{digits}f}, {est[2]:.{digits}f}]"


def _networks(runs: list[Run]) -> tuple[str, ...]:
    """The networks the runs' summaries measure, actor and critic first (SAC, TD3, PPO...), then the others by
    name (DQN's ``q_net``); the actor-critic pair where no run has measures (dense runs only)."""
    names = {n for r in runs for n in (r.summary.get("sparsity") or {})}
    return tuple(sorted(names, key=lambda n: (NETS.index(n) if n in NETS else len(NETS), n))) or NETS


def _sparsity_cells(runs: list[Run], nets: tuple[str, ...] = NETS) -> str:
    """Density per network, the first network's ITOP rate, and the forward multiply-adds of all of them over
    dense; dashes where a run lacks one of ``nets`` (a dense run)."""
    sp = [r.summary.get("sparsity") or {} for r in runs]
    if not all(all(n in s for n in nets) for s in sp):
        return "– | – | –"
    density = " / ".join(f"{statistics.mean(s[n]['density'] for s in sp):.3f}" for n in nets)
    itop = statistics.mean(s[nets[0]].get("itop_rate", float("nan")) for s in sp)
    flops = statistics.mean(sum(s[n]["flops"] for n in nets) / sum(s[n]["dense_flops"] for n in nets) for s in sp)
    return f"{density} | {itop:.2f} | {flops:.3f}"


def _curves(runs: list[Run], of: Callable[[Run], list[tuple[int, float]]] | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """Timesteps evaluated by every run, and runs × 1 × T returns there (None without a common one); ``of``
    picks another curve of a run than its returns (e.g. ``lambda r: r.real_inputs.get("actor", [])``)."""
    points = [dict(r.curve if of is None else of(r)) for r in runs]
    common = set.intersection(*(set(p) for p in points)) if runs else set()
    if not common:
        return None
    steps = np.array(sorted(common))
    values = np.array([[p[t] for t in steps] for p in points])
    return steps, values[:, None, :]


def _iqm_curves(data: dict[str, tuple[np.ndarray, np.ndarray]], reps: int, seed: int) -> dict[str, tuple]:
    """Per method: steps, then the IQM at each step with its 95% stratified-bootstrap CI; ``values`` is runs × tasks × T."""
    def func(x: np.ndarray) -> np.ndarray:
        return np.array([iqm(x[..., t]) for t in range(x.shape[-1])])

    out = {}
    for method, (steps, values) in data.items():
        points, intervals = _estimates({method: values}, func, reps, seed)
        out[method] = (steps, points[method], intervals[method][0], intervals[method][1])
    return out


def _plot_iqm_lines(ax: Any, curves: dict[str, tuple], styles: dict[str, tuple[str, str]], **line: Any) -> None:
    """Each method's :func:`_iqm_curves` points as a line, its CI as a band, in the method's own style."""
    for method, (steps, points, low, high) in curves.items():
        color, style = styles[method]
        ax.plot(steps, points, color=color, linestyle=style, label=method, **line)
        ax.fill_between(steps, low, high, color=color, alpha=0.2)


def _draw_curves(curves: dict[str, tuple], title: str, ylabel: str, path: Path, styles: dict[str, tuple[str, str]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    _plot_iqm_lines(ax, curves, styles)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def _curve_table(curves: dict[str, tuple]) -> list[str]:
    """A Markdown table of :func:`_iqm_curves`' points: a row per method, a column per step every method has."""
    steps = sorted(set.intersection(*(set(c[0].tolist()) for c in curves.values())))
    lines = ["| method | " + " | ".join(f"{t // 1000}k" if t % 1000 == 0 else str(t) for t in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for method, (at_steps, points, _, _) in curves.items():
        at = dict(zip(at_steps.tolist(), points))
        lines.append(f"| {method} | " + " | ".join(f"{at[t]:.2f}" for t in steps) + " |")
    return lines


def plot_curves(env: str, groups: dict[str, list[Run]], baseline_mean: float | None, path: Path, reps: int, seed: int,
                styles: dict[str, tuple[str, str]] | None = None) -> bool:
    """IQM learning curves with 95% CIs; returns whether anything was drawn.

    :param styles: color and line style per method (default: :func:`~sparse_rl.plot.method_styles` of ``groups``).
    """
    data = {m: _curves(rs) for m, rs in groups.items()}
    data = {m: d for m, d in data.items() if d is not None}
    if not data:
        return False
    styles = styles if styles is not None else method_styles(list(groups))
    _draw_curves(_iqm_curves(data, reps, seed), env, "evaluation return (IQM, 95% CI)", path, styles)
    return True


def plot_real_inputs(env: str, groups: dict[str, list[Run]], path: Path, reps: int, seed: int,
                     styles: dict[str, tuple[str, str]]) -> dict[str, dict[str, tuple]]:
    """Where runs had noise features: per network, the IQM over seeds (95% CI) of the share of its input
    layer's connections on real features at each evaluation, one panel per network (ANF's diagnostic);
    returns the curves drawn, per network and method (empty: nothing to draw)."""
    curves: dict[str, dict[str, tuple]] = {}
    for net in NETS:
        data = {m: _curves(rs, lambda r, net=net: r.real_inputs.get(net, [])) for m, rs in groups.items()}
        data = {m: d for m, d in data.items() if d is not None}
        if data:
            curves[net] = _iqm_curves(data, reps, seed)
    if not curves:
        return curves
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.2), squeeze=False)
    for ax, (net, per_method) in zip(axes[0], curves.items()):
        _plot_iqm_lines(ax, per_method, styles, marker=".")
        ax.set(xlabel="env steps", ylabel="input-layer connections on real features",
               title=f"{env}: {net} (IQM over seeds, 95% CI)")
        top = max(float(np.max(high)) for _, _, _, high in per_method.values())
        ax.set_ylim(0, min(1.0, max(0.25, 1.15 * top)))  # a share; room to read small moves
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return curves


def aggregate_curves(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per method, its per-task curves (steps, runs × 1 × T normalised returns) joined into runs × tasks × T at the
    steps every task evaluated, with as many runs as its task with the fewest; methods without a common step drop."""
    out = {}
    for method, per_task in curves.items():
        common = set.intersection(*(set(steps.tolist()) for steps, _ in per_task))
        if not common:
            continue
        steps = np.array(sorted(common))
        n = min(values.shape[0] for _, values in per_task)
        out[method] = steps, np.concatenate(
            [values[:n, :, np.searchsorted(s, steps)] for s, values in per_task], axis=1)
    return out


def plot_profiles(scores: dict[str, np.ndarray], path: Path, reps: int,
                  styles: dict[str, tuple[str, str]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import library as rly
    from rliable import plot_utils

    top = max(float(np.max(s)) for s in scores.values())
    taus = np.linspace(0.0, max(1.2, top * 1.05), 61)
    with _global_numpy_seed(0):
        profiles, cis = rly.create_performance_profile(scores, taus, custom_profile_func=score_distributions, reps=reps)
    styles = styles if styles is not None else method_styles(list(scores))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=cis, ax=ax,
                                         xlabel="score / baseline mean (τ)",
                                         colors={m: styles[m][0] for m in scores},
                                         linestyles={m: styles[m][1] for m in scores})
    lines = ax.get_lines()[: len(scores)]  # one per method, in order (the CI bands are not lines)
    ax.legend(lines, list(scores), fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def gather_runs(root: Path, compare: list[Path] | tuple[Path, ...] = ()) -> list[Run]:
    """The finished runs under ``root`` and under each ``compare`` directory (a run directory itself, or one
    holding runs), each run once; two different run directories of the same env, method and seed are an error."""
    runs: dict[tuple[str, str, int], Run] = {}
    for where in (root, *compare):
        for run in find_runs(where):
            key = (run.env, run.method, run.seed)
            other = runs.setdefault(key, run)
            if other is not run and other.path.resolve() != run.path.resolve():
                raise ReportError(f"two runs of {run.env} {run.method} seed {run.seed}: {str(other.path)!r} and "
                                  f"{str(run.path)!r}; report one of them")
    return sorted(runs.values(), key=lambda r: (r.env, r.method, r.seed))


def report(root: Path, out: Path, baseline: str = "dense", reps: int = 10_000, seed: int = 0,
           compare: list[Path] | tuple[Path, ...] = ()) -> str:
    """Write ``out/report.md`` and its PNGs for the runs under ``root`` and ``compare``; returns the Markdown."""
    runs = gather_runs(root, compare)
    if not runs:
        raise ReportError(
            f"no finished run directories (config.yaml + summary.json, named <method>-s<seed>) under {str(root)!r}"
        )
    also = "".join(f" {c}" for c in compare)
    remake = f"python -m sparse_rl.report {root} --out {out}" + (f" --compare{also}" if compare else "")
    envs = sorted({r.env for r in runs})
    styles = method_styles([r.method for r in runs])  # a method looks alike in every plot
    measured = _networks(runs)
    if set(measured) <= set(NETS):
        through = "actor and critic"
    elif len(measured) == 1:
        through = measured[0]
    else:
        through = f"{', '.join(measured)} (the ones a run has)"
    lines = [f"# Report: {root}", "",
             f"{len(runs)} finished runs. Statistics: rliable (Agarwal et al. 2021), stratified bootstrap, {reps} "
             f"resamples, 95% CIs (seed {seed}); scores are final evaluation returns. Densities, ITOP and FLOPs are "
             "the final networks': training FLOPs vs dense = multiply-adds of one forward pass through "
             f"{through} with their final masks, over the same networks dense (a wide network: over its own width). "
             f"Re-make with `{remake}`.", ""]
    normalised: dict[str, list[np.ndarray]] = {}
    normalised_curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for env in envs:
        groups: dict[str, list[Run]] = {}
        for r in sorted((r for r in runs if r.env == env), key=lambda r: (r.method, r.seed)):
            groups.setdefault(r.method, []).append(r)
        scores = {m: np.array([[r.final] for r in rs]) for m, rs in groups.items()}
        base = groups.get(baseline)
        base_mean = statistics.mean(r.final for r in base) if base else None
        per_env = aggregate_metrics(scores, reps, seed)
        prob = improvement(scores, baseline, reps, seed) if base else {}
        lines += [f"## {env}", ""]
        if base is None:
            lines += [f"No `{baseline}` runs here: no ratios, no normalised scores.", ""]
        nets = _networks([r for rs in groups.values() for r in rs])
        lines += ["| method | seeds | final return, mean ± 95% CI (1.96·sd/√n) | IQM [95% CI] | ratio to "
                  f"{baseline} (IQM) | P(> {baseline}) [95% CI] | {' / '.join(nets)} density | ITOP | "
                  "training FLOPs vs dense |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for method, rs in groups.items():
            mean, ci = _t_interval([r.final for r in rs])
            iqm = per_env[method]["iqm"]
            ratio = f"{iqm[0] / base_mean:.2f}" if base_mean and base_mean > 0 else "–"
            p = _fmt(prob[method]) if method in prob else "–"
            seeds = ", ".join(str(r.seed) for r in rs)
            lines.append(
                f"| {method} | {seeds} | {mean:.0f} ± {'–' if math.isnan(ci) else f'{ci:.0f}'} | {_fmt(iqm, 0)} | {ratio} | "
                f"{p} | {_sparsity_cells(rs, nets)} |"
            )
            if base_mean:
                # |mean|: with negative returns (Pendulum) a plain ratio would reverse the order
                normalised.setdefault(method, []).append(np.array([r.final / abs(base_mean) for r in rs]))
                curve = _curves(rs)
                if curve is not None:
                    normalised_curves.setdefault(method, []).append((curve[0], curve[1] / abs(base_mean)))
        flat = flat_env_id(env)  # a namespaced id (MinAtar/Breakout-v1): one file, not a folder per namespace
        png = out / f"curves-{flat}.png"
        if plot_curves(env, groups, base_mean, png, max(reps // 25, 500), seed, styles):
            lines += ["", f"IQM learning curves: `{png.name}` (evaluations every run made)."]
        png = out / f"real-inputs-{flat}.png"
        real = plot_real_inputs(env, groups, png, max(reps // 25, 500), seed, styles)
        for net, per_method in real.items():
            lines += ["", f"Noise features: the share of the {net}'s input-layer connections that sit on real "
                      "features (IQM over seeds; a dense layer's share is the real features' share of the input), "
                      f"at each evaluation every run made (`{png.name}` draws it with 95% CIs):", "",
                      *_curve_table(per_method)]
        lines.append("")
    # over envs: a method counts where it ran on every env that has a baseline, with as many seeds as its fewest
    tasks = [env for env in envs if any(r.env == env and r.method == baseline for r in runs)]
    agg = {m: np.stack([v[: min(len(x) for x in vs)] for v in vs], axis=1) for m, vs in normalised.items()
           if len(vs) == len(tasks)}
    if len(tasks) >= 1 and baseline in agg:
        metrics_ = aggregate_metrics(agg, reps, seed)
        prob = improvement(agg, baseline, reps, seed)
        lines += [f"## Over envs ({', '.join(tasks)}), scores / {baseline} mean", "",
                  f"| method | runs × envs | IQM | mean | median | optimality gap | P(> {baseline}) |",
                  "|---|---|---|---|---|---|---|"]
        for method, s in agg.items():
            m = metrics_[method]
            p = _fmt(prob[method]) if method in prob else "–"
            lines.append(f"| {method} | {s.shape[0]} × {s.shape[1]} | {_fmt(m['iqm'])} | {_fmt(m['mean'])} | "
                         f"{_fmt(m['median'])} | {_fmt(m['optimality_gap'])} | {p} |")
        plot_profiles(agg, out / "profiles.png", max(reps // 25, 500), styles)
        lines += ["", "Performance profiles (fraction of runs above τ × the baseline): `profiles.png`.", ""]
        joined = aggregate_curves({m: c for m, c in normalised_curves.items() if m in agg and len(c) == len(tasks)})
        if joined:
            curves = _iqm_curves(joined, max(reps // 25, 500), seed)
            _draw_curves(curves, f"over {len(tasks)} env(s), scores / {baseline} mean",
                         "normalised evaluation return (IQM, 95% CI)", out / "curves-over-envs.png", styles)
            lines += ["Sample efficiency: IQM of the normalised evaluation return at each step every run evaluated "
                      "(`curves-over-envs.png` draws it with 95% CIs).", "", *_curve_table(curves), ""]
    text = "\n".join(lines)
    atomic_write(out / "report.md", lambda f: f.write(text.encode()))
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.report", description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, help="directory holding run directories (a sweep's --out)")
    p.add_argument("--out", type=Path, help="where report.md and the PNGs go (default: RUNS/report)")
    p.add_argument("--baseline", default="dense", help="method every other is compared with (default: dense)")
    p.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--compare", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                   help="also report the runs in DIR (a run directory, or one holding runs: e.g. a stored dense "
                        "baseline); read only, never copied by --keep")
    p.add_argument("--keep", type=Path, metavar="STORE",
                   help="first copy each finished run's small files (config, evaluations, summary) to STORE/<env>/<name>, "
                        "then report on STORE: the record a fresh clone re-makes the tables from")
    args = p.parse_args(argv)
    try:
        for where in (args.runs, *args.compare):
            if not where.is_dir():
                raise ReportError(f"{str(where)!r} is not a directory")
        if args.reps < 100:
            raise ReportError(f"--reps must be at least 100, got {args.reps}")
        try:
            import rliable  # noqa: F401
        except ImportError:
            raise ReportError('the report needs rliable: pip install -e ".[sweep]"') from None
        root = args.runs
        if args.keep is not None:
            kept = keep_runs(args.runs, args.keep)
            print(f"kept {len(kept)} finished runs in {args.keep}", file=sys.stderr)
            root = args.keep
        text = report(root, args.out or args.runs / "report", args.baseline, args.reps, args.seed, args.compare)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
