"""Running a grid's trials on Ray Tune: one ``sparse_rl.train`` process per trial, progress, the cluster.

Embedded Ray on this machine by default (one CPU and one torch thread per trial); ``--address`` joins a
cluster. A trial is a process of its own, so it gets its own log, interpreter and clean kill; when its
worker dies it checkpoints and exits, so ``--resume`` loses no step.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

# A trial's Ray worker imports this module to run ``grid_trainable``: what it needs is light (no torch, SB3 or
# gymnasium, which its training process imports anyway), so each trial starts ~2 s sooner and holds less memory.
from sparse_rl.run_directory import SUMMARY_FILE, RunError, checkpoint_dirs, lock_run, read_evaluations
from sparse_rl.sweep.spec import LOG_DIR, SPEC_FILE, STOP_GRACE_S, SweepError, trial_label

if TYPE_CHECKING:
    from sparse_rl.sweep.spec import Spec, Trial


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
    log = out / LOG_DIR / f"{trial_label(config['env'], config['name'])}.log"
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
                try:  # wakes when the training ends, not up to poll_s later
                    proc.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    pass
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


def _progress_callback(total: int, finished: int = 0) -> Any:
    """``finished``: trials of the sweep that finished before this driver started; they count as done."""
    from ray import tune

    class Progress(tune.Callback):
        """One status line per result: trials done/running/pending, then the reporting trial's numbers."""

        def __init__(self) -> None:
            self.t0 = time.time()
            self.ended: set[str] = set()  # trials finished or failed (Tune flips their status after the callback)

        def _line(self, trials: list[Any], trial: Any, result: dict[str, Any] | None, what: str) -> None:
            done = finished + len(self.ended)
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
            config = trial.config.get("trial", trial.config)
            log = f"{trial_label(config['env'], config['name'])}.log" if "name" in config else "<env>-<name>.log"
            self._line(trials, trial, None, f"FAILED (its log: {LOG_DIR}/{log} under --out)")

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
    if address and _on_loopback(address):  # a cluster on this machine's loopback: the driver joins it there
        _init_loopback_ray(address=address, log_to_driver=False, include_dashboard=False)
    elif address:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    else:
        _init_loopback_ray(num_cpus=os.cpu_count() or 1, log_to_driver=False, include_dashboard=False)
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return nodes, int(ray.cluster_resources().get("CPU", 1))


#: the address the embedded Ray of a local sweep listens on: this machine only
LOOPBACK = "127.0.0.1"


def _on_loopback(address: str) -> bool:
    """Whether a cluster's ``HOST:PORT`` names this machine's loopback (127.0.0.0/8, localhost, ::1)."""
    host = address.rpartition(":")[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _init_loopback_ray(**kwargs: Any) -> None:
    """``ray.init`` of a Ray that lives on this machine only: its GCS, raylet, workers and agents listen on
    127.0.0.1, not on every interface.

    Ray binds its servers to the node's IP, and ``ray.init(_node_ip_address="127.0.0.1")`` alone does not do
    it: Ray turns a loopback node address into the machine's external one (``resolve_ip_for_localhost``),
    so that other nodes could reach it. A local sweep has no other nodes, so that translation is switched
    off for the call. A cluster started that way (on a loopback ``--address``) is joined the same way; any
    other ``--address`` (a real cluster) never comes here.
    """
    import ray
    from ray._private import services

    resolve = getattr(services, "resolve_ip_for_localhost", None)
    if resolve is not None:
        services.resolve_ip_for_localhost = lambda host: host
    try:
        ray.init(_node_ip_address=LOOPBACK, **kwargs)
    finally:
        if resolve is not None:
            services.resolve_ip_for_localhost = resolve


def run_grid(spec: Spec, out: Path, trials: list[Trial], max_concurrent: int | None, address: str | None) -> list[dict]:
    """Run the trials that have not finished; those that have are kept as they are and not handed to Tune
    (a resumed campaign of 90 trials spent ~2 minutes passing its finished ones through Tune one by one), and
    with none left Ray is not started at all."""
    todo = [t for t in trials if not (t.run_dir(out) / SUMMARY_FILE).is_file()]
    finished = len(trials) - len(todo)
    kept = f", {finished} finished before (kept)" if finished else ""
    if not todo:
        print(f"sweep: {len(trials)} trials{kept}, none to run", flush=True)
        return []
    from ray import tune

    from sparse_rl.sweep.plan import train_argv

    nodes, cpus = _init_ray(address)
    concurrent = max_concurrent or cpus
    points = [
        {"out": str(out), "env": t.env, "name": t.name, "argv": train_argv(spec, t, t.run_dir(out))} for t in todo
    ]
    print(f"sweep: {len(trials)} trials{kept}, {len(points)} to run, {concurrent} at a time on {nodes} node(s) with "
          f"{cpus} CPUs, run directories under {out}", flush=True)
    tuner = tune.Tuner(
        tune.with_resources(grid_trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search(points)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, reuse_actors=False,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(storage_path=str(out / ".tune"), name=f"grid-{time.strftime('%Y%m%d-%H%M%S')}",
                                  verbose=0, callbacks=[_progress_callback(len(trials), finished)],
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    return _result_rows(results)


def _trial_name(trial: Any) -> str:
    config = trial.config.get("trial", trial.config)
    return trial_label(config.get("env", "env"), config.get("name", trial.trial_id))[:120]


def _result_rows(results: Any) -> list[dict]:
    rows = []
    for result in results:
        config = (result.config or {}).get("trial", result.config or {})
        metrics = result.metrics or {}
        rows.append({"env": config.get("env"), "name": config.get("name"), "return": metrics.get("return"),
                     "timesteps": metrics.get("timesteps"), "error": str(result.error) if result.error else None})
    return rows
