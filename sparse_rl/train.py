"""``python -m sparse_rl.train``: train a sparse (or dense) SAC/TD3 agent into a run directory.

    python -m sparse_rl.train --algo sac --env HalfCheetah
    python -m sparse_rl.train --algo td3 --env Hopper-v5 --sparsity 0.95 --topology set --seed 3 \\
        --n-timesteps 200000 --run-dir runs/hopper-set --set update_interval=2000 --set learning_rate=1e-3
    python -m sparse_rl.train --resume runs/hopper-set

A run directory holds ``config.yaml`` (the resolved config), ``tb/`` (TensorBoard), ``checkpoints/``,
``evaluations.csv``, ``model.zip`` and ``summary.json``. Bad input prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from sparse_rl.agents import sparsity_report
from sparse_rl.config import CONFIG_CLASSES, ConfigError, available_presets, config_to_dict, parse_set, resolve_config
from sparse_rl.envs import make_env, resolve_env_id
from sparse_rl.evaluation import SparseEvalCallback
from sparse_rl.run import (
    CHECKPOINT_DIR,
    EVALUATIONS_FILE,
    MODEL_FILE,
    SUMMARY_FILE,
    CheckpointCallback,
    RunError,
    atomic_write,
    build_model,
    checkpoint_has_replay_buffer,
    load_run_model,
    read_run,
    restore_checkpoint_state,
    rewind_evaluations,
    run_label,
    save_checkpoint,
    summary,
    write_json,
    write_yaml,
)

EXIT_BAD_INPUT = 2


class ProgressLine(BaseCallback):
    """A one-line progress display on stderr: steps, steps/s, last evaluation, density."""

    def __init__(self, total: int, evaluator: SparseEvalCallback | None, every_s: float = 1.0):
        super().__init__()
        self.total, self.evaluator, self.every_s = total, evaluator, every_s
        self._t0 = self._last = 0.0
        self._n0 = 0

    def _on_training_start(self) -> None:
        self._t0 = self._last = time.perf_counter()
        self._n0 = self.num_timesteps

    def _on_step(self) -> bool:
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            rate = (self.num_timesteps - self._n0) / max(now - self._t0, 1e-9)
            row = self.evaluator.last_row if self.evaluator else None
            ret = f"{row['return_mean']:.1f}" if row else "-"
            density = sparsity_report(self.model)["actor"]["density"]
            pct = 100 * self.num_timesteps / self.total
            sys.stderr.write(
                f"\r{self.num_timesteps}/{self.total} ({pct:.0f}%) {rate:.0f} steps/s"
                f" | eval {ret} | actor density {density:.3f}"
            )
            sys.stderr.flush()
        return True

    def _on_training_end(self) -> None:
        sys.stderr.write("\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.train", description="Train a sparse SAC/TD3 agent.")
    p.add_argument("--algo", choices=None, help=f"one of {', '.join(CONFIG_CLASSES)}")
    p.add_argument("--env", help="env id or short name (HalfCheetah, Hopper, ..., Pendulum)")
    p.add_argument("--preset", default="sparse_rl", help="preset in configs/<algo>.yml (default: sparse_rl)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-timesteps", type=int, help="total env steps (overrides the preset)")
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
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: on when a TTY")
    p.add_argument("--list-keys", action="store_true", help="print the config keys of --algo and exit")
    return p


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
        overrides["env_kwargs"] = dict(parse_set(item) for item in args.env_kwargs)
    for item in args.sets:
        key, value = parse_set(item)
        overrides[key] = value
    return overrides


def _prepare_new_run(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    if not args.algo:
        raise ConfigError("--algo is required (sac or td3) unless --resume is given")
    if args.algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algo {args.algo!r}; known: {', '.join(CONFIG_CLASSES)}")
    if not args.env:
        raise ConfigError("--env is required unless --resume is given")
    env_id = resolve_env_id(args.env)
    config = resolve_config(args.algo, env_id, args.preset, _overrides(args))
    run_dir = args.run_dir or Path("runs") / f"{args.algo}-{env_id}-{run_label(args.algo, config)}-s{args.seed}"
    if (run_dir / "config.yaml").exists() and args.overwrite:
        shutil.rmtree(run_dir)
    if (run_dir / "config.yaml").exists():
        raise RunError(f"run directory {str(run_dir)!r} already holds a run; use --resume or another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunError(f"run directory {str(run_dir)!r} is not writable: {err.strerror}") from None
    info = {
        "algo": args.algo,
        "env": env_id,
        "seed": args.seed,
        "preset": args.preset,
        "label": run_label(args.algo, config),
        "save_replay_buffer": bool(args.save_replay_buffer),
        "config": config_to_dict(config),
    }
    write_yaml(run_dir / "config.yaml", info)
    info["config"] = config
    return info, run_dir


def train(args: argparse.Namespace, extra_callbacks: list[BaseCallback] | None = None) -> Path:
    """Run (or resume) training; returns the run directory."""
    torch.set_num_threads(args.threads)
    if args.resume is not None:
        run_dir = args.resume
        info = read_run(run_dir)
        if not (run_dir / CHECKPOINT_DIR / MODEL_FILE).is_file() and not (run_dir / MODEL_FILE).is_file():
            raise RunError(f"cannot resume {str(run_dir)!r}: it has no checkpoint yet")
    else:
        info, run_dir = _prepare_new_run(args)
    config = info["config"]
    algo, env_id, seed = info["algo"], info["env"], int(info["seed"])
    env = make_env(env_id, n_envs=config.n_envs, seed=seed, env_kwargs=config.env_kwargs)
    eval_env = make_env(env_id, n_envs=1, seed=seed + 10_000, env_kwargs=config.env_kwargs)
    tb = str(run_dir / "tb")
    if args.resume is not None:
        model = load_run_model(run_dir, env=env, device=args.device, prefer_checkpoint=True)
        model.tensorboard_log = tb
        restore_checkpoint_state(model, run_dir)
        if not checkpoint_has_replay_buffer(run_dir) and model.num_timesteps < config.n_timesteps:
            print(
                f"warning: {run_dir / CHECKPOINT_DIR} holds no replay buffer, so training continues from an empty one "
                "(a different run from an uninterrupted one); start runs with --save-replay-buffer to resume exactly",
                file=sys.stderr,
            )
    else:
        model = build_model(algo, config, env, seed, device=args.device, tensorboard_log=tb)
    remaining = config.n_timesteps - model.num_timesteps
    save_buffer = bool(info.get("save_replay_buffer")) or bool(args.save_replay_buffer)
    start = time.time()
    evaluator = None
    callbacks: list[BaseCallback] = []
    if config.eval_freq > 0:
        eval_csv = run_dir / EVALUATIONS_FILE
        # a resumed run repeats the evaluations made after its checkpoint: drop the old ones, continue the clock
        clock_before = rewind_evaluations(eval_csv, model.num_timesteps) if args.resume is not None else 0.0
        evaluator = SparseEvalCallback(eval_env, config.eval_freq, config.eval_episodes, eval_csv, start - clock_before)
        callbacks.append(evaluator)
    if config.checkpoint_freq > 0:
        callbacks.append(CheckpointCallback(run_dir, config.checkpoint_freq, save_buffer))
    show = sys.stderr.isatty() if args.progress is None else args.progress
    if show:
        callbacks.append(ProgressLine(config.n_timesteps, evaluator))
    callbacks += extra_callbacks or []
    steps_before = model.num_timesteps
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=False, tb_log_name="run")
    wall = time.time() - start
    final = evaluator.last_row if evaluator else None
    if evaluator is not None and (final is None or final["timesteps"] != model.num_timesteps):
        evaluator.init_callback(model)
        final = evaluator.run_evaluation()
    save_checkpoint(model, run_dir, save_buffer)
    atomic_write(run_dir / MODEL_FILE, model.save)
    write_json(run_dir / SUMMARY_FILE, summary(model, final, wall, model.num_timesteps - steps_before))
    env.close()
    eval_env.close()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list_keys:
            cls = CONFIG_CLASSES.get(args.algo or "")
            if cls is None:
                raise ConfigError(f"--list-keys needs --algo ({', '.join(CONFIG_CLASSES)})")
            for f in dataclasses.fields(cls):
                print(f"{f.name} = {getattr(cls(), f.name)!r}")
            print(f"presets: {', '.join(available_presets(args.algo))}")
            return 0
        if args.threads <= 0:
            raise ConfigError(f"--threads must be positive, got {args.threads}")
        run_dir = train(args)
    except (ConfigError, RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"run finished: {run_dir}")
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
    print(f"  files: config.yaml, model.zip, evaluations.csv, summary.json, tb/, checkpoints/ in {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
