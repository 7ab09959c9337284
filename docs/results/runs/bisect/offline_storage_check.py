"""Seed 0 of sparse_rl+all (HalfCheetah-v5, 90%) with its actor's 256x17 first layer on CSR and on dense
kernels, trained on the same replay data: both collect the first 10k (random) steps, identical in both, then
only gradient steps, no acting. Prints, every 250 steps, how many mask entries and how much of the weights
differ between the two.

    python docs/results/runs/bisect/offline_storage_check.py [GRADIENT_STEPS]   # default 2000; repository root

Then the batch-1 forward of one such layer on both storages (how the agent acts).
"""

import json
import os
import sys
import tempfile

import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

torch.set_num_threads(1)
from sparse_rl.config import resolve_config  # noqa: E402
from sparse_rl.run_directory import build_model  # noqa: E402
from sparse_rl.sparse import backend  # noqa: E402
from sparse_rl.sparse.layers import MaskedLinear, SparseLinear, random_mask  # noqa: E402

STORED = "docs/results/runs/nonstationary/HalfCheetah-v5/sparse_rl+all-0.9-s0/config.yaml"


class StopAt(BaseCallback):
    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        return self.num_timesteps < self.steps


def trained(actor_first_break_even: float, gradient_steps: int) -> dict[int, dict[str, torch.Tensor]]:
    cache = tempfile.mkdtemp()
    os.environ["SPARSE_RL_CACHE_DIR"] = cache
    backend._memory.clear()
    shapes = {(256, 17): actor_first_break_even, (256, 23): 0.0, (256, 256): 0.2, (6, 256): 0.0, (1, 256): 0.0}
    with open(os.path.join(cache, "break_even.json"), "w") as f:
        json.dump({backend._key(o, i, 256): v for (o, i), v in shapes.items()}, f)
    config = resolve_config("sac", "HalfCheetah-v5", "rigl", yaml.safe_load(open(STORED))["config"])
    model = build_model("sac", config, make_vec_env("HalfCheetah-v5", n_envs=1, seed=0), seed=0)
    print("actor storage:", [layer.storage for layer in model.policy.actor_topology.layers])
    model.learn(150_000, callback=StopAt(10_000))  # the 150k schedule, stopped where training starts
    states = {}
    for done in range(250, gradient_steps + 1, 250):
        model.train(gradient_steps=250, batch_size=256)
        states[done] = {k: v.clone() for k, v in model.policy.state_dict().items() if torch.is_tensor(v)}
    return states


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    csr, dense = trained(0.6, steps), trained(0.0, steps)
    for done in csr:
        a, b = csr[done], dense[done]
        masks = sum(int((a[k] != b[k]).sum()) for k in a if k.endswith("mask"))
        weights = max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())
        print(f"{done} gradient steps: mask entries that differ {masks}, largest weight difference {weights:.1e}")
    generator = torch.Generator().manual_seed(0)
    layer = MaskedLinear(17, 256)
    layer.set_mask(random_mask(layer.weight.shape, round(0.35 * 256 * 17), generator))
    sparse = SparseLinear.from_masked(layer)
    with torch.no_grad():
        for batch in (1, 256):
            x = torch.randn(batch, 17, generator=generator)
            gap = float((sparse(x) - layer(x)).abs().max())
            print(f"256x17 layer at density 0.35, batch {batch}: largest |CSR - dense| {gap:.1e}")


if __name__ == "__main__":
    main()
