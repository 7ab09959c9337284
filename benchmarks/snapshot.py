"""Fingerprints of what every topology method computes: a refactor that moves code must leave them unchanged.

    python benchmarks/snapshot.py --out /tmp/before.json      # before the change
    python benchmarks/snapshot.py --out /tmp/after.json --compare /tmp/before.json

Each configuration trains SAC or TD3 with one method for a few hundred steps on Pendulum-v1 (topology updates
every 50 steps, so every method drops, grows or prunes several times) and hashes the policy's whole
``state_dict`` (weights, masks, targets, method state) and both optimizers' state. Prints one line per
configuration; with ``--compare``, exits 1 when any fingerprint differs. Masks are hashed as booleans, so a
change of their saved dtype alone is no change.

First come the campaign's own cells (``benchmarks/sweeps/campaign.yml``) on HalfCheetah-v5, built as
``python -m sparse_rl.train`` builds them (600 steps, topology updates every 100): a change that keeps these
identical leaves the campaign's stored runs valid. ``--campaign-only`` stops there.
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

#: buffers that hold a topology: hashed as booleans, whatever dtype ``state_dict`` stores them in
TOPOLOGY_KEYS = ("mask", "explored")


def _hash_tree(h: Any, value: Any, key: str = "") -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if key.rpartition(".")[2] in TOPOLOGY_KEYS:
            t = t != 0
        h.update(str(t.dtype).encode())
        h.update(t.contiguous().cpu().numpy().tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _hash_tree(h, value[key], str(key))
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


def _hash_model(model: Any) -> str:
    """Weights, masks, both optimizers' state and each topology controller's training state, hashed the same
    wherever the code keeps the latter (the policy's ``state_dict`` before 0.2, the optimizer's since)."""
    h = hashlib.sha256()
    _hash_tree(h, {k: v for k, v in model.policy.state_dict().items() if not k.endswith("_extra_state")})
    for name in ("actor", "critic"):
        state = getattr(model.policy, name).optimizer.state_dict()
        _hash_tree(h, {k: v for k, v in state.items() if k != "sparse_rl_topology"})
    for name, ctrl in sorted(getattr(model.policy, "topology_controllers", dict)().items()):
        h.update(name.encode())
        _hash_tree(h, ctrl.training_state() if hasattr(ctrl, "training_state") else ctrl.get_extra_state())
    return h.hexdigest()[:16]


def fingerprint(algo: str, method: str, backend: str, options: dict | None = None, steps: int = 400) -> str:
    torch.manual_seed(0)
    cls, policy = (SAC, SparseSACPolicy) if algo == "sac" else (TD3, SparseTD3Policy)
    kwargs = dict(sparsity=0.9, topology=method, update_interval=50, backend=backend, topology_kwargs=options or {})
    model = cls(policy, "Pendulum-v1", seed=0, learning_starts=100, batch_size=64, policy_kwargs=kwargs, device="cpu")
    model.learn(steps)
    return _hash_model(model)


#: the campaign's cells (benchmarks/sweeps/campaign.yml) on HalfCheetah-v5, built as ``sparse_rl.train`` builds them
CAMPAIGN = {
    "dense": {"preset": "dense"},
    "static": {"preset": "static"},
    "set": {"preset": "set"},
    "rigl": {"preset": "rigl"},
    "gmp": {"preset": "gmp", "backend": "dense"},
    "rlx2": {"preset": "rlx2", "actor_sparsity": None, "critic_sparsity": None, "n_step_delay": 300,
             "buffer_min_size": 200, "buffer_check_interval": 100},
}


def campaign_fingerprint(variant: str, steps: int = 600) -> str:
    """One campaign cell for ``steps`` env steps (topology updates every 100), hashed as :func:`fingerprint`."""
    from sparse_rl.config import resolve_config
    from sparse_rl.envs import make_env
    from sparse_rl.models import build_model

    options = dict(CAMPAIGN[variant])
    preset = options.pop("preset")
    overrides = {"sparsity": 0.9, "distribution": "erk", "backend": "sparse", "learning_starts": 200,
                 "batch_size": 64, "update_interval": 100, "n_timesteps": steps, **options}
    if preset == "dense":
        overrides = {k: v for k, v in overrides.items() if k in ("learning_starts", "batch_size", "n_timesteps")}
    config = resolve_config("sac", "HalfCheetah-v5", preset, overrides)
    torch.manual_seed(0)
    model = build_model("sac", config, make_env("HalfCheetah-v5", n_envs=1, seed=0), seed=0)
    model.learn(steps)
    return _hash_model(model)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--compare", default=None)
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--campaign-only", action="store_true", help="only the campaign's HalfCheetah cells")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = {}
    for variant in CAMPAIGN:
        key = f"campaign/HalfCheetah-v5/{variant}"
        results[key] = campaign_fingerprint(variant)
        print(key, results[key], flush=True)
    if args.campaign_only:
        args.methods = []
    for algo in ("sac", "td3"):
        for method in available_methods() if args.methods is None else args.methods:
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
        differ = [k for k in results if k in before and before[k] != results[k]]
        print(f"{len(results) - len(differ)}/{len(results)} identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
