"""Fingerprints of what every topology method computes: a refactor that moves code must leave them unchanged.

    python benchmarks/snapshot.py --out /tmp/before.json      # before the change
    python benchmarks/snapshot.py --out /tmp/after.json --compare /tmp/before.json

Each configuration trains SAC or TD3 with one method for a few hundred steps on Pendulum-v1 (topology updates
every 50 steps, so every method drops, grows or prunes several times) and hashes the policy's whole
``state_dict`` (weights, masks, targets, method state) and both optimizers' state. Prints one line per
configuration; with ``--compare``, exits 1 when any fingerprint differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

import torch
from stable_baselines3 import SAC, TD3

from sparse_rl import SparseSACPolicy, SparseTD3Policy
from sparse_rl.topology import available_methods


def _hash_tree(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(str(t.dtype).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _hash_tree(h, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _hash_tree(h, item)
    else:
        h.update(repr(value).encode())


#: method options beyond the defaults, so that composed paths (prune, then RigL) and RigL's signals are covered too
EXTRA: dict[str, list[dict]] = {
    "rigl": [{"grow_signal": "accumulate", "grow_batches": 5}, {"grow_signal": "momentum", "rewire_dormant": True}],
    "snip": [{"then": "rigl", "score_batches": 2}],
    "grasp": [{"then": "rigl", "scope": "global"}],
    "granet": [{"grow_signal": "momentum", "initial_sparsity": 0.5}],
    "gmp": [{"scope": "global"}],
}


def fingerprint(algo: str, method: str, backend: str, options: dict | None = None, steps: int = 400) -> str:
    torch.manual_seed(0)
    cls, policy = (SAC, SparseSACPolicy) if algo == "sac" else (TD3, SparseTD3Policy)
    kwargs = dict(sparsity=0.9, topology=method, update_interval=50, backend=backend, topology_kwargs=options or {})
    model = cls(policy, "Pendulum-v1", seed=0, learning_starts=100, batch_size=64, policy_kwargs=kwargs, device="cpu")
    model.learn(steps)
    h = hashlib.sha256()
    _hash_tree(h, model.policy.state_dict())
    for name in ("actor", "critic"):
        _hash_tree(h, getattr(model.policy, name).optimizer.state_dict())
    return h.hexdigest()[:16]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--compare", default=None)
    p.add_argument("--methods", nargs="*", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for algo in ("sac", "td3"):
        for method in args.methods or available_methods():
            for options in [{}, *EXTRA.get(method, [])]:
                for backend in ("sparse", "dense"):
                    extra = ",".join(f"{k}={v}" for k, v in options.items())
                    key = f"{algo}/{method}{f'[{extra}]' if extra else ''}/{backend}"
                    results[key] = fingerprint(algo, method, backend, options)
                    print(key, results[key], flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    if args.compare:
        before = json.load(open(args.compare))
        differ = [k for k in results if before.get(k) != results[k]]
        print(f"{len(results) - len(differ)}/{len(results)} identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
