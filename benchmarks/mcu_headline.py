"""The smallest Cortex-M4 flash of a HalfCheetah actor that still returns >= 4500 (issue 36, item 5).

Takes finished SAC runs of HalfCheetah-v5 (the campaign's, for instance: ``<variant>-s<seed>`` directories)
and, for every run and each weight type (float32, int8, and int8 with a float32 input layer: ``mixed``):

- compiles the actor's exported C for a Cortex-M4F and reads ``arm-none-eabi-size`` (flash = text + data,
  RAM = data + bss);
- drives the env with that very C (built for this host with gcc, called through ctypes) for ``--episodes``
  episodes, the run's seed + 20000 as the evaluation seed, so the return is the exported policy's, int8
  rounding included; torch's return on the same episodes is printed beside it.

Per variant and weight type it prints the mean return over the seeds and the largest flash. The headline is
the smallest flash whose mean return is >= ``--threshold`` over at least ``--min-seeds`` seeds, first of
any weight type, then of those whose C on QEMU's Cortex-M4 board stays within ``--verify-on``'s bounds
against torch on a real trajectory (float32: 1e-5 of the action range; int8: max 0.15, mean 0.01). For each:
the instructions per action (valgrind callgrind on a scalar x86 build, ``-O2 -fno-tree-vectorize``: a
proxy for a core without SIMD, as ``benchmarks/export.py`` counts them), and its QEMU parity, against torch
and against the numpy runtime of the same weights (the same arithmetic: the C's own correctness).

    python benchmarks/mcu_headline.py ../campaign/runs/campaign/HalfCheetah-v5/*-s[0-9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def mean_return(act, env_id: str, seed: int, episodes: int) -> float:
    """Mean return of ``act`` (observation -> action) over ``episodes`` episodes of ``env_id``, seeds from ``seed``."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def exported_return(c_dir: Path, graph, env_id: str, seed: int, episodes: int) -> float:
    """Mean return of the C in ``c_dir`` driving ``env_id``."""
    from sparse_rl.export.compile import CPolicy

    policy = CPolicy(c_dir, "sparse_rl_policy", graph.obs_dim, graph.act_dim)
    return mean_return(lambda obs: policy.act(graph.select_inputs(obs.astype(np.float32))), env_id, seed, episodes)


def torch_return(model, env_id: str, seed: int, episodes: int) -> float:
    return mean_return(lambda obs: model.predict(obs, deterministic=True)[0], env_id, seed, episodes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories (<variant>-s<seed>)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--threshold", type=float, default=4500.0)
    p.add_argument("--min-seeds", type=int, default=3)
    args = p.parse_args()

    import torch

    from sparse_rl.export import formats
    from sparse_rl.export.compile import cortex_m4_size
    from sparse_rl.export.graph import extract_actor
    from sparse_rl.models import load_run_model
    from sparse_rl.run_directory import read_run

    torch.set_num_threads(1)
    rows = []
    for run in sorted(args.runs):
        if not (run / "model.zip").is_file():
            continue
        info = read_run(run)
        variant = run.name.rsplit("-s", 1)[0]
        seed = int(info["seed"]) + 20_000
        model = load_run_model(run)
        graph = extract_actor(model)
        ref = torch_return(model, info["env"], seed, args.episodes)
        for quantize in ("none", "int8", "mixed"):
            with tempfile.TemporaryDirectory() as tmp:
                c_dir = Path(tmp)
                for name, text in formats.c_sources(graph, quantize=quantize).items():
                    (c_dir / name).write_text(text)
                size = cortex_m4_size(c_dir)
                ret = exported_return(c_dir, graph, info["env"], seed, args.episodes)
            rows.append(dict(run=run, variant=variant, seed=int(info["seed"]), quantize=quantize, flash=size["flash"],
                             ram=size["ram"], nnz=graph.stats()["nonzeros"], ret=ret, torch=ref))
            print(f"{run.name:>12} {quantize:>5}: flash {size['flash']:>7} B, RAM {size['ram']:>5} B, "
                  f"return {ret:8.1f} (torch {ref:8.1f})", file=sys.stderr, flush=True)

    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], row["quantize"])].append(row)
    print(f"\nExported actors of {len(rows) // 3} runs, {args.episodes} episodes each (evaluation seed = run seed "
          "+ 20000), the C itself driving the env:\n")
    print("| variant | weights | seeds | mean return (C) | min | torch mean | actor nonzeros | flash (max) | RAM |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for (variant, quantize), group in sorted(groups.items(), key=lambda kv: max(r["flash"] for r in kv[1])):
        mean = statistics.mean(r["ret"] for r in group)
        flash = max(r["flash"] for r in group)
        summary.append((flash, variant, quantize, mean, group))
        print(f"| {variant} | {NAMES[quantize]} | {len(group)} | {mean:.0f} | "
              f"{min(r['ret'] for r in group):.0f} | {statistics.mean(r['torch'] for r in group):.0f} | "
              f"{max(r['nnz'] for r in group)} | {flash} | {max(r['ram'] for r in group)} |")
    eligible = [s for s in summary if s[3] >= args.threshold and len(s[4]) >= args.min_seeds]
    if not eligible:
        print(f"\nNo variant returns >= {args.threshold:g} over >= {args.min_seeds} seeds.")
        return
    print(f"\nThe smallest flash returning >= {args.threshold:g} over >= {args.min_seeds} seeds, in order, until one "
          "also passes on-target parity:\n")
    for flash, variant, quantize, mean, group in sorted(eligible, key=lambda s: s[0]):
        if headline(flash, variant, quantize, mean, group):
            break


NAMES = {"none": "float32", "int8": "int8", "mixed": "int8, float32 input layer"}


def headline(flash: int, variant: str, quantize: str, mean: float, group: list[dict]) -> bool:
    """Print the callgrind count and QEMU parity of the smallest-flash run of ``group``; whether it passes."""
    from export import instructions_per_call

    from sparse_rl.export import formats
    from sparse_rl.export.cli import VERIFY_TOL
    from sparse_rl.export.graph import extract_actor
    from sparse_rl.export.qemu import missing_tools, record_observations, run_on_qemu
    from sparse_rl.export.runtime import SparsePolicy
    from sparse_rl.models import load_run_model

    best = min(group, key=lambda r: r["flash"])
    model = load_run_model(best["run"])
    graph = extract_actor(model)
    with tempfile.TemporaryDirectory() as tmp:
        c_dir = Path(tmp)
        for name, text in formats.c_sources(graph, quantize=quantize).items():
            (c_dir / name).write_text(text)
        instructions = instructions_per_call(c_dir)
    print(f"- **{variant}, {NAMES[quantize]}**: flash {flash} B (largest of {len(group)} seeds; {best['run'].name}: "
          f"{best['flash']} B, RAM {best['ram']} B), mean return {mean:.0f}; {instructions:.0f} instructions per "
          "action (callgrind, scalar x86 -O2 -fno-tree-vectorize)")
    if missing_tools():
        print(f"  QEMU parity: skipped, needs {', '.join(missing_tools())}")
        return True
    tol = VERIFY_TOL[quantize]
    worst = {"max": 0.0, "mean": 0.0, "own": 0.0}
    for row in group:  # every seed's actor on the chip, each on a trajectory of its own
        model = load_run_model(row["run"])
        graph = extract_actor(model)
        obs = record_observations(model, "HalfCheetah-v5", 200, seed=row["seed"] + 30_000)
        actions = run_on_qemu(graph, obs, quantize)
        span = float(np.max(graph.action_high - graph.action_low))
        diff = np.abs(actions - model.predict(obs, deterministic=True)[0]) / span
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "p.npz").write_bytes(formats.sparse_file_bytes(graph, quantize))
            own = np.abs(actions - SparsePolicy.load(Path(tmp) / "p.npz").act(obs)).max() / span
        worst = {"max": max(worst["max"], float(diff.max())), "mean": max(worst["mean"], float(diff.mean())),
                 "own": max(worst["own"], float(own))}
    ok = worst["max"] <= tol["max"] and worst["mean"] <= tol["mean"]
    print(f"  on QEMU's mps2-an386 (Cortex-M4F), each seed's actor on 200 observations of its own HalfCheetah-v5 "
          f"trajectory, the worst seed: against torch max {worst['max']:.3g}, mean {worst['mean']:.3g} of the action "
          f"range (bounds {tol['max']:g}, {tol['mean']:g}: {'within' if ok else 'OUTSIDE'}); against the numpy "
          f"runtime of the same weights max {worst['own']:.2g}")
    return ok

if __name__ == "__main__":
    main()
