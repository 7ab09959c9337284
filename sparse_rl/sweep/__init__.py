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

from sparse_rl.sweep.cli import build_parser, main
from sparse_rl.sweep.execution import check_address, grid_trainable, run_grid, run_trial
from sparse_rl.sweep.plan import check_trials, grid_trials, prepare_out, train_argv
from sparse_rl.sweep.search import run_search, search_trainable
from sparse_rl.sweep.spec import BEST_FILE, LOG_DIR, SPEC_FILE, Spec, SweepError, Trial, load_spec, parse_spec

__all__ = [
    "BEST_FILE",
    "LOG_DIR",
    "SPEC_FILE",
    "Spec",
    "SweepError",
    "Trial",
    "build_parser",
    "check_address",
    "check_trials",
    "grid_trainable",
    "grid_trials",
    "load_spec",
    "main",
    "parse_spec",
    "prepare_out",
    "run_grid",
    "run_search",
    "run_trial",
    "search_trainable",
    "train_argv",
]
