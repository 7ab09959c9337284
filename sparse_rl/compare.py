"""``python -m sparse_rl.compare RUN_A RUN_B``: the topology distance (NNSTD) between two sparse agents.

    python -m sparse_rl.compare runs/a runs/b                 # per network: per-layer distances and total
    python -m sparse_rl.compare runs/a/model.zip runs/b --json

Each argument is a run directory (its final model, else its latest checkpoint) or an SB3 model zip of a
SAC/TD3 agent with a sparse policy; the two must have the same architecture. 0 means the same topology
up to a permutation of hidden neurons, 1 topologies that share no connection (see
:mod:`sparse_rl.topology.nnstd`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sparse_rl.agents import SparsePolicyMixin
from sparse_rl.models import load_model_file, load_run_model
from sparse_rl.run_directory import RunError
from sparse_rl.topology.nnstd import nnstd


def _load(path: Path) -> Any:
    if not path.exists():
        raise RunError(f"{str(path)!r} does not exist (give a run directory or a model .zip)")
    model = load_run_model(path) if path.is_dir() else load_model_file(path)
    if not isinstance(model.policy, SparsePolicyMixin):
        raise RunError(f"{str(path)!r} holds a dense {type(model.policy).__name__}; compare needs sparse policies")
    return model


def compare(path_a: Path, path_b: Path) -> dict[str, dict[str, Any]]:
    """NNSTD between the actor and critic topologies of two agents: ``{network: {layers, total}}``."""
    a, b = _load(path_a), _load(path_b)
    if type(a.policy) is not type(b.policy):
        raise RunError(f"cannot compare a {type(a.policy).__name__} with a {type(b.policy).__name__}")
    out = {}
    for name, ctrl_a in a.policy.topology_controllers().items():
        masks_a = [l.mask for l in ctrl_a.layers]
        masks_b = [l.mask for l in b.policy.topology_controllers()[name].layers]
        shapes_a, shapes_b = [tuple(m.shape) for m in masks_a], [tuple(m.shape) for m in masks_b]
        if shapes_a != shapes_b:
            raise RunError(f"the {name}s differ in architecture: layers {shapes_a} and {shapes_b}")
        out[name] = nnstd(masks_a, masks_b, a.policy.layer_inputs(name))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.compare", description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, metavar="RUN_A")
    p.add_argument("b", type=Path, metavar="RUN_B")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        result = compare(args.a, args.b)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"NNSTD (0: same topology up to neuron permutation, 1: no shared connection): {args.a} vs {args.b}")
    for name, d in result.items():
        layers = "  ".join(f"{x:.4f}" for x in d["layers"])
        print(f"  {name:<6} total {d['total']:.4f}   per layer: {layers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
