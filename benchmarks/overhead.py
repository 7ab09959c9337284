"""Training speed of sparse SAC against dense SB3 SAC, interleaved in one process, with a time breakdown.

Every model is built and warmed up past ``learning_starts``, then all are trained in alternating chunks
of ``--chunk`` env steps for ``--rounds`` rounds, so machine noise hits them alike. Each round gives every
model's steps/s and its ratio to the baseline's (dense SB3 SAC, ``MlpPolicy`` 256×256) in the same round;
the tables report medians over rounds. After the timed rounds, one more chunk per model runs with timers
around SB3's own calls, for the breakdown of where one env step's time goes:

- ``env``: ``VecEnv.step``; ``act``: choosing the rollout action (actor forward at batch 1);
- ``sample``: replay sampling; ``fwd+loss``: forward passes and loss arithmetic of ``train()``;
- ``backward``: ``Tensor.backward``; ``optim``: the optimizer's own step;
- ``topology``: the sparse controllers' hooks (gradient/weight masking, topology updates);
- ``target``: Polyak updates of the target networks; ``rest``: everything else (SB3's loop, buffer
  writes, callbacks).

``floor`` is SB3's dense SAC with an 8×8 network: the same calls, losses, optimizer steps and SB3 loop as
the baseline with almost no multiply-adds. Its speed bounds what any sparsity can reach (network work
scaled by density to zero leaves the non-network part), so ``limit`` = floor steps/s ÷ baseline steps/s.

    python benchmarks/overhead.py --env HalfCheetah-v5 --rounds 5 --chunk 300
    python benchmarks/overhead.py --configs dense rigl-0.9-sparse rigl-0.9-dense --rounds 9 --chunk 1000
    python benchmarks/overhead.py --configs dense floor rigl-0.9-auto snfs-0.9-auto dsr-0.9-auto deepr-0.9-auto \
        topkast-0.9-auto rigl-2of4-auto rigl-1of8-auto
    python benchmarks/overhead.py --device cuda --configs dense rigl-0.9-sparse rigl-0.9-dense rigl-0.98-sparse \
        rigl-0.98-dense dense-1024 wide-0.98-sparse wide-0.98-auto

On a GPU (``--device cuda``) the breakdown's timers wait for the queued kernels before and after each timed call
(``torch.cuda.synchronize``), which costs some speed in that chunk only; the timed rounds run unsynchronised.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stable_baselines3.sac.sac as sb3_sac
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback

from sparse_rl import SparseSACPolicy, sparsity_report
from sparse_rl.models import bind


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


@dataclass
class Config:
    name: str
    net_arch: list[int]
    sparsity: float | None = None  # None: SB3's dense MlpPolicy
    backend: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # more policy kwargs


def all_configs() -> dict[str, Config]:
    configs = [Config("dense", [256, 256]), Config("floor", [8, 8])]
    for sparsity in (0.9, 0.95, 0.98):
        for backend in ("sparse", "auto", "dense"):
            configs.append(Config(f"rigl-{sparsity}-{backend}", [256, 256], sparsity, backend))
    # grow_signal=momentum needs the dense gradient on every step: its cost with the sparse backend
    configs.append(Config("rigl-0.9-auto-momentum", [256, 256], 0.9, "auto", {"topology_kwargs": {"grow_signal": "momentum"}}))
    configs += [
        Config("wide-0.98-sparse", [1024, 1024], 0.98, "sparse"),
        Config("wide-0.98-auto", [1024, 1024], 0.98, "auto"),
        Config("dense-1024", [1024, 1024]),
    ]
    # the rest of dynamic sparse training (issue 17), at their presets' settings
    configs += [Config(f"{t}-0.9-auto", [256, 256], 0.9, "auto", {"topology": t, "update_interval": 100 if t == "deepr" else 1000})
                for t in ("snfs", "dsr", "deepr", "topkast")]
    configs += [Config(f"rigl-{n}of{m}-auto", [256, 256], 1 - n / m, "auto", {"structure": f"{n}:{m}", "distribution": "uniform"})
                for n, m in ((2, 4), (1, 8))]
    return {c.name: c for c in configs}


def build(config: Config, env: str, buffer_size: int, device: str = "cpu") -> SAC:
    common: dict[str, Any] = dict(learning_starts=1000, seed=0, verbose=0, buffer_size=buffer_size, device=device)
    if config.sparsity is None:
        return SAC("MlpPolicy", env, policy_kwargs=dict(net_arch=config.net_arch), **common)
    kwargs = {**dict(sparsity=config.sparsity, topology="rigl", update_interval=1000, backend=config.backend,
                     net_arch=config.net_arch), **config.extra}
    return bind(SAC(SparseSACPolicy, env, policy_kwargs=kwargs, **common))


class Timers:
    """Accumulates wall time per category by wrapping callables (only during the breakdown chunk)."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []
        self._sync = sync  # on a GPU: wait for the queued kernels, so each category gets its own time

    def _timed(self, fn: Callable, category: str) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[category] += time.perf_counter() - start

        return timed

    def wrap(self, owner: Any, attr: str, category: str) -> None:
        original = getattr(owner, attr)
        shadows_class_attr = not isinstance(owner, (type, types.ModuleType)) and attr not in vars(owner)
        setattr(owner, attr, self._timed(original, category))
        self._undo.append((lambda: delattr(owner, attr)) if shadows_class_attr else (lambda: setattr(owner, attr, original)))

    def wrap_hooks(self, hooks: dict, category: str) -> None:
        for key, hook in list(hooks.items()):
            hooks[key] = self._timed(hook, category)
            self._undo.append(lambda k=key, h=hook: hooks.__setitem__(k, h))

    def undo(self) -> None:
        for fn in reversed(self._undo):
            fn()
        self._undo.clear()


def breakdown(model: SAC, chunk: int, pin: PinTotal) -> dict[str, float]:
    """Milliseconds per env step in each category, over one chunk."""
    timers = Timers(torch.cuda.synchronize if model.device.type == "cuda" else lambda: None)
    optimizers = [model.actor.optimizer, model.critic.optimizer]
    if getattr(model, "ent_coef_optimizer", None) is not None:
        optimizers.append(model.ent_coef_optimizer)
    timers.wrap(model.env, "step", "env")
    timers.wrap(model, "_sample_action", "act")
    timers.wrap(model.replay_buffer, "sample", "sample")
    timers.wrap(model, "train", "train")
    timers.wrap(torch.Tensor, "backward", "backward")
    timers.wrap(sb3_sac, "polyak_update", "target")
    for opt in optimizers:
        timers.wrap(opt, "step", "optim+hooks")
        timers.wrap_hooks(opt._optimizer_step_pre_hooks, "topology")
        timers.wrap_hooks(opt._optimizer_step_post_hooks, "topology")
    start = time.perf_counter()
    try:
        model.learn(chunk, reset_num_timesteps=False, callback=pin)
    finally:
        timers.undo()
    total = time.perf_counter() - start
    s = timers.seconds
    out = {
        "env": s["env"],
        "act": s["act"],
        "sample": s["sample"],
        "backward": s["backward"],
        "optim": s["optim+hooks"] - s["topology"],
        "topology": s["topology"],
        "target": s["target"],
    }
    out["fwd+loss"] = s["train"] - s["sample"] - s["backward"] - s["optim+hooks"] - s["target"]
    out["rest"] = total - s["env"] - s["act"] - s["train"]
    out["total"] = total
    return {k: 1000 * v / chunk for k, v in out.items()}


COLUMNS = ("env", "act", "sample", "fwd+loss", "backward", "optim", "topology", "target", "rest", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="HalfCheetah-v5")
    parser.add_argument("--configs", nargs="+", default=list(all_configs()), choices=list(all_configs()),
                        help="models to time; 'dense' (the baseline) is always included")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=300, help="env steps per timed chunk")
    parser.add_argument("--warmup", type=int, default=1200, help="env steps before timing (learning starts at 1000)")
    parser.add_argument("--buffer-size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the networks train (cpu, cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs = all_configs()
    names = ["dense"] + [n for n in args.configs if n not in ("dense", "floor")] + ["floor"]
    total = args.warmup + (args.rounds + 1) * args.chunk
    models = {name: build(configs[name], args.env, args.buffer_size, args.device) for name in names}
    pins = {name: PinTotal(total) for name in names}
    for name, model in models.items():
        model.learn(args.warmup, callback=pins[name])

    rates: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(args.chunk, reset_num_timesteps=False, callback=pins[name])
            rates[name].append(args.chunk / (time.perf_counter() - start))
    parts = {name: breakdown(model, args.chunk, pins[name]) for name, model in models.items()}

    med = statistics.median
    print(f"env={args.env} device={args.device} threads={args.threads} rounds={args.rounds} chunk={args.chunk} env steps, "
          f"torch {torch.__version__}; baseline: dense SB3 SAC MlpPolicy 256x256")
    print()
    print("| model | net | sparsity | backend | topology updates (actor, critic) | steps/s | speed ratio to dense 256² "
          "| step time ratio to dense 256² |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        cfg, model = configs[name], models[name]
        ratios = [r / d for r, d in zip(rates[name], rates["dense"])]
        if cfg.sparsity is None:
            updates, sparsity, backend = "-", "0", "SB3 dense"
        else:
            rep = sparsity_report(model)
            updates = f"{rep['actor']['topology_updates']}, {rep['critic']['topology_updates']}"
            sparsity, backend = f"{cfg.sparsity:g}", cfg.backend
        arch = "x".join(map(str, cfg.net_arch))
        print(f"| {name} | {arch} | {sparsity} | {backend} | {updates} | {med(rates[name]):.1f} | {med(ratios):.3f} "
              f"| {med(1 / r for r in ratios):.3f} |")
    print()
    print("Breakdown, ms per env step (one extra chunk per model, timers on):")
    print()
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{parts[name][k]:.2f}" for k in COLUMNS) + " |")
    limit = med(f / d for f, d in zip(rates["floor"], rates["dense"]))
    print()
    print(f"limit: the floor (8x8 dense SAC, same SB3 work, almost no multiply-adds) runs at {limit:.2f}x the "
          "baseline's steps/s; no sparsity of the 256x256 networks can beat that.")


if __name__ == "__main__":
    main()
