"""What a ``train`` command will do, decided and checked before anything is written (:func:`plan_run`).

A new run: its config resolved from presets and flags, its env made once, its run directory checked
(never a directory that holds something other than a run). A resumed run: its ``config.yaml`` read and
locked, its newest checkpoint verified, an extension's new budget checked. Bad input raises with a message
naming the value (``ConfigError``, ``RunError``, ``EnvError``, ``CheckpointError``); nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymnasium import spaces

from sparse_rl.checkpoint import MODEL_FILE, Checkpoint, latest_checkpoint
from sparse_rl.config import (
    CONFIG_CLASSES,
    SPARSE_KEYS,
    ConfigError,
    TrainConfig,
    parse_set,
    resolve_config,
    wrapper_options,
)
from sparse_rl.envs import resolve_env_id
from sparse_rl.models import check_device, check_env_for, run_label
from sparse_rl.numerics import code_version
from sparse_rl.run_directory import LOCK_FILE, SUMMARY_FILE, RunError, lock_run, read_run

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


def _fit_budget(algo: str, config: TrainConfig, obs_space: Any, action_space: Any) -> TrainConfig:
    """``config`` with the actor's sparsity and weight type that the deploy budget allows (the densest that fits)."""
    from sparse_rl.export.budget import BudgetError, derive, parse_size
    from sparse_rl.export.runtime import WEIGHT_NAMES

    if config.dense or config.input_layer_sparsity is not None:
        raise ConfigError("a deploy budget sizes a sparse actor: choose a sparse preset (not dense), without "
                          "input_layer_sparsity")
    if config.actor_sparsity is not None:
        raise ConfigError(f"the deploy budget derives actor_sparsity; drop actor_sparsity={config.actor_sparsity} "
                          "(or the budget)")
    flash = parse_size(config.deploy_flash, "deploy_flash") if config.deploy_flash is not None else None
    ram = parse_size(config.deploy_ram, "deploy_ram") if config.deploy_ram is not None else None
    try:
        fitted = derive(algo, int(obs_space.shape[0]), int(action_space.shape[0]), config.net_arch, config.distribution,
                        flash, ram, config.deploy_quantize)
    except BudgetError as err:
        raise ConfigError(str(err)) from None
    print(f"deploy budget ({config.deploy_target}, flash {flash} B, RAM {ram} B): actor_sparsity {fitted.sparsity:g} with "
          f"{WEIGHT_NAMES[fitted.quantize]} weights ({fitted.flash} B of flash, {fitted.ram} B of RAM "
          "by the byte model)", file=sys.stderr)
    return dataclasses.replace(config, actor_sparsity=fitted.sparsity, deploy_quantize=fitted.quantize)


def _plan_new_run(args: argparse.Namespace) -> Plan:
    if not args.algo:
        raise ConfigError(f"--algo is required ({', '.join(CONFIG_CLASSES)}) unless --resume is given")
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
    obs_space, action_space = check_env_for(args.algo, env_id, config.env_kwargs, wrapper_options(config))
    goal_keys = {"observation", "achieved_goal", "desired_goal"}
    if config.her and not (isinstance(obs_space, spaces.Dict) and goal_keys <= set(obs_space.spaces)):
        raise ConfigError(f"her needs a goal-conditioned env (dict observations with keys {', '.join(sorted(goal_keys))}); "
                          f"{env_id!r} has {obs_space}")
    if config.her:  # SB3's HerReplayBuffer samples only once an episode has ended
        import gymnasium as gym

        horizon = config.env_kwargs.get("max_episode_steps", gym.spec(env_id).max_episode_steps)
        if horizon is not None and config.learning_starts < horizon:
            raise ConfigError(f"her samples from finished episodes only: learning_starts ({config.learning_starts}) "
                              f"must be at least the episode length of {env_id!r} ({horizon}), e.g. --set "
                              f"learning_starts={horizon}")
    if config.normalize and not isinstance(obs_space, spaces.Box):
        raise ConfigError(f"normalize takes vector observations; {env_id!r} has {obs_space}")
    if config.deploy_target is not None:  # a new run: its actor sized to the budget, in the weights asked for
        config = _fit_budget(args.algo, config, obs_space, action_space)
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
        check_env_for(info["algo"], info["env"], plan.config.env_kwargs, wrapper_options(plan.config))
    return plan


def plan_run(args: argparse.Namespace) -> Plan:
    """Check everything ``args`` asks for and decide what to do, writing nothing.

    :raises ValueError: bad input (``ConfigError``, ``RunError``, ``EnvError``, ``CheckpointError``), with a message
        naming the value.
    """
    if args.threads <= 0:
        raise ConfigError(f"--threads must be positive, got {args.threads}")
    check_device(args.device)
    return _plan_resume(args) if args.resume is not None else _plan_new_run(args)
