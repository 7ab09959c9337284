"""Wall-clock overhead of sparse SAC against dense SB3 SAC, interleaved in one process.

Both models are built and warmed up (past ``learning_starts``), then trained in alternating chunks of
``--chunk`` env steps so machine noise hits both alike. Each round gives a ratio
sparse steps/s ÷ dense steps/s; the median over rounds is the result. Steps/s are given per second of
wall-clock and per second of this process's CPU time (the latter is robust to other load on a shared
machine).

    python benchmarks/overhead.py --env HalfCheetah-v5 --rounds 7 --chunk 1000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

from sparse_rl import SparseSACPolicy, sparsity_report


class PinTotal(BaseCallback):
    """Each chunked ``learn()`` resets SB3's total; pin it so progress (drop schedule, end_fraction)
    is what one uninterrupted run of ``total`` steps would see."""

    def __init__(self, total: int):
        super().__init__()
        self.total = total

    def _on_training_start(self) -> None:
        self.model._total_timesteps = self.total

    def _on_step(self) -> bool:
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--topology", default="rigl")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=1000, help="env steps per timed chunk")
    parser.add_argument("--warmup", type=int, default=1500, help="env steps before timing (learning starts at 1000)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    common = dict(learning_starts=1000, seed=0, verbose=0)
    total = args.warmup + args.rounds * args.chunk
    models = {
        "dense": SAC("MlpPolicy", args.env, **common),
        "sparse": SAC(
            SparseSACPolicy,
            args.env,
            policy_kwargs=dict(sparsity=args.sparsity, topology=args.topology, update_interval=1000),
            **common,
        ),
    }
    pin = {name: PinTotal(total) for name in models}
    for name, model in models.items():
        model.learn(args.warmup, callback=pin[name])

    rates: dict[str, list[float]] = {name: [] for name in models}
    cpu_rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            model.learn(args.chunk, reset_num_timesteps=False, callback=pin[name])
            rates[name].append(args.chunk / (time.perf_counter() - start))
            cpu_rates[name].append(args.chunk / (time.process_time() - cpu_start))
    ratios = [s / d for s, d in zip(rates["sparse"], rates["dense"])]
    cpu_ratios = [s / d for s, d in zip(cpu_rates["sparse"], cpu_rates["dense"])]

    report = sparsity_report(models["sparse"])
    print(f"env={args.env} sparsity={args.sparsity} topology={args.topology} threads={args.threads}")
    print(
        f"rounds={args.rounds} chunk={args.chunk} env steps; topology updates so far: "
        f"actor {report['actor']['topology_updates']}, critic {report['critic']['topology_updates']}"
    )
    print()
    print("| round | dense steps/s | sparse steps/s | ratio (wall) | dense steps/CPU-s | sparse steps/CPU-s | ratio (CPU) |")
    print("|---|---|---|---|---|---|---|")
    rows = zip(rates["dense"], rates["sparse"], ratios, cpu_rates["dense"], cpu_rates["sparse"], cpu_ratios)
    for i, row in enumerate(rows, 1):
        print(f"| {i} | " + " | ".join(f"{v:.3f}" if j in (2, 5) else f"{v:.1f}" for j, v in enumerate(row)) + " |")
    med = statistics.median
    print(
        f"| median | {med(rates['dense']):.1f} | {med(rates['sparse']):.1f} | {med(ratios):.3f} | "
        f"{med(cpu_rates['dense']):.1f} | {med(cpu_rates['sparse']):.1f} | {med(cpu_ratios):.3f} |"
    )


if __name__ == "__main__":
    main()
