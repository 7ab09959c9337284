"""A search instead of a grid: Optuna's TPE sampler through Ray Tune, ASHA early stopping, ``best.yml``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.config import resolve_config
from sparse_rl.run_directory import atomic_write
from sparse_rl.sweep.execution import _init_ray, _progress_callback, run_trial
from sparse_rl.sweep.plan import _literal, train_argv
from sparse_rl.sweep.spec import BEST_FILE, LOG_DIR, Spec, Trial


def _search_space(spec: Spec) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, dist in spec.search["space"].items():  # type: ignore[index]
        kind, bounds = next(iter(dist.items()))
        space[key] = {"uniform": lambda b: tune.uniform(*b), "loguniform": lambda b: tune.loguniform(*b),
                      "int": lambda b: tune.randint(b[0], b[1] + 1), "choice": tune.choice}[kind](bounds)
    return space


def _search_base(spec: Spec) -> Trial:
    """The fixed part of every search trial (first env, first seed)."""
    fixed = {k: v for k, v in spec.fixed.items() if k != "preset"}
    return Trial("search", spec.envs[0], spec.seeds[0], fixed, spec.fixed.get("preset"))


def search_trainable(config: dict[str, Any]) -> None:
    """A search trial: its sampled values become ``--set`` overrides of one run directory."""
    fixed = {k: v for k, v in config.items() if k != "_sweep"}
    base = config["_sweep"]
    digest = hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:8]
    name = f"trial-{digest}-s{base['seed']}"
    argv = [*base["argv"], "--run-dir", str(Path(base["out"]) / base["env"] / name)]
    for key, value in fixed.items():
        argv += ["--set", f"{key}={_literal(value)}"]
    run_trial({"out": base["out"], "env": base["env"], "name": name, "argv": argv})


def run_search(spec: Spec, out: Path, max_concurrent: int | None, address: str | None, resume: bool) -> None:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    nodes, cpus = _init_ray(address)
    concurrent = max_concurrent or cpus
    search = spec.search or {}
    env, seed = spec.envs[0], spec.seeds[0]
    # each trial names its own run directory
    base = {"out": str(out), "env": env, "seed": seed, "argv": train_argv(spec, _search_base(spec), None)}
    n = spec.n_timesteps or resolve_config(spec.algo, env, spec.fixed.get("preset", "sparse_rl")).n_timesteps
    scheduler = ASHAScheduler(time_attr="timesteps", max_t=n, grace_period=search.get("grace_period") or max(n // 5, 1),
                              reduction_factor=search.get("reduction_factor", 3))
    trainable = tune.with_resources(search_trainable, {"cpu": 1})
    storage, name = out / ".tune", "search"
    if resume and tune.Tuner.can_restore(str(storage / name)):
        tuner = tune.Tuner.restore(str(storage / name), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space={**_search_space(spec), "_sweep": base})
    else:
        searcher = OptunaSearch(metric="return", mode="max", seed=search.get("seed", 0))
        tuner = tune.Tuner(
            trainable,
            param_space={**_search_space(spec), "_sweep": base},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, metric="return", mode="max",
                                        num_samples=search["num_samples"], max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0,
                                      callbacks=[_progress_callback(search["num_samples"])]),
        )
    print(f"search: {search['num_samples']} trials on {env} (seed {seed}), {concurrent} at a time on {nodes} node(s) "
          f"with {cpus} CPUs", flush=True)
    results = tuner.fit()
    # the best of the trials that trained to the end (ASHA stops the others at an earlier, incomparable point)
    complete = [r for r in results if r.metrics and r.metrics.get("timesteps", 0) >= n and not r.error]
    pool = complete or [r for r in results if r.metrics and not r.error]
    if not pool:
        raise RuntimeError(f"no search trial reported a result; their logs: {out / LOG_DIR}")
    best = max(pool, key=lambda r: r.metrics.get("return", float("-inf")))
    values = {k: v for k, v in best.config.items() if k != "_sweep"}
    preset = spec.fixed.get("preset")
    snippet = {"best": {"default": {**{k: v for k, v in spec.fixed.items() if k != "preset"}, **values}}}
    header = (f"# best of {search['num_samples']} trials ({env}, seed {seed}{f', on preset {preset}' if preset else ''}): "
              f"final evaluation return {best.metrics.get('return'):.1f} at {best.metrics.get('timesteps')} steps.\n"
              f"# Paste under presets: in configs/{spec.algo}.yml"
              f"{f' (it holds only what differs from {preset}: merge it into a copy of that preset)' if preset else ''}\n")
    atomic_write(out / BEST_FILE, lambda f: f.write((header + yaml.safe_dump(snippet, sort_keys=False)).encode()))
    print(f"best configuration: {values} (return {best.metrics.get('return'):.1f}) -> {out / BEST_FILE}")
