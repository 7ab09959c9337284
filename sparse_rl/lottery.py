"""``python -m sparse_rl.lottery``: lottery tickets by iterative magnitude pruning with weight rewinding.

    python -m sparse_rl.lottery --algo sac --env HalfCheetah --rounds 3 --prune-rate 0.5 \\
        --rewind-fraction 0.05 --n-timesteps 100000 --out runs/lottery

Round 0 trains the dense network (a sparse policy at sparsity 0) and keeps a copy of its weights at
``--rewind-fraction`` of training (0: the initial weights, Frankle & Carbin 2019; a small fraction:
rewinding, Frankle et al. 2020, as Yu et al. 2020 do for RL). After each round, ``--prune-rate`` of each
layer's remaining weights are pruned by final magnitude, the survivors are rewound to that copy, and the
result is written as a ticket (``OUT/ticket-<r>.npz``) from which the next round trains with a static
topology. Every round is an ordinary run directory (``OUT/round-<r>``: ``evaluate``, ``plot``,
``export`` work on it); the last ticket starts any new run with ``train --set init_from=OUT/ticket-<R>.npz``.
Run again after an interruption, the command skips finished rounds, resumes an interrupted round
r >= 1 from its checkpoint and starts an interrupted round 0 again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sparse_rl import train as train_cli
from sparse_rl.agents.tickets import layer_arrays, read_ticket, ticket_bytes
from sparse_rl.cli_options import add_device, add_progress, add_threads, progress_argv
from sparse_rl.config import ConfigError
from sparse_rl.envs import EnvError
from sparse_rl.models import load_run_model
from sparse_rl.run_directory import SUMMARY_FILE, RunError, atomic_write
from sparse_rl.sparse.distributions import available_distributions, layer_nonzeros


class RewindPoint(BaseCallback):
    """Keeps each network's masked-layer weights at ``fraction`` of ``total`` env steps."""

    def __init__(self, fraction: float, total: int):
        super().__init__()
        self.at = int(fraction * total)
        self.arrays: dict[str, list[dict[str, np.ndarray]]] | None = None

    def _take(self) -> None:
        if self.arrays is None and self.num_timesteps >= self.at:
            ctrls = self.model.policy.topology_controllers()
            self.arrays = {name: layer_arrays(ctrl.layers) for name, ctrl in ctrls.items()}

    def _on_training_start(self) -> None:
        self._take()

    def _on_step(self) -> bool:
        self._take()
        return True


def prune_ticket(
    final: dict[str, list[dict[str, np.ndarray]]],
    rewound: dict[str, list[dict[str, np.ndarray]]],
    prune_rate: float,
    distribution: str = "uniform",
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Keep the largest final weights among each layer's active ones, with their ``rewound`` values.

    ``uniform``: every layer keeps ``1 - prune_rate`` of its active weights. Any other distribution of
    :func:`~sparse_rl.sparse.distributions.layer_nonzeros` (``erk``, ``er``): each network keeps ``1 -
    prune_rate`` of its active weights in all, shared among its layers as that distribution shares them
    (a layer never keeps more than it has), so small layers such as the first one stay denser.
    """
    ticket: dict[str, list[dict[str, np.ndarray]]] = {}
    for name, layers in final.items():
        ticket[name] = []
        active = [int(layer["mask"].sum()) for layer in layers]
        if distribution == "uniform":
            keeps = [round((1.0 - prune_rate) * n) for n in active]
        else:
            density = (1.0 - prune_rate) * sum(active) / sum(layer["mask"].size for layer in layers)
            counts = layer_nonzeros([layer["mask"].shape for layer in layers], density, distribution)
            keeps = [min(n, a) for n, a in zip(counts, active)]
        for layer, start, keep in zip(layers, rewound[name], keeps):
            mask = layer["mask"]
            scores = np.where(mask, np.abs(layer["weight"]), -np.inf).ravel()
            new = np.zeros(mask.size, dtype=bool)
            new[np.argsort(-scores, kind="stable")[:keep]] = True
            new = new.reshape(mask.shape)
            ticket[name].append({"mask": new, "weight": np.where(new, start["weight"], 0.0), "bias": start["bias"]})
    return ticket


def _round_args(args: argparse.Namespace, r: int, out: Path) -> list[str]:
    argv = ["--algo", args.algo, "--env", args.env, "--seed", str(args.seed), "--run-dir", str(out / f"round-{r}"),
            "--topology", "static", "--threads", str(args.threads), "--device", args.device, *progress_argv(args)]
    if args.n_timesteps is not None:
        argv += ["--n-timesteps", str(args.n_timesteps)]
    for item in args.sets:
        argv += ["--set", item]
    if r == 0:
        argv += ["--sparsity", "0"]
    else:
        argv += ["--set", f"init_from={out / f'ticket-{r}.npz'}"]
    return argv


def _finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).is_file()


def lottery(args: argparse.Namespace) -> list[dict[str, Any]]:
    out: Path = args.out
    rows = []
    rewound: dict[str, list[dict[str, np.ndarray]]] | None = None
    rewind_file = out / "rewind.npz"
    for r in range(args.rounds + 1):
        run_dir = out / f"round-{r}"
        argv = _round_args(args, r, out)
        if (run_dir / "config.yaml").is_file() and not _finished(run_dir):
            # interrupted: round 0 starts again (its rewind point may predate the checkpoint), later ones resume
            argv = [*argv, "--overwrite"] if r == 0 else ["--resume", str(run_dir), "--threads", str(args.threads),
                                                          "--device", args.device, *progress_argv(args)]
        parsed = train_cli.build_parser().parse_args(argv)
        plan = None if _finished(run_dir) else train_cli.plan_run(parsed)  # bad input: before any training
        if plan is not None:
            callbacks: list[BaseCallback] = []
            point = None
            if r == 0:
                point = RewindPoint(args.rewind_fraction, plan.config.n_timesteps)
                callbacks.append(point)
                if 0 < point.at <= plan.config.learning_starts:
                    print(f"note: the rewind point ({point.at} steps) is not after the first gradient step "
                          f"(learning_starts={plan.config.learning_starts}): survivors restart from their "
                          "initial weights, as with --rewind-fraction 0")
            train_cli.train(parsed, extra_callbacks=callbacks, plan=plan)
            if point is not None:
                assert point.arrays is not None
                meta = {"rewind_fraction": args.rewind_fraction, "round": 0}
                atomic_write(rewind_file, lambda f, a=point.arrays, m=meta: f.write(ticket_bytes(a, m)))
        rewound = rewound or read_ticket(rewind_file)
        model = load_run_model(run_dir)
        final = {name: layer_arrays(ctrl.layers) for name, ctrl in model.policy.topology_controllers().items()}
        density = {n: float(sum(l["mask"].sum() for l in ls) / sum(l["mask"].size for l in ls)) for n, ls in final.items()}
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        final_return = (summary.get("final_eval") or {}).get("return_mean")
        rows.append({"round": r, "run": str(run_dir), "actor_density": density["actor"],
                     "critic_density": density["critic"], "return_mean": final_return})
        if r < args.rounds:
            ticket = prune_ticket(final, rewound, args.prune_rate, args.distribution)
            meta = {"round": r + 1, "prune_rate": args.prune_rate, "distribution": args.distribution,
                    "rewind_fraction": args.rewind_fraction, "from_run": str(run_dir)}
            path = out / f"ticket-{r + 1}.npz"
            if not (path.is_file() and _finished(out / f"round-{r + 1}")):
                atomic_write(path, lambda f, t=ticket, m=meta: f.write(ticket_bytes(t, m)))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.lottery", description=__doc__.splitlines()[0])
    p.add_argument("--algo", required=True)
    p.add_argument("--env", required=True)
    p.add_argument("--rounds", type=int, default=3, help="pruning rounds after the dense round 0")
    p.add_argument("--prune-rate", type=float, default=0.5, help="fraction of the remaining weights pruned per round")
    p.add_argument("--distribution", default="uniform",
                   help="how each round's pruning is shared among a network's layers: uniform (the same "
                        "fraction of every layer) or a density distribution such as erk (the network's fraction, "
                        f"shared as that distribution shares density); one of {', '.join(available_distributions())}")
    p.add_argument("--rewind-fraction", type=float, default=0.0, help="fraction of training whose weights survivors rewind to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-timesteps", type=int)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, required=True, help="directory of the rounds and tickets")
    add_threads(p)
    add_device(p)
    add_progress(p, "each round's training progress line on stderr")
    args = p.parse_args(argv)
    try:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
        if not 0 < args.prune_rate < 1:
            raise ConfigError(f"--prune-rate must be in (0, 1), got {args.prune_rate}")
        if args.distribution not in available_distributions():
            raise ConfigError(f"--distribution must be one of {', '.join(available_distributions())}, "
                              f"got {args.distribution!r}")
        if not 0 <= args.rewind_fraction < 1:
            raise ConfigError(f"--rewind-fraction must be in [0, 1), got {args.rewind_fraction}")
        rows = lottery(args)
    except (ConfigError, RunError, EnvError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except train_cli.TrainingStopped as stop:
        print(f"{stop}, checkpoint written: {stop.checkpoint.path}; run the same command again to continue (a "
              "stopped round 0 starts again, later rounds resume)", file=sys.stderr)
        return 128 + stop.signum
    print(f"lottery tickets in {args.out} (prune {args.prune_rate:g} per round, {args.distribution}, "
          f"rewind to {args.rewind_fraction:g}):")
    for row in rows:
        ret = "-" if row["return_mean"] is None else f"{row['return_mean']:.1f}"
        print(f"  round {row['round']}: actor density {row['actor_density']:.4f}, critic {row['critic_density']:.4f}, "
              f"final return {ret}  ({row['run']})")
    print(f"  final ticket: {args.out / f'ticket-{args.rounds}.npz'} (train --set init_from=PATH)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
