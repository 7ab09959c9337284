"""``python -m sparse_rl.train``: train a sparse (or dense) SB3 agent into a run directory.

Algorithms: SAC, TD3, DDPG, TQC, CrossQ (sb3-contrib), PPO, A2C, DQN (MinAtar's image observations too).

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
from functools import partial
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecNormalize, sync_envs_normalization

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
    ConfigError,
    available_presets,
    config_to_dict,
    wrapper_options,
)
from sparse_rl.envs import EnvError, make_env
from sparse_rl.envs.normalize import normalize_env
from sparse_rl.envs.wrappers import sync_permutation
from sparse_rl.eval_callback import SparseEvalCallback
from sparse_rl.features import FEATURES_FILE, evaluation_fields, rewind_features
from sparse_rl.models import algo_classes, bind, build_model, summary
from sparse_rl.numerics import NumericsError, check_pinned, pinned_environment
from sparse_rl.plot import plot_runs
from sparse_rl.run_directory import (
    EVALUATIONS_FILE,
    SUMMARY_FILE,
    RunError,
    atomic_write,
    lock_run,
    rewind_evaluations,
    write_json,
    write_yaml,
)
from sparse_rl.run_plan import Plan, plan_run
from sparse_rl.topology import available_methods, method_options

EXIT_BAD_INPUT = 2




def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.train",
                                description="Train a sparse SB3 agent (sac, td3, ddpg, tqc, crossq, ppo, a2c, dqn).")
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
    wrappers = wrapper_options(config)
    env = make_env(env_id, n_envs=config.n_envs, seed=seed, env_kwargs=config.env_kwargs, wrappers=wrappers)
    eval_env = make_env(env_id, n_envs=1, seed=seed + 10_000, env_kwargs=config.env_kwargs, wrappers=wrappers)
    if config.normalize:  # VecNormalize: the evaluation env takes the training env's statistics before each evaluation
        env = normalize_env(env, config.gamma, config.norm_reward)
        eval_env = normalize_env(eval_env, config.gamma, training=False)
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
            model = bind(algo_classes(algo)[0].load(checkpoint.model_path, env=env, device=args.device, force_reset=False))
            model.tensorboard_log = tb
            if not restore_checkpoint_state(model, checkpoint, eval_env if config.eval_freq > 0 else None):
                print(f"warning: {checkpoint.path} predates evaluation-env state, so the evaluations from step "
                      f"{checkpoint.timesteps} on start from a fresh evaluation env: the policy trains as in an "
                      "uninterrupted run, its evaluation episodes start elsewhere", file=sys.stderr)
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
        if plan.resume:
            rewind_features(run_dir / FEATURES_FILE, model.num_timesteps)
        evaluator = SparseEvalCallback(eval_env, config.eval_freq, config.eval_episodes, eval_csv, start - clock_before)
        if config.permute_at:  # the evaluation env sees the features in the order the training env does
            evaluator.before_evaluation = partial(sync_permutation, eval_env, at=config.permute_at)
        if config.normalize:
            evaluator.before_evaluation = partial(_sync_normalization, env, eval_env, evaluator.before_evaluation)
        # which input features each network reads: features.csv, and the real fraction on a noisy env
        features_csv = run_dir / FEATURES_FILE
        evaluator.row_extras.append(
            lambda model, steps: evaluation_fields(model.policy, eval_env, features_csv, steps, model.logger))
        evaluator.last_row = last_row
        callbacks.append(evaluator)
    checkpointer = (CheckpointCallback(run_dir, config.checkpoint_freq, save_buffer, eval_env)
                    if config.checkpoint_freq > 0 else None)
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
    save_checkpoint(model, run_dir, save_buffer, eval_env)
    kill_point("run:final-checkpoint")
    atomic_write(run_dir / MODEL_FILE, model.save)
    _write_curve(run_dir, info.get("label", algo))
    result = summary(model, final, wall, model.num_timesteps - steps_before)
    if config.deploy_target is not None:  # does the trained actor's C fit the chip it was sized for?
        from sparse_rl.export.budget import deploy_check, parse_size

        result["deploy"] = deploy_check(
            model, config.deploy_target, parse_size(config.deploy_flash, "deploy_flash") if config.deploy_flash else None,
            parse_size(config.deploy_ram, "deploy_ram") if config.deploy_ram else None,
            config.deploy_quantize if config.deploy_quantize in ("int8", "mixed") else "none")
    write_json(run_dir / SUMMARY_FILE, result)
    env.close()
    eval_env.close()
    return run_dir


def _sync_normalization(env: VecNormalize, eval_env: VecNormalize, then: Any, num_timesteps: int) -> None:
    """Give the evaluation env the training env's observation statistics (then run ``then``, if any)."""
    sync_envs_normalization(env, eval_env)
    if then is not None:
        then(num_timesteps)


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
    if final.get("deploy"):
        d = final["deploy"]
        budget = ", ".join(f"{k} {d[k]} of {d[k + '_budget']} B" for k in ("flash", "ram") if d[k + "_budget"])
        from sparse_rl.export.runtime import WEIGHT_NAMES

        print(f"  deploy ({d['target']}, {WEIGHT_NAMES.get(d['quantize'], 'float32')} C, {d['measured_by']}): "
              f"{budget}: {'fits' if d['fits'] else 'DOES NOT FIT'}")
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
