"""From a spec to its trials: names, ``sparse_rl.train`` commands, checks, and the output directory.

Each trial is an ordinary ``sparse_rl.train`` run directory, ``OUT/<env>/<grid values>-s<seed>``; a spec
may grow on ``--resume`` as long as no started trial's command changes (:func:`prepare_out`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.config import SPARSE_KEYS, ConfigError, resolve_config
from sparse_rl.envs import EnvError
from sparse_rl.run_directory import RunError
from sparse_rl.sweep.spec import SPEC_FILE, Spec, SweepError, Trial, parse_spec


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "x".join(_slug(v) for v in value)
    text = str(value)
    return re.sub(r"[^A-Za-z0-9.+_=-]+", "_", text).strip("_") or "_"


def _is_dense(algo: str, env: str, preset: str | None, overrides: dict[str, Any]) -> bool:
    values = {k: v for k, v in overrides.items() if k not in SPARSE_KEYS and not k.startswith("topology_kwargs.")}
    try:
        return bool(resolve_config(algo, env, preset or "sparse_rl", values).dense)
    except ConfigError:
        return False


def grid_trials(spec: Spec) -> list[Trial]:
    """Every trial of a grid spec, in order (env, grid point, seed); dense trials deduplicated."""
    points: list[dict[str, Any]] = [{}]
    for key, values_ in spec.grid.items():
        points = [{**p, key: v} for p in points for v in values_]
    named: list[tuple[str | None, dict[str, Any]]] = [(None, {})]
    if spec.variants:  # named override sets, the first dimension of the grid
        named = list(spec.variants.items())
    trials: dict[tuple[str, str], Trial] = {}
    for env in spec.envs:
        for (variant, extra), point in itertools.product(named, points):
            values = {**spec.fixed, **extra, **point}
            preset = values.pop("preset", None)
            dense = _is_dense(spec.algo, env, preset, values)
            if dense:  # the dense baseline has no sparse settings: one trial, whatever the grid says of them
                values = {k: v for k, v in values.items() if k not in SPARSE_KEYS and not k.startswith("topology_kwargs.")}
                point = {k: v for k, v in point.items() if k not in SPARSE_KEYS and not k.startswith("topology_kwargs.")}
            stem = "-".join([*([variant] if variant else []), *(_slug(v) for v in point.values())]) or "run"
            for seed in spec.seeds:
                name = f"{stem}-s{seed}"
                trials.setdefault((env, name), Trial(name, env, seed, values, preset))
    return list(trials.values())


def _literal(value: Any) -> str:
    """``value`` as ``--set`` reads it back (a Python literal; a bare word for strings)."""
    return value if isinstance(value, str) else repr(value)


def train_argv(spec: Spec, trial: Trial, run_dir: Path | None) -> list[str]:
    """The ``sparse_rl.train`` arguments of ``trial`` (``run_dir`` None: left for the caller to add)."""
    argv = ["--algo", spec.algo, "--env", trial.env, "--seed", str(trial.seed), "--no-progress"]
    if run_dir is not None:
        argv += ["--run-dir", str(run_dir)]
    if trial.preset is not None:
        argv += ["--preset", str(trial.preset)]
    if spec.n_timesteps is not None:
        argv += ["--n-timesteps", str(spec.n_timesteps)]
    for key, value in trial.overrides.items():
        argv += ["--set", f"{key}={_literal(value)}"]
    if spec.save_replay_buffer:
        argv.append("--save-replay-buffer")
    return argv


def check_trials(spec: Spec, trials: list[Trial], out: Path, resume: bool) -> None:
    """Plan every trial as ``sparse_rl.train`` would (config, env, run directory), writing nothing."""
    from sparse_rl import train as train_cli

    parser = train_cli.build_parser()
    for trial in trials:
        run_dir = trial.run_dir(out)
        if resume and (run_dir / "config.yaml").is_file():
            continue  # its settings were checked when it started
        args = parser.parse_args(train_argv(spec, trial, run_dir))
        try:
            plan = train_cli.plan_run(args)
        except (ConfigError, RunError, EnvError) as err:
            raise SweepError(f"trial {trial.env}/{trial.name}: {err}") from None
        if plan.lock is not None:
            os.close(plan.lock)


def _spec_digest(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def prepare_out(spec: Spec, out: Path, resume: bool) -> bool:
    """Refuse to mix sweeps in one directory; return whether the spec must be (re)written.

    A grid may grow on ``--resume``: a spec that adds envs, seeds, variants or grid values keeps every
    trial the directory already holds, as long as each of them would train with the same command. A
    change to a started trial's command (``n_timesteps``, ``set:``, a variant's settings) is refused:
    its run directory would mix two configurations.
    """
    stored = out / SPEC_FILE
    if stored.is_file():
        if not resume:
            raise SweepError(f"{str(out)!r} already holds a sweep; continue it with --resume or choose another --out")
        before = yaml.safe_load(stored.read_text())
        if _spec_digest(before) == _spec_digest(spec.raw):
            return False
        differs = f"the spec differs from the one {str(out)!r} was started with ({stored})"
        old = parse_spec(before, str(stored))
        if spec.search is not None or old.search is not None:
            raise SweepError(f"{differs}; a search resumes only with its own spec")
        commands = {f"{t.env}/{t.name}": train_argv(old, t, t.run_dir(out)) for t in grid_trials(old)}
        changed = []
        for t in grid_trials(spec):
            name, argv = f"{t.env}/{t.name}", train_argv(spec, t, t.run_dir(out))
            if (t.run_dir(out) / "config.yaml").is_file() and commands.get(name, argv) != argv:
                changed.append(name)
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise SweepError(f"{differs} in the command of started trials ({', '.join(changed[:3])}{more}); resume with "
                             "that spec, or add trials without changing those that ran")
        return True
    if resume and out.exists() and any(out.iterdir()):
        raise SweepError(f"{str(out)!r} holds no sweep ({SPEC_FILE} is missing); nothing to resume")
    return True
