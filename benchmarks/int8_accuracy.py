"""How close the int8 export of a run's actor is to its float32 self, where it matters: on a real trajectory,
and as the return it earns in closed loop.

    python benchmarks/int8_accuracy.py runs/quickstart --episodes 5 --steps 1000

1. Open loop: ``--steps`` observations of a trajectory of the run's own float32 policy (deterministic, the
   run's env with its wrappers), and the int8 actor's actions on them (the numpy runtime of ``--format sparse
   --quantize int8``, which computes what the int8 C computes); max and mean error as fractions of the action
   range, beside the same on 1000 observations uniform in [-1, 1] (what ``export --report`` prints).
2. Closed loop: ``--episodes`` episodes driven by the compiled int8 C policy and as many by the compiled
   float32 C policy (host gcc; the float32 C matches torch within 1e-5), same env seeds; mean return of each
   and their ratio.
Prints a small table; writes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from sparse_rl.config import wrapper_options
from sparse_rl.envs import make_env
from sparse_rl.export import cli, formats
from sparse_rl.export.compile import CPolicy, arm_toolchain, cortex_m4_size
from sparse_rl.export.graph import extract_actor
from sparse_rl.export.qemu import record_observations
from sparse_rl.export.runtime import SparsePolicy
from sparse_rl.run_directory import read_run


def closed_loop(c: CPolicy, graph, env_id: str, config, episodes: int, seed: int) -> list[float]:
    returns = []
    for episode in range(episodes):
        env = make_env(env_id, n_envs=1, seed=seed + episode, env_kwargs=config.env_kwargs, wrappers=wrapper_options(config))
        obs, total, done = env.reset(), 0.0, False
        while not done:
            action = c.act(graph.select_inputs(obs).astype(np.float32))
            obs, reward, dones, _ = env.step(action)
            total += float(reward[0])
            done = bool(dones[0])
        env.close()
        returns.append(total)
    return returns


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=40_000, help="env seed of the trajectory and the first episode")
    args = p.parse_args()
    info = read_run(args.run)
    config = info["config"]
    model = cli.load_model(args.run)
    graph = extract_actor(model)
    span = float(np.max(graph.action_high - graph.action_low))
    variants = ("int8", "mixed")  # mixed: int8 weights but the input layer's (float32)
    obs = record_observations(model, info["env"], args.steps, seed=args.seed, env_kwargs=config.env_kwargs,
                              wrappers=wrapper_options(config))
    errors, returns, flash = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for q in variants:
            npz = Path(tmp) / f"{q}.npz"
            npz.write_bytes(formats.sparse_file_bytes(graph, q))
            real = np.abs(SparsePolicy.load(npz).act(obs) - graph.forward(obs)) / span
            errors[q] = (cli.int8_error(graph, quantize=q), real)
        for q in ("none", *variants):
            d = Path(tmp) / q
            cli.export(graph, "c", d, quantize=q)
            returns[q] = closed_loop(CPolicy(d, "sparse_rl_policy", graph.obs_dim, graph.act_dim), graph, info["env"],
                                     config, args.episodes, args.seed)
            flash[q] = cortex_m4_size(d)["flash"] if arm_toolchain() else None
    names = {"none": "float32", "int8": "int8", "mixed": "int8, float32 input layer"}
    print(f"{args.run} ({info['env']}, {info['label']}): int8 actors against float32, as fractions of the action range")
    print("| weights | inputs | observations | max error | mean error |")
    print("|---|---|---|---|---|")
    for q in variants:
        uniform, real = errors[q]
        print(f"| {names[q]} | uniform in [-1, 1] | 1000 | {uniform['max']:.4f} | {uniform['mean']:.5f} |")
        print(f"| {names[q]} | a trajectory of the float32 policy | {len(obs)} | {real.max():.4f} | {real.mean():.5f} |")
    print(f"|obs| on that trajectory: max {np.abs(obs).max():.1f}")
    print(f"closed loop, {args.episodes} episodes (env seeds {args.seed}..{args.seed + args.episodes - 1}), the compiled C:")
    print("| weights | mean return | episodes | of float32 | Cortex-M4 flash (B) |")
    print("|---|---|---|---|---|")
    for q in ("none", *variants):
        r = returns[q]
        print(f"| {names[q]} | {np.mean(r):.1f} | {', '.join(f'{v:.0f}' for v in r)} | "
              f"{np.mean(r) / np.mean(returns['none']):.3f} | {flash[q] if flash[q] is not None else 'n/a'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
