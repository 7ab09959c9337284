"""``python -m sparse_rl.evaluate RUN_DIR|MODEL.zip``: return mean/std/95% CI together with sparsity, offline.

python -m sparse_rl.evaluate runs/hopper-set --episodes 20
python -m sparse_rl.evaluate runs/hopper-set/model.zip          # the env is read from the run around it
python -m sparse_rl.evaluate cheetah.zip --env HalfCheetah      # a model saved with SB3's model.save
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sparse_rl.cli_options import add_device, add_threads
from sparse_rl.config import wrapper_options
from sparse_rl.envs import EnvError, make_env, resolve_env_id
from sparse_rl.envs.wrappers import sync_permutation
from sparse_rl.eval_callback import evaluate
from sparse_rl.models import check_device, load_model_file, load_run_model, normalized_for_run
from sparse_rl.run_directory import RunError, read_run, run_dir_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.evaluate", description="Evaluate a trained run.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR|MODEL.zip")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, help="evaluation env seed (default: the run's seed + 20000)")
    p.add_argument("--env", help="env of a model zip outside a run directory (default: the run's env)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_threads(p)
    add_device(p)
    args = p.parse_args(argv)
    try:
        if args.episodes <= 0:
            raise ValueError(f"--episodes must be positive, got {args.episodes}")
        if args.threads <= 0:
            raise ValueError(f"--threads must be positive, got {args.threads}")
        check_device(args.device)
        torch.set_num_threads(args.threads)
        path: Path = args.run_dir
        if not path.exists():
            raise RunError(f"{str(path)!r} does not exist (give a run directory or a model .zip)")
        run_dir = path if path.is_dir() else run_dir_of(path)
        info = read_run(run_dir) if run_dir is not None else None
        if args.env is not None:
            env_id = resolve_env_id(args.env)
        elif info is not None:
            env_id = info["env"]
        else:
            raise RunError(f"{str(path)!r} is a model file outside a run directory: name its env with --env")
        same_env = info is not None and env_id == info["env"]
        env_kwargs = info["config"].env_kwargs if same_env else {}
        wrappers = wrapper_options(info["config"]) if same_env else {}  # the run's noise features, permutation
        seed = args.seed if args.seed is not None else (int(info["seed"]) if info else 0) + 20_000
        env = make_env(env_id, n_envs=1, seed=seed, env_kwargs=env_kwargs, wrappers=wrappers)
        if same_env and run_dir is not None:  # a run trained with normalize: the model's observation statistics
            env = normalized_for_run(env, path)
        if path.is_dir():
            model = load_run_model(path, env=env, device=args.device)
        else:
            model = load_model_file(path, device=args.device)
            if model.observation_space != env.observation_space or model.action_space != env.action_space:
                raise EnvError(
                    f"{str(path)!r} was trained on observations {model.observation_space} and actions "
                    f"{model.action_space}; {env_id!r} has {env.observation_space} and {env.action_space}"
                )
            model.set_env(env)
        if wrappers.get("permute_at"):  # as the run saw its features at the model's step count
            sync_permutation(env, int(model.num_timesteps), at=wrappers["permute_at"])
        row = {
            "run": str(path),
            "env": env_id,
            "timesteps": int(model.num_timesteps),
            **evaluate(model, env, args.episodes),
        }
    except (RunError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{row['run']} ({row['env']}, {row['timesteps']} steps, {row['episodes']} episodes)")
        print(
            f"  return   {row['return_mean']:.1f} ± {row['return_std']:.1f} "
            f"(95% CI {row['return_ci95_low']:.1f} .. {row['return_ci95_high']:.1f})"
        )
        for net in [n for n in ("actor", "critic") if f"{n}_density" in row]:  # DQN: its Q-network, as critic
            print(
                f"  {net:<7}  density {row[f'{net}_density']:.4f}  ITOP {row[f'{net}_itop_rate']:.4f}  "
                f"FLOPs/forward {row[f'{net}_flops']} (dense {row[f'{net}_dense_flops']})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
