"""``python -m sparse_rl.sweep SPEC --out DIR``: a grid (or a search) of training runs on Ray Tune.

    python -m sparse_rl.sweep benchmarks/sweeps/learning.yml --out runs/learning             # all local cores
    python -m sparse_rl.sweep benchmarks/sweeps/learning.yml --out runs/learning --address HOST:PORT
    python -m sparse_rl.sweep benchmarks/sweeps/learning.yml --out runs/learning --resume    # after a stop

A spec is a YAML mapping::

    algo: sac
    envs: [HalfCheetah-v5]
    seeds: [0, 1]
    n_timesteps: 100000
    set: {eval_episodes: 5, sparsity: 0.9}     # fixed overrides, any config key
    grid:                                      # lists over any config key (preset, topology, sparsity, ...)
      preset: [dense, rigl, gmp]

Every trial is an ordinary ``sparse_rl.train`` run directory, ``OUT/<env>/<grid values>-s<seed>`` (e.g.
``runs/learning/HalfCheetah-v5/rigl-s0``), so ``evaluate``, ``plot``, ``export`` and ``report`` work on it.
A trial whose config trains the dense baseline (``preset: dense``) ignores the sparse keys (sparsity,
topology, ...): it is one trial per env and seed, named from its other grid values. ``variants`` (named
sets of overrides, e.g. an ablation's ``-nstep``) are a first grid dimension whose names lead the trial names.

Instead of ``grid`` a spec may declare ``search`` (ranges, a trial budget): Optuna's TPE sampler through
Ray Tune, with ASHA early stopping on the evaluation returns; the best configuration is written to
``OUT/best.yml`` as a preset snippet. See ``docs/sweeps.md``.

The engine is Ray Tune (``pip install -e ".[sweep]"``): embedded on this machine by default, one CPU and
one torch thread per trial, as many at once as there are cores (``--max-concurrent``); a cluster with
``--address`` (or ``RAY_ADDRESS``) runs the same spec unchanged, provided ``--out`` is on storage every
node mounts at the same path. The run directories are the record: ``--resume`` keeps every finished
trial and continues every started one from its latest checkpoint.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public names are imported on first use: a trial's Ray worker imports ``sparse_rl.sweep.execution``, and
# importing the package must not pull in the spec checks' torch, SB3 and gymnasium for it.
_LAZY = {
    "build_parser": "cli", "main": "cli",
    "check_address": "execution", "grid_trainable": "execution", "run_grid": "execution", "run_trial": "execution",
    "check_trials": "plan", "grid_trials": "plan", "prepare_out": "plan", "train_argv": "plan",
    "run_search": "search", "search_trainable": "search",
    "BEST_FILE": "spec", "LOG_DIR": "spec", "SPEC_FILE": "spec", "Spec": "spec", "SweepError": "spec", "Trial": "spec",
    "load_spec": "spec", "parse_spec": "spec",
}
_SUBMODULES = ("cli", "execution", "plan", "search", "spec")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"sparse_rl.sweep.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"sparse_rl.sweep.{name}")
    raise AttributeError(f"module 'sparse_rl.sweep' has no attribute {name!r}")


__all__ = sorted(_LAZY)
