"""``python -m sparse_rl.train``: train a sparse (or dense) SAC/TD3 agent into a run directory.

    python -m sparse_rl.train --algo sac --env HalfCheetah
    python -m sparse_rl.train --algo td3 --env Hopper-v5 --sparsity 0.95 --topology set --seed 3 \\
        --n-timesteps 200000 --run-dir runs/hopper-set --set update_interval=2000 --set learning_rate=1e-3
    python -m sparse_rl.train --resume runs/hopper-set

A run directory holds ``config.yaml`` (the resolved config), ``tb/`` (TensorBoard), ``checkpoints/``,
``evaluations.csv``, ``curve.png``, ``model.zip`` and ``summary.json``.

Everything given is checked before anything is written (config values, env id and spaces, env kwargs,
device, run directory): bad input prints one ``error:`` line and exits 2, leaving nothing on disk. A
failure during training (a bug, a NaN loss) keeps its traceback and exits 1; a NaN loss is reported
with its step and network, and the last good checkpoint is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger

from sparse_rl.callbacks import CheckpointCallback, DivergenceGuard, ProgressLine
from sparse_rl.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    Checkpoint,
    CheckpointError,
    kill_point,
    latest_checkpoint,
    restore_checkpoint_state,
    save_checkpoint,
)
from sparse_rl.cli_options import add_device, add_progress, add_threads, show_progress
from sparse_rl.config import (
    CONFIG_CLASSES,
    SPARSE_KEYS,
    ConfigError,
    TrainConfig,
    available_presets,
    config_to_dict,
    parse_set,
    resolve_config,
)
from sparse_rl.envs import EnvError, make_env, resolve_env_id
from sparse_rl.eval_callback import SparseEvalCallback
from sparse_rl.models import ALGOS, bind, build_model, check_device, check_env_for, run_label, summary
from sparse_rl.numerics import NumericsError, check_pinned, code_version, pinned_environment
from sparse_rl.plot import plot_runs
from sparse_rl.run_directory import (
    EVALUATIONS_FILE,
    LOCK_FILE,
    SUMMARY_FILE,
    RunError,
    atomic_write,
    lock_run,
    read_run,
    rewind_evaluations,
    write_json,
    write_yaml,
)
from sparse_rl.topology import available_methods, method_options

EXIT_BAD_INPUT = 2




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.train", description="Train a sparse SAC/TD3 agent.")
    p.add_argument("--algo", choices=None, help=f"one of {', '.join(CONFIG_CLASSES)}")
    p.add_argument("--env", help="env id or short name (HalfCheetah, Hopper, ..., Pendulum)")
    p.add_argument("--preset", help="preset in configs/<algo>.yml (default: sparse_rl)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--n-timesteps", type=int, help="total env steps (overrides the preset; with --resume: extend to it)")
    p.add_argument("--sparsity", type=float, help="actor and critic sparsity in [0, 1)")
    p.add_argument("--topology", help="static, set, rigl, ...")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    p.add_argument("--env-kwargs", dest="env_kwargs", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--eval-freq", type=int, help="env steps between evaluations (0: none)")
    p.add_argument("--eval-episodes", type=int)
    p.add_argument("--run-dir", type=Path, help="default: runs/<algo>-<env>-<label>-s<seed>")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --run-dir")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument("--save-replay-buffer", action="store_true", help="checkpoint the replay buffer too")
    add_threads(p)
    add_device(p)
    add_progress(p)
    p.add_argument("--list-keys", action="store_true", help="print the config keys of --algo and exit")
    return p


#: flags that define a run; a resumed run takes them from its config.yaml
_RUN_FLAGS = ("algo", "env", "preset", "seed", "sparsity", "topology", "sets", "env_kwargs", "eval_freq", "eval_episodes",
              "run_dir", "overwrite")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("n_timesteps", "n_timesteps"),
        ("sparsity", "sparsity"),
        ("topology", "topology"),
        ("eval_freq", "eval_freq"),
        ("eval_episodes", "eval_episodes"),
    ):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.env_kwargs:
        overrides["env_kwargs"] = dict(parse_set(item, "--env-kwargs") for item in args.env_kwargs)
    for item in args.sets:
        key, value = parse_set(item)
        overrides[key] = value
    return overrides


@dataclass
class Plan:
    """What :func:`train` will do, decided and checked before anything is written."""

    run_dir: Path
    info: dict[str, Any]  # config.yaml's content, with ``config`` a TrainConfig
    resume: bool = False
    checkpoint: Checkpoint | None = None  # the checkpoint a resumed run continues from (None: from step 0)
    extend_to: int | None = None  # --resume --n-timesteps N: the new total
    finished: bool = False  # a finished run resumed with no new budget: nothing to do
    lock: int | None = None  # file descriptor holding the run directory's lock

    @property
    def config(self) -> TrainConfig:
        return self.info["config"]


def _check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse an existing run (without --overwrite) or a place we could not write to, without writing."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"run directory {str(run_dir)!r} is a file")
    if (run_dir / "config.yaml").exists() and not overwrite:
        raise RunError(f"run directory {str(run_dir)!r} already holds a run; use --resume or another --run-dir")
    if run_dir.is_dir() and not (run_dir / "config.yaml").exists():
        # what a run killed before its config was written leaves: its lock and temporary files
        foreign = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE and not p.name.endswith(".tmp"))
        if foreign:
            listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise RunError(f"run directory {str(run_dir)!r} is not empty and holds no run ({listed}); nothing in it is "
                           "replaced, not even with --overwrite: choose a new or empty directory")
    # try it (permission bits do not tell for root or special filesystems), then remove what was made
    missing = []
    parent = run_dir
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
    except OSError as err:
        raise RunError(f"run directory {str(run_dir)!r} is not writable: {err.strerror}") from None
    finally:
        probe.unlink(missing_ok=True)
        for made in missing:
            try:
                made.rmdir()
            except OSError:  # never made (mkdir failed below it), or another run has put its directory inside
                continue     # meanwhile (a sweep's next trial): keep it; the parents above are still tried


def _plan_new_run(args: argparse.Namespace) -> Plan:
    if not args.algo:
        raise ConfigError("--algo is required (sac or td3) unless --resume is given")
    if args.algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algo {args.algo!r}; known: {', '.join(CONFIG_CLASSES)}")
    if not args.env:
        raise ConfigError("--env is required unless --resume is given")
    seed = 0 if args.seed is None else args.seed
    if not 0 <= seed < 2**32:
        raise ConfigError(f"--seed must be in [0, 2**32), got {seed}")
    preset = args.preset or "sparse_rl"
    env_id = resolve_env_id(args.env)
    overrides = _overrides(args)
    config = resolve_config(args.algo, env_id, preset, overrides)
    if config.dense and (ignored := [key for key in overrides if key in SPARSE_KEYS]):
        raise ConfigError(
            f"{', '.join(ignored)} would be ignored: this config trains SB3's dense MlpPolicy (dense=True, e.g. "
            "--preset dense); drop those settings or choose a sparse preset"
        )
    check_env_for(args.algo, env_id, config.env_kwargs)
    label = run_label(args.algo, config)
    run_dir = args.run_dir or Path("runs") / f"{args.algo}-{env_id}-{label}-s{seed}"
    _check_run_dir(run_dir, args.overwrite)
    info = {
        "algo": args.algo,
        "env": env_id,
        "seed": seed,
        "preset": preset,
        "label": label,
        "save_replay_buffer": bool(args.save_replay_buffer),
        "code": code_version(),  # what trained it: the commit, when the package is a git checkout
        "config": config,
    }
    return Plan(run_dir, info)


def _plan_resume(args: argparse.Namespace) -> Plan:
    names = {"sets": "set", "env_kwargs": "env-kwargs"}
    given = [f"--{names.get(f, f.replace('_', '-'))}" for f in _RUN_FLAGS if getattr(args, f) not in (None, False, [])]
    if given:
        raise ConfigError(
            f"--resume takes the run's settings from its config.yaml; {', '.join(given)} cannot be combined with it "
            "(allowed: --n-timesteps to extend the run, --save-replay-buffer, --threads, --device, --progress)"
        )
    run_dir = args.resume
    info = read_run(run_dir)
    lock = lock_run(run_dir)  # held until training ends (or this process does)
    try:
        return _plan_resume_locked(args, run_dir, info, lock)
    except BaseException:
        os.close(lock)
        raise


def _plan_resume_locked(args: argparse.Namespace, run_dir: Path, info: dict[str, Any], lock: int) -> Plan:
    checkpoint = latest_checkpoint(run_dir)
    done = checkpoint.timesteps if checkpoint else 0
    config: TrainConfig = info["config"]
    plan = Plan(run_dir, info, resume=True, checkpoint=checkpoint, lock=lock)
    if args.n_timesteps is not None:
        if args.n_timesteps < done:
            raise ConfigError(
                f"--n-timesteps {args.n_timesteps} is below the {done} steps {str(run_dir)!r} has done; "
                f"give a total of at least {done}"
            )
        if args.n_timesteps != config.n_timesteps:
            plan.extend_to = args.n_timesteps
            info["config"] = dataclasses.replace(config, n_timesteps=args.n_timesteps)
    target = plan.config.n_timesteps
    plan.finished = done >= target and all((run_dir / name).is_file() for name in (MODEL_FILE, SUMMARY_FILE))
    if not plan.finished:
        check_env_for(info["algo"], info["env"], plan.config.env_kwargs)
    return plan


def plan_run(args: argparse.Namespace) -> Plan:
    """Check everything ``args`` asks for and decide what to do, writing nothing.

    :raises ConfigError, RunError, EnvError, CheckpointError: bad input, with a message naming the value.
    """
    if args.threads <= 0:
        raise ConfigError(f"--threads must be positive, got {args.threads}")
    check_device(args.device)
    return _plan_resume(args) if args.resume is not None else _plan_new_run(args)


def _write_curve(run_dir: Path, label: str) -> Path | None:
    """``curve.png``: the run's learning curve (evaluation return against env steps)."""
    if not (run_dir / EVALUATIONS_FILE).is_file():
        return None
    path = run_dir / "curve.png"
    plot_runs([run_dir], path, title=f"{run_dir.name}: evaluation return", labels=[label])
    return path


def train(args: argparse.Namespace, extra_callbacks: list[BaseCallback] | None = None, plan: Plan | None = None) -> Path:
    """Run (or resume) training; returns the run directory.

    Bad input raises (``ConfigError``, ``RunError``, ``EnvError``, ``CheckpointError``) before anything is
    written; an error during training propagates as it is.
    """
    plan = plan or plan_run(args)
    try:
        check_pinned(plan.config.cpu_kernels)
        return _train(args, plan, extra_callbacks)
    finally:
        if plan.lock is not None:
            os.close(plan.lock)
            plan.lock = None


def _train(args: argparse.Namespace, plan: Plan, extra_callbacks: list[BaseCallback] | None) -> Path:
    run_dir, info, config = plan.run_dir, plan.info, plan.config
    if plan.finished:
        return run_dir
    torch.set_num_threads(args.threads)
    algo, env_id, seed = info["algo"], info["env"], int(info["seed"])
    env = make_env(env_id, n_envs=config.n_envs, seed=seed, env_kwargs=config.env_kwargs)
    eval_env = make_env(env_id, n_envs=1, seed=seed + 10_000, env_kwargs=config.env_kwargs)
    tb = str(run_dir / "tb")
    checkpoint = plan.checkpoint
    if plan.resume:
        if plan.extend_to is not None:
            write_yaml(run_dir / "config.yaml", {**info, "config": config_to_dict(config)})
        latest_checkpoint(run_dir, clean=True)  # clear writes a kill interrupted
        if checkpoint is None:
            print(f"resuming {run_dir}: no checkpoint yet, starting from step 0", file=sys.stderr)
            model = build_model(algo, config, env, seed, device=args.device, tensorboard_log=tb)
        else:
            print(f"resuming {run_dir} from {checkpoint.describe()}", file=sys.stderr)
            model = bind(ALGOS[algo][0].load(checkpoint.model_path, env=env, device=args.device, force_reset=False))
            model.tensorboard_log = tb
            restore_checkpoint_state(model, checkpoint)
            if not checkpoint.has_replay_buffer and model.num_timesteps < config.n_timesteps:
                print(
                    f"warning: {checkpoint.path} holds no replay buffer, so training continues from an empty one "
                    "(a different run from an uninterrupted one); start runs with --save-replay-buffer to resume "
                    "exactly",
                    file=sys.stderr,
                )
    else:
        model = build_model(algo, config, env, seed, device=args.device, tensorboard_log=tb)
        if (run_dir / "config.yaml").exists():  # --overwrite, checked in plan_run
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        plan.lock = lock_run(run_dir)
        write_yaml(run_dir / "config.yaml", {**info, "config": config_to_dict(config)})
        kill_point("run:config")
    remaining = config.n_timesteps - model.num_timesteps
    save_buffer = bool(info.get("save_replay_buffer")) or bool(args.save_replay_buffer)
    start = time.time()
    evaluator = None
    callbacks: list[BaseCallback] = [DivergenceGuard(run_dir)]  # first: before a checkpoint is written
    if config.eval_freq > 0:
        eval_csv = run_dir / EVALUATIONS_FILE
        # a resumed run repeats the evaluations made after its checkpoint: drop the old ones, continue the clock
        clock_before, last_row = rewind_evaluations(eval_csv, model.num_timesteps) if plan.resume else (0.0, None)
        evaluator = SparseEvalCallback(eval_env, config.eval_freq, config.eval_episodes, eval_csv, start - clock_before)
        evaluator.last_row = last_row
        callbacks.append(evaluator)
    checkpointer = CheckpointCallback(run_dir, config.checkpoint_freq, save_buffer) if config.checkpoint_freq > 0 else None
    if checkpointer is not None:
        callbacks.append(checkpointer)
    show = show_progress(args)
    if show:
        callbacks.append(ProgressLine(config.n_timesteps, evaluator))
    callbacks += extra_callbacks or []
    steps_before = model.num_timesteps
    if remaining > 0:
        with _stop_gracefully(checkpointer):
            model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False, tb_log_name="run")
        if checkpointer is not None and checkpointer.stopped is not None:
            raise TrainingStopped(*checkpointer.stopped)
    else:
        model.set_logger(Logger(folder=None, output_formats=[]))  # a final evaluation only: log nowhere
    wall = time.time() - start
    final = evaluator.last_row if evaluator else None
    if evaluator is not None and (final is None or final["timesteps"] != model.num_timesteps):
        evaluator.init_callback(model)
        final = evaluator.run_evaluation()
    save_checkpoint(model, run_dir, save_buffer)
    kill_point("run:final-checkpoint")
    atomic_write(run_dir / MODEL_FILE, model.save)
    _write_curve(run_dir, info.get("label", algo))
    write_json(run_dir / SUMMARY_FILE, summary(model, final, wall, model.num_timesteps - steps_before))
    env.close()
    eval_env.close()
    return run_dir


class TrainingStopped(Exception):
    """Training stopped on SIGTERM or a first Ctrl-C, after writing a checkpoint where it stopped."""

    def __init__(self, signum: int, checkpoint: Checkpoint):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {checkpoint.timesteps}")
        self.signum, self.checkpoint = signum, checkpoint


@contextlib.contextmanager
def _stop_gracefully(checkpointer: CheckpointCallback | None) -> Iterator[None]:
    """While training: SIGTERM (a scheduler's preemption, ``kill``) and a first Ctrl-C write a checkpoint at the
    next rollout start and stop there, losing no step; a second Ctrl-C stops at once (the last periodic
    checkpoint stays). Without checkpoints, or off the main thread, signals keep their usual effect."""
    if checkpointer is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and checkpointer.stop_asked:
            raise KeyboardInterrupt
        checkpointer.stop_at_next_checkpoint(signum)
        if signum == signal.SIGINT:
            print("\nstopping: writing a checkpoint at the next step (Ctrl-C again to stop at once)", file=sys.stderr)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def print_summary(run_dir: Path) -> None:
    """The end-of-run lines: return, densities, files."""
    final = json.loads((run_dir / SUMMARY_FILE).read_text())
    if final["final_eval"]:
        e = final["final_eval"]
        print(
            f"  return {e['return_mean']:.1f} ± {e['return_std']:.1f} over {e['episodes']} episodes"
            f" at {final['timesteps']} steps"
        )
    for net, r in final["sparsity"].items():
        print(
            f"  {net:<6} density {r['density']:.4f}  ITOP {r['itop_rate']:.4f}  FLOPs/forward {r['flops']} "
            f"(dense {r['dense_flops']})  last drop/grow {r.get('last_dropped', 0)}/{r.get('last_grown', 0)}"
        )
    if (run_dir / "curve.png").is_file():
        print(f"  learning curve: {run_dir / 'curve.png'}")
    print(f"  files: config.yaml, model.zip, evaluations.csv, summary.json, tb/, {CHECKPOINT_DIR}/ in {run_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan: Plan | None = None
    try:
        if args.list_keys:
            cls = CONFIG_CLASSES.get(args.algo or "")
            if cls is None:
                raise ConfigError(f"--list-keys needs --algo ({', '.join(CONFIG_CLASSES)})")
            for f in dataclasses.fields(cls):
                print(f"{f.name} = {getattr(cls(), f.name)!r}")
            print(f"presets: {', '.join(available_presets(args.algo))}")
            print("topology methods and their topology_kwargs (defaults):")
            for name in available_methods():
                options = ", ".join(f"{k}={v!r}" for k, v in method_options(name).items())
                print(f"  {name}: {options}")
            return 0
        plan = plan_run(args)
        pinned = pinned_environment(plan.config.cpu_kernels)
        if pinned is not None and argv is not None:
            check_pinned(plan.config.cpu_kernels)  # in-process: MKL is loaded, too late to pin it here
    except (ConfigError, RunError, EnvError, CheckpointError, NumericsError) as err:
        if plan is not None and plan.lock is not None:
            os.close(plan.lock)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if pinned is not None:  # MKL reads its code path once, as torch loads: start again with it in the environment
        if plan.lock is not None:
            os.close(plan.lock)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "sparse_rl.train", *sys.argv[1:]], pinned)
    # from here on, an exception is a failure, not bad input: it keeps its traceback (exit 1)
    try:
        run_dir = train(args, plan=plan)
    except TrainingStopped as stop:
        print(f"{stop}, checkpoint written: {stop.checkpoint.path}; continue with: python -m sparse_rl.train --resume "
              f"{plan.run_dir}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue from the last checkpoint with: python -m sparse_rl.train --resume {plan.run_dir}",
              file=sys.stderr)
        return 130
    if plan.finished:
        print(f"run already finished ({plan.config.n_timesteps} steps; extend it with --n-timesteps): {run_dir}")
    else:
        print(f"run finished: {run_dir}")
    print_summary(run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
