"""``python -m sparse_rl.evaluate RUN_DIR``: return mean/std/95% CI together with sparsity, offline.

python -m sparse_rl.evaluate runs/hopper-set --episodes 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sparse_rl.envs import make_env
from sparse_rl.evaluation import evaluate
from sparse_rl.run import RunError, load_run_model, read_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.evaluate", description="Evaluate a trained run.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, help="evaluation env seed (default: the run's seed + 20000)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        if args.episodes <= 0:
            raise ValueError(f"--episodes must be positive, got {args.episodes}")
        torch.set_num_threads(args.threads)
        info = read_run(args.run_dir)
        seed = args.seed if args.seed is not None else int(info["seed"]) + 20_000
        env = make_env(info["env"], n_envs=1, seed=seed, env_kwargs=info["config"].env_kwargs)
        model = load_run_model(args.run_dir, env=env)
        row = {
            "run": str(args.run_dir),
            "env": info["env"],
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
        for net in ("actor", "critic"):
            print(
                f"  {net:<7}  density {row[f'{net}_density']:.4f}  ITOP {row[f'{net}_itop_rate']:.4f}  "
                f"FLOPs/forward {row[f'{net}_flops']} (dense {row[f'{net}_dense_flops']})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
