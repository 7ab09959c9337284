"""Cost of one masked layer under each storage: forward+backward, the Adam step, and memory.

For each shape and density: the median time of forward + backward at a batch of 256 (dense storage:
``MaskedLinear``, dense kernels; sparse storage: ``SparseLinear``, CSR kernels), of one Adam step on the
layer's trained parameters (dense storage also pays the controller's gradient and weight masking, as in
training), and the bytes held for training: parameters, gradients, Adam's two moments, mask/ITOP buffers
and (sparse) the CSR index structure.

    python benchmarks/layer_cost.py
    python benchmarks/layer_cost.py --shapes 1024x1024 --densities 0.02 --reps 21
"""

from __future__ import annotations

import argparse
import copy

import torch

from sparse_rl.sparse import MaskedLinear, SparseLinear, random_mask
from sparse_rl.sparse.backend import median_seconds


def median_us(fn, reps: int) -> float:
    return 1e6 * median_seconds(fn, reps)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def measure(out_f: int, in_f: int, density: float, batch: int, reps: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    dense = MaskedLinear(in_f, out_f)
    dense.set_mask(random_mask(dense.weight.shape, max(1, round(density * out_f * in_f)), gen))
    sparse = SparseLinear.from_masked(copy.deepcopy(dense))  # its own parameters (from_masked shares the bias)
    x = torch.randn(in_f, batch, generator=gen).t()  # the layout neighbouring layers hand over
    grad_out = torch.randn(out_f, batch, generator=gen).t()
    row: dict[str, float] = {}
    for name, layer in (("dense", dense), ("sparse", sparse)):
        params = [layer.trained_weight, layer.bias]
        opt = torch.optim.Adam(params, lr=1e-4)

        def fwd_bwd(layer=layer) -> None:
            layer.zero_grad(set_to_none=True)
            layer(x).backward(grad_out)

        def adam(layer=layer, opt=opt) -> None:
            if layer.storage == "dense":  # what the controller adds around a dense-storage step
                layer.weight.grad.mul_(layer.mask)
            opt.step()
            if layer.storage == "dense":
                layer.weight.data.mul_(layer.mask)

        row[f"{name}_fb_us"] = median_us(fwd_bwd, reps)
        fwd_bwd()
        row[f"{name}_adam_us"] = median_us(adam, reps)
        state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        grads = [p.grad for p in params]
        buffers = [layer.mask, layer.explored]
        if name == "sparse":
            s = sparse.structure()
            buffers += [s.index, s.crow, s.col, s.crow_t, s.col_t, s.perm]
        row[f"{name}_bytes"] = tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(state) + tensor_bytes(buffers)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["256x256", "1024x1024"], help="OUTxIN")
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05, 0.02])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}, medians of {args.reps}")
    print()
    print("| layer | density | fwd+bwd dense µs | sparse µs | speed-up | Adam dense µs | sparse µs | speed-up "
          "| training memory dense | sparse |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        out_f, in_f = (int(v) for v in shape.lower().split("x"))
        for density in args.densities:
            r = measure(out_f, in_f, density, args.batch, args.reps)
            print(
                f"| {out_f}x{in_f} | {density:g} | {r['dense_fb_us']:.0f} | {r['sparse_fb_us']:.0f} "
                f"| {r['dense_fb_us'] / r['sparse_fb_us']:.2f}x | {r['dense_adam_us']:.0f} | {r['sparse_adam_us']:.0f} "
                f"| {r['dense_adam_us'] / r['sparse_adam_us']:.2f}x | {r['dense_bytes'] / 2**20:.2f} MiB "
                f"| {r['sparse_bytes'] / 2**20:.2f} MiB |"
            )


if __name__ == "__main__":
    main()
