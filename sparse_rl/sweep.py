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

import argparse
import dataclasses
import difflib
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sparse_rl.checkpoint import checkpoint_dirs
from sparse_rl.config import CONFIG_CLASSES, SPARSE_KEYS, ConfigError, available_presets, check_value, resolve_config
from sparse_rl.envs import EnvError, resolve_env_id
from sparse_rl.run_directory import SUMMARY_FILE, RunError, atomic_write, lock_run, read_evaluations
from sparse_rl.topology.methods import available_methods

EXIT_BAD_INPUT = 2
SPEC_FILE = "sweep.yml"
#: seconds a stopped trial's training gets to write its checkpoint before it is killed
STOP_GRACE_S = 60
BEST_FILE = "best.yml"
LOG_DIR = "logs"
SPEC_KEYS = ("algo", "envs", "seeds", "n_timesteps", "set", "variants", "grid", "search", "save_replay_buffer")
SEARCH_KEYS = ("space", "num_samples", "grace_period", "reduction_factor", "seed")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")


class SweepError(ValueError):
    """A sweep spec or command that cannot run; the message names the bad value."""


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run of a sweep."""

    name: str  # <grid values>-s<seed>, unique within its env
    env: str
    seed: int
    overrides: dict[str, Any]  # config keys of this trial (fixed ``set`` + its grid point)
    preset: str | None

    def run_dir(self, out: Path) -> Path:
        return out / self.env / self.name


@dataclasses.dataclass
class Spec:
    algo: str
    envs: list[str]
    seeds: list[int]
    n_timesteps: int | None
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    search: dict[str, Any] | None
    save_replay_buffer: bool
    raw: dict[str, Any]
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- spec
def _known_keys(algo: str) -> list[str]:
    return ["preset", *(f.name for f in dataclasses.fields(CONFIG_CLASSES[algo]))]


def _check_key(algo: str, key: str, where: str) -> None:
    if key.startswith("topology_kwargs."):
        return  # checked with its method when the trial's config is resolved
    known = _known_keys(algo)
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(known)}"
        raise SweepError(f"unknown {where} key {key!r}{hint}")


def _check_value(algo: str, key: str, value: Any, where: str) -> None:
    if key == "preset":
        presets = available_presets(algo)
        if value not in presets:
            close = difflib.get_close_matches(str(value), presets, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise SweepError(f"unknown {where} preset {value!r}; {hint}known: {', '.join(presets)}")
    elif key == "topology" and value not in available_methods():
        close = difflib.get_close_matches(str(value), available_methods(), n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise SweepError(f"unknown {where} topology {value!r}; {hint}known: {', '.join(available_methods())}")
    elif not key.startswith("topology_kwargs."):
        try:
            check_value(CONFIG_CLASSES[algo], key, value)
        except ConfigError as err:
            raise SweepError(f"{where} {key}: {err}") from None


def load_spec(path: Path) -> Spec:
    """Read and check a spec file; raises :class:`SweepError` naming what is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"spec {str(path)!r} does not exist") from None
    except yaml.YAMLError as err:
        raise SweepError(f"spec {str(path)!r} is not valid YAML: {err}") from None
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, name: str = "spec") -> Spec:
    if not isinstance(raw, dict):
        raise SweepError(f"{name} must be a mapping with keys {', '.join(SPEC_KEYS)}, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), SPEC_KEYS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(f"unknown spec key {unknown[0]!r}{hint} (allowed: {', '.join(SPEC_KEYS)})")
    algo = raw.get("algo")
    if algo not in CONFIG_CLASSES:
        raise SweepError(f"algo must be one of {', '.join(CONFIG_CLASSES)}, got {algo!r}")
    envs = raw.get("envs")
    if isinstance(envs, str):
        envs = [envs]
    if not isinstance(envs, list) or not envs:
        raise SweepError(f"envs must be a non-empty list of env ids, got {envs!r}")
    try:
        envs = [resolve_env_id(str(e)) for e in envs]
    except (EnvError, ConfigError) as err:
        raise SweepError(f"envs: {err}") from None
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                           for s in seeds):
        raise SweepError(f"seeds must be a non-empty list of non-negative ints, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds must not repeat, got {seeds!r}")
    n = raw.get("n_timesteps")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise SweepError(f"n_timesteps must be a positive int, got {n!r}")
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"set must be a mapping of config keys to values, got {fixed!r}")
    for key, value in fixed.items():
        _check_key(algo, key, "set")
        _check_value(algo, key, value, "set")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"grid must be a mapping of config keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        _check_key(algo, key, "grid")
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid {key} must be a non-empty list of values, got {values!r}")
        for value in values:
            _check_value(algo, key, value, "grid")
        if key in fixed:
            raise SweepError(f"{key!r} is both in set and in grid; keep one")
    search = raw.get("search")
    if search is not None:
        search = _parse_search(algo, search, grid, fixed)
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise SweepError(f"variants must map names to mappings of config keys, got {variants!r}")
    for vname, values in variants.items():
        if not re.fullmatch(r"[A-Za-z0-9.+_=-]+", str(vname)):
            raise SweepError(f"variant name {vname!r} must be letters, digits and . + _ = - only (it names run directories)")
        for key, value in values.items():
            _check_key(algo, key, f"variants.{vname}")
            _check_value(algo, key, value, f"variants.{vname}")
            if key in grid:
                raise SweepError(f"{key!r} is both in variants.{vname} and in grid; keep one")
    save_buffer = raw.get("save_replay_buffer", True)
    if not isinstance(save_buffer, bool):
        raise SweepError(f"save_replay_buffer must be true or false, got {save_buffer!r}")
    return Spec(algo, envs, list(seeds), n, dict(fixed), {k: list(v) for k, v in grid.items()}, search, save_buffer, raw,
                {str(k): dict(v) for k, v in variants.items()})


def _parse_search(algo: str, search: Any, grid: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(search, dict):
        raise SweepError(f"search must be a mapping with keys {', '.join(SEARCH_KEYS)}, got {search!r}")
    for key in search:
        if key not in SEARCH_KEYS:
            raise SweepError(f"unknown search key {key!r} (allowed: {', '.join(SEARCH_KEYS)})")
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        raise SweepError("search.space must map config keys to a range, e.g. {learning_rate: {loguniform: [1e-4, 1e-3]}}")
    for key, dist in space.items():
        _check_key(algo, key, "search.space")
        if key in grid or key in fixed:
            raise SweepError(f"{key!r} is searched and also fixed in set or grid; keep one")
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise SweepError(f"search.space.{key} must be one of {{{': ..., '.join(DISTRIBUTIONS)}: ...}}, got {dist!r}")
        kind, bounds = next(iter(dist.items()))
        if kind == "choice":
            if not isinstance(bounds, list) or not bounds:
                raise SweepError(f"search.space.{key}.choice must be a non-empty list, got {bounds!r}")
            for value in bounds:
                _check_value(algo, key, value, "search.space")
        else:
            ok = isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds)
            if not ok or not bounds[0] < bounds[1] or (kind == "loguniform" and bounds[0] <= 0):
                raise SweepError(f"search.space.{key}.{kind} must be [low, high] with low < high"
                                 f"{' and low > 0' if kind == 'loguniform' else ''}, got {bounds!r}")
    samples = search.get("num_samples", 10)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples <= 0:
        raise SweepError(f"search.num_samples must be a positive int, got {samples!r}")
    grace = search.get("grace_period")
    if grace is not None and (not isinstance(grace, int) or grace <= 0):
        raise SweepError(f"search.grace_period must be a positive int (env steps), got {grace!r}")
    factor = search.get("reduction_factor", 3)
    if not isinstance(factor, (int, float)) or factor <= 1:
        raise SweepError(f"search.reduction_factor must be > 1, got {factor!r}")
    return {"space": space, "num_samples": samples, "grace_period": grace, "reduction_factor": factor,
            "seed": search.get("seed", 0)}


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


# --------------------------------------------------------------------------------------------- trials
def _tune_report(metrics: dict[str, Any]) -> None:
    from ray import tune

    tune.report(metrics)


def _trial_metrics(run_dir: Path, timesteps: int, rate: float | None) -> dict[str, Any]:
    rows = read_evaluations(run_dir)
    last = rows[-1] if rows else None
    return {
        "timesteps": int(timesteps),
        "return": float(last["return_mean"]) if last else float("nan"),
        "steps_per_s": float(rate) if rate is not None else float("nan"),
    }


def grid_trainable(config: dict[str, Any]) -> None:
    """A grid trial: the point Tune's grid search hands over."""
    run_trial(config["trial"])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the training process gets SIGTERM when the trial's worker dies (a killed driver, a lost worker):
    it writes a checkpoint at the next step and exits, so ``--resume`` loses no step."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _wait_for_lock(run_dir: Path, timeout: float) -> None:
    """Wait until no process trains ``run_dir``: one stopped with its sweep may still be writing its last
    checkpoint. After ``timeout``, ``train --resume`` names the process that holds it."""
    deadline = time.time() + timeout
    while True:
        try:
            os.close(lock_run(run_dir))
            return
        except RunError:
            if time.time() >= deadline:
                return
            time.sleep(0.5)


def run_trial(config: dict[str, Any], poll_s: float = 2.0) -> None:
    """Train (or resume) one run directory in a ``sparse_rl.train`` process, reporting each evaluation to Tune.

    A process of its own, not a call inside the Ray worker: each trial gets its own log
    (``OUT/logs/<env>-<name>.log``), its own interpreter state, and a clean kill.
    """
    import subprocess

    out, run_dir = Path(config["out"]), Path(config["out"]) / config["env"] / config["name"]
    if not (out / SPEC_FILE).is_file():
        raise RuntimeError(
            f"{out} is not visible on node {socket.gethostname()}: a sweep on a cluster needs --out on storage that "
            "every node mounts at the same path (see docs/sweeps.md)"
        )
    if (run_dir / SUMMARY_FILE).is_file():
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        _tune_report(_trial_metrics(run_dir, summary["timesteps"], summary.get("steps_per_s")))
        return
    # started before: continue from its latest checkpoint (a run killed before its first one starts over)
    started = (run_dir / "config.yaml").is_file()
    if started:
        _wait_for_lock(run_dir, STOP_GRACE_S)
    argv = ["--resume", str(run_dir), "--no-progress"] if started else list(config["argv"])
    # Progress counts this process's steps only: from the checkpoint it resumes (0 without one), and not from
    # the evaluations a killed run left behind, which the new process rewinds to that checkpoint or clears.
    checkpoints = checkpoint_dirs(run_dir) if started else []
    first_step = checkpoints[-1][0] if checkpoints else 0
    log = out / LOG_DIR / f"{config['env']}-{config['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start, rows = time.time(), len(read_evaluations(run_dir)) if started else 0
    with open(log, "a") as f:
        f.write(f"$ python -m sparse_rl.train {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, "-m", "sparse_rl.train", *argv], stdout=f, stderr=subprocess.STDOUT,
                                # a session of its own: signals for the worker's process group stay there
                                env=env, preexec_fn=_die_with_parent, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(poll_s)
                found = read_evaluations(run_dir)  # a resumed run rewinds it: report on change, if any
                if len(found) != rows:
                    rows = len(found)
                    steps = int(float(found[-1]["timesteps"])) if found else 0
                    if steps > first_step:
                        rate = (steps - first_step) / max(time.time() - start, 1e-9)
                        _tune_report(_trial_metrics(run_dir, steps, rate))
        finally:
            if proc.poll() is None:  # stopped by Tune (an early stop, the driver's Ctrl-C): checkpoint, then exit
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-15:]
        raise RuntimeError(f"training exited with code {proc.returncode} (log: {log}):\n" + "\n".join(tail))
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    _tune_report(_trial_metrics(run_dir, summary["timesteps"], summary.get("steps_per_s")))


# ----------------------------------------------------------------------------------------------- ray
def check_address(address: str) -> None:
    """Fail fast, naming the address, when no Ray cluster answers there (``auto`` is Ray's own lookup)."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address must be HOST:PORT (a Ray head's GCS address), got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as err:
        raise SweepError(f"no Ray cluster answers at {address!r} ({err.strerror or err}); start one with "
                         f"`ray start --head --port {port}` or check the address") from None


def _progress_callback(total: int) -> Any:
    from ray import tune

    class Progress(tune.Callback):
        """One status line per result: trials done/running/pending, then the reporting trial's numbers."""

        def __init__(self) -> None:
            self.t0 = time.time()
            self.ended: set[str] = set()  # trials finished or failed (Tune flips their status after the callback)

        def _line(self, trials: list[Any], trial: Any, result: dict[str, Any] | None, what: str) -> None:
            done = len(self.ended)
            running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
            pending = max(total - done - running, 0)
            config = trial.config.get("trial", trial.config)
            name = config.get("name", f"search trial {trial.trial_id}")
            env = config.get("env", config.get("_sweep", {}).get("env", ""))
            extra = ""
            if result:
                ret = result.get("return", float("nan"))
                rate = result.get("steps_per_s", float("nan"))
                extra = f" {result.get('timesteps', 0)} steps"
                extra += f", {rate:.0f} steps/s" if rate == rate else ""
                extra += f", return {ret:.1f}" if ret == ret else ""
            minutes = (time.time() - self.t0) / 60
            print(f"[{minutes:5.1f} min] done {done}/{total}, running {running}, pending {pending} | "
                  f"{env}/{name} {what}{extra}", flush=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._line(trials, trial, result, "at")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended.add(trial.trial_id)
            self._line(trials, trial, trial.last_result, "finished:")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.ended.add(trial.trial_id)
            self._line(trials, trial, None, f"FAILED (its log: {LOG_DIR}/<env>-<name>.log under --out)")

    return Progress()


def _init_ray(address: str | None) -> tuple[int, int]:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Ray runs workers at niceness 15, so trials starved beside any other work on the machine (Pendulum,
    # 400 steps, two trainings running: 67 s of training in a trial against 2.7 s in a plain process);
    # the embedded cluster runs them as an ordinary process would. A cluster's nodes: see docs/sweeps.md.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # Ray SIGKILLs a worker's child processes when the worker exits (a stopped trial, a killed driver), which
    # loses a trial's steps since its last checkpoint; instead each training gets SIGTERM from its own
    # parent-death signal and checkpoints where it stops (``_die_with_parent``, ``train``'s SIGTERM handling)
    os.environ.setdefault("RAY_kill_child_processes_on_worker_exit", "0")
    if address:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, log_to_driver=False, include_dashboard=False)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return nodes, int(ray.cluster_resources().get("CPU", 1))


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


def run_grid(spec: Spec, out: Path, trials: list[Trial], max_concurrent: int | None, address: str | None) -> list[dict]:
    from ray import tune

    nodes, cpus = _init_ray(address)
    concurrent = max_concurrent or cpus
    points = [
        {"out": str(out), "env": t.env, "name": t.name, "argv": train_argv(spec, t, t.run_dir(out))} for t in trials
    ]
    print(f"sweep: {len(points)} trials, {concurrent} at a time on {nodes} node(s) with {cpus} CPUs, run directories "
          f"under {out}", flush=True)
    tuner = tune.Tuner(
        tune.with_resources(grid_trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search(points)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(storage_path=str(out / ".tune"), name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                  verbose=0, callbacks=[_progress_callback(len(points))],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    return _result_rows(results)


def _trial_name(trial: Any) -> str:
    config = trial.config.get("trial", trial.config)
    return f"{config.get('env', 'env')}-{config.get('name', trial.trial_id)}"[:120]


def _result_rows(results: Any) -> list[dict]:
    rows = []
    for result in results:
        config = (result.config or {}).get("trial", result.config or {})
        metrics = result.metrics or {}
        rows.append({"env": config.get("env"), "name": config.get("name"), "return": metrics.get("return"),
                     "timesteps": metrics.get("timesteps"), "error": str(result.error) if result.error else None})
    return rows


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


# ------------------------------------------------------------------------------------------------ cli
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.sweep", description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="sweep spec (YAML)")
    p.add_argument("--out", type=Path, required=True, help="directory of the sweep's run directories")
    p.add_argument("--address", default=None, help="Ray cluster HOST:PORT (default: $RAY_ADDRESS, else this machine)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: the cluster's CPUs)")
    p.add_argument("--resume", action="store_true", help="continue a stopped sweep: finished trials kept")
    p.add_argument("--only", metavar="GLOB", nargs="+",
                   help="run the trials whose ENV/NAME matches one of the globs, e.g. '*/dense-*' '*/rigl-s0'")
    p.add_argument("--dry-run", action="store_true", help="list the trials and their train commands, run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if args.max_concurrent is not None and args.max_concurrent <= 0:
            raise SweepError(f"--max-concurrent must be positive, got {args.max_concurrent}")
        spec = load_spec(args.spec)
        trials = grid_trials(spec) if spec.search is None else []
        if args.only is not None:
            if spec.search is not None:
                raise SweepError("--only selects trials of a grid; this spec is a search")
            names = [f"{t.env}/{t.name}" for t in trials]
            for glob in args.only:
                if not fnmatch.filter(names, glob):
                    more = ", ..." if len(names) > 6 else ""
                    raise SweepError(f"--only {glob!r} matches no trial (trials: {', '.join(names[:6])}{more})")
            trials = [t for t, name in zip(trials, names) if any(fnmatch.fnmatch(name, g) for g in args.only)]
        if spec.search is None:
            check_trials(spec, trials, out, args.resume)
        else:
            check_trials(spec, [_search_base(spec)], out / ".probe", False)
        if args.dry_run:
            for t in trials:
                print(f"{t.env}/{t.name}: python -m sparse_rl.train {shlex.join(train_argv(spec, t, t.run_dir(out)))}")
            return 0
        write_spec = prepare_out(spec, out, args.resume)
        if address:
            check_address(address)
        try:
            from ray import tune  # noqa: F401
        except ImportError:
            raise SweepError('sweeps need Ray: pip install -e ".[sweep]"') from None
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.mkdir(parents=True, exist_ok=True)
    if write_spec:  # a new sweep, or a grid grown on --resume
        atomic_write(out / SPEC_FILE, lambda f: f.write(yaml.safe_dump(spec.raw, sort_keys=False).encode()))
    start = time.time()
    try:
        if spec.search is None:
            finished_before = sum((t.run_dir(out) / SUMMARY_FILE).is_file() for t in trials)
            rows = run_grid(spec, out, trials, args.max_concurrent, address)
            failed = [r for r in rows if r["error"]]
            done = sum((t.run_dir(out) / SUMMARY_FILE).is_file() for t in trials)
            resume = f"python -m sparse_rl.sweep {args.spec} --out {args.out} --resume"
            if done < len(trials) and not failed:  # Tune takes Ctrl-C itself: it stops the trials and returns
                print(f"\ninterrupted after {(time.time() - start) / 60:.1f} min: {done}/{len(trials)} trials done; "
                      f"continue with: {resume}", file=sys.stderr)
                return 130
            print(f"sweep finished in {(time.time() - start) / 60:.1f} min: {done}/{len(trials)} trials done "
                  f"({finished_before} were already), {len(failed)} failed; report: python -m sparse_rl.report {out}")
            for r in failed:
                print(f"  failed: {r['env']}/{r['name']}: {r['error'].strip().splitlines()[-1]}")
            if failed:
                print(f"  their logs: {out / LOG_DIR}; after a fix, rerun them with: {resume}")
            return 1 if failed else 0
        run_search(spec, out, args.max_concurrent, address, args.resume)
        return 0
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: python -m sparse_rl.sweep {args.spec} --out {args.out} --resume",
              file=sys.stderr)
        return 130
    finally:
        try:
            import ray

            ray.shutdown()
        except Exception:  # pragma: no cover - shutting down what may not have started
            pass


if __name__ == "__main__":
    sys.exit(main())
