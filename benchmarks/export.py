"""Export benchmark: latency, bytes, Cortex-M4 size and instructions per call of exported actors.

For SAC actors of HalfCheetah-v5 (256x256, ERK masks) at sparsity 0, 0.9, 0.95, 0.98, and N:M-structured
ones (2:4, 1:4, 1:8: uniform, every sparse layer exactly N:M; each also exported with the same masks in
the CSR layout, "as CSR", to isolate the index cost), in one run:
batch-1 median latency of torch, ONNX Runtime, the numpy runtime, C float32 and C int8 (sparse CSR and
the dense C of the same network); bytes of weights per format; Cortex-M4F flash/RAM
(arm-none-eabi-size, when installed); and, as a deterministic proxy for a microcontroller without
SIMD, instructions executed per call (valgrind callgrind on a scalar build, -O2 -fno-tree-vectorize).

    python benchmarks/export.py            # prints Markdown tables
    python benchmarks/export.py --sparsities 0.0 --structures 2:4 1:8
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "policy.h"
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1000, reps = argc > 2 ? atoi(argv[2]) : 15, i, j;
    float obs[SPARSE_RL_POLICY_OBS_DIM], act[SPARSE_RL_POLICY_ACT_DIM], sink = 0.0f;
    for (i = 0; i < SPARSE_RL_POLICY_OBS_DIM; ++i) obs[i] = 0.1f * (float)(i % 7) - 0.3f;
    for (j = 0; j < reps; ++j) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (i = 0; i < n; ++i) { obs[i % SPARSE_RL_POLICY_OBS_DIM] += 1e-6f; sparse_rl_policy_act(obs, act); sink += act[0]; }
        clock_gettime(CLOCK_MONOTONIC, &b);
        printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    }
    fprintf(stderr, "%f\n", sink);
    return 0;
}
"""


def build(c_dir: Path, flags: list[str]) -> Path:
    (c_dir / "bench.c").write_text(HARNESS)
    exe = c_dir / "bench"
    subprocess.run(
        [
            "gcc",
            "-std=gnu99",
            *flags,
            "-I",
            str(c_dir),
            str(c_dir / "policy.c"),
            str(c_dir / "bench.c"),
            "-o",
            str(exe),
            "-lm",
        ],
        check=True,
    )
    return exe


def c_latency_us(c_dir: Path) -> float:
    exe = build(c_dir, ["-O2"])
    out = subprocess.run([str(exe), "2000", "15"], capture_output=True, text=True, check=True).stdout
    return statistics.median(float(v) for v in out.split()) / 1000


def instructions_per_call(c_dir: Path, calls: int = 200) -> float:
    exe = build(c_dir, ["-O2", "-fno-tree-vectorize"])
    out_file = c_dir / "callgrind.out"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out_file}",
            "--toggle-collect=sparse_rl_policy_act",
            str(exe),
            str(calls),
            "1",
        ],
        capture_output=True,
        check=True,
    )
    for line in out_file.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1]) / calls
    raise RuntimeError("no callgrind summary")


def median_latency_us(fn, n: int = 2000, reps: int = 7) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.9, 0.95, 0.98])
    parser.add_argument("--structures", nargs="*", default=["2:4", "1:4", "1:8"], help="N:M structures")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import onnxruntime as ort
    from stable_baselines3 import SAC

    from sparse_rl import SparseSACPolicy
    from sparse_rl.export import cli
    from sparse_rl.export.compile import arm_toolchain, cortex_m4_size
    from sparse_rl.export.graph import extract_actor
    from sparse_rl.export.runtime import SparsePolicy
    from sparse_rl.models import bind

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    obs = np.linspace(-0.5, 0.5, 17, dtype=np.float32)
    lat_rows, size_rows, instr_rows = [], [], []
    ort_dense_us = None
    import copy

    cases = []  # (row label, policy kwargs, whether to drop the N:M layout)
    for sparsity in args.sparsities:
        cases.append((str(sparsity), dict(sparsity=sparsity), False))
    for structure in args.structures:
        n, m = (int(x) for x in structure.split(":"))
        kwargs = dict(sparsity=1 - n / m, distribution="uniform", structure=structure, topology="rigl")
        cases += [(f"{structure} N:M", kwargs, False), (f"{structure} as CSR", kwargs, True)]
    with tempfile.TemporaryDirectory() as tmp:
        for case, (sparsity, kwargs, as_csr) in enumerate(cases):
            model = bind(SAC(SparseSACPolicy, "HalfCheetah-v5", policy_kwargs=kwargs, seed=0))
            graph = extract_actor(model)
            if as_csr:
                graph = copy.deepcopy(graph)
                for layer in graph.layers:
                    layer.group = None
            d = Path(tmp) / f"case{case}"
            paths = {
                "c": cli.export(graph, "c", d / "c"),
                "c8": cli.export(graph, "c", d / "c8", quantize="int8"),
                "cd": cli.export(graph, "c", d / "cd", dense=True),
                "cd8": cli.export(graph, "c", d / "cd8", quantize="int8", dense=True),
                "npz": cli.export(graph, "sparse", d / "p.npz"),
                "npz8": cli.export(graph, "sparse", d / "p8.npz", quantize="int8"),
                "onnx": cli.export(graph, "onnx", d / "p.onnx"),
            }
            actor = model.policy.actor
            t_obs = torch.as_tensor(obs)[None]

            def torch_call(actor=actor, t_obs=t_obs):
                with torch.no_grad():
                    actor(t_obs, deterministic=True)

            sess = ort.InferenceSession(str(paths["onnx"]), opts, providers=["CPUExecutionProvider"])
            np_policy = SparsePolicy.load(paths["npz"])
            lat = {
                "torch": median_latency_us(torch_call),
                "onnxruntime": median_latency_us(lambda sess=sess: sess.run(None, {"obs": obs[None]})),
                "numpy": median_latency_us(lambda p=np_policy: p.act(obs)),
                "C f32": c_latency_us(paths["c"]),
                "C int8": c_latency_us(paths["c8"]),
                "dense C f32": c_latency_us(paths["cd"]),
            }
            if sparsity == "0.0" or ort_dense_us is None:
                ort_dense_us = lat["onnxruntime"]
            lat_rows.append((sparsity, lat))
            dense_bytes = graph.stats()["weights"] * 4
            sizes = {
                "npz f32": paths["npz"].stat().st_size,
                "npz int8": paths["npz8"].stat().st_size,
                "onnx": paths["onnx"].stat().st_size,
                "C f32 arrays": cli.c_weight_bytes(graph),
                "C int8 arrays": cli.c_weight_bytes(graph, "int8"),
            }
            m4 = {}
            if arm_toolchain():
                for key in ("c", "c8", "cd"):
                    m4[key] = cortex_m4_size(paths[key])
            size_rows.append((sparsity, graph.stats(), dense_bytes, sizes, m4))
            instr_rows.append((sparsity, {k: instructions_per_call(paths[k]) for k in ("c", "c8", "cd", "cd8")}))

    print("Batch-1 latency, median µs (1 thread; C timed in a C loop, Python runtimes include call overhead):\n")
    print(
        "| sparsity / structure | torch | onnxruntime | numpy runtime | C f32 | C int8 | dense C f32 | C f32 vs dense ORT | C f32 vs dense C |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s, lat in lat_rows:
        print(
            f"| {s} | "
            + " | ".join(f"{lat[k]:.1f}" for k in ("torch", "onnxruntime", "numpy", "C f32", "C int8", "dense C f32"))
            + f" | {ort_dense_us / lat['C f32']:.1f}× | {lat['dense C f32'] / lat['C f32']:.1f}× |"
        )
    print("\nBytes (weights; dense float32 = weights × 4):\n")
    print(
        "| sparsity / structure | nonzeros | dense f32 | npz f32 | npz int8 | ONNX | C f32 arrays | C int8 arrays | C f32 / dense | C int8 / dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s, st, dense_bytes, sizes, _ in size_rows:
        print(
            f"| {s} | {st['nonzeros']} | {dense_bytes} | "
            + " | ".join(str(sizes[k]) for k in sizes)
            + f" | {sizes['C f32 arrays'] / dense_bytes:.3f} | {sizes['C int8 arrays'] / dense_bytes:.3f} |"
        )
    if size_rows and size_rows[0][4]:
        print(
            "\nCortex-M4F object sizes (arm-none-eabi-gcc -O2 -mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16), bytes:\n"
        )
        print("| sparsity / structure | C f32 flash | C f32 RAM | C int8 flash | C int8 RAM | dense C f32 flash |")
        print("|---|---|---|---|---|---|")
        for s, _, _, _, m4 in size_rows:
            print(
                f"| {s} | {m4['c']['flash']} | {m4['c']['ram']} | {m4['c8']['flash']} | {m4['c8']['ram']} | {m4['cd']['flash']} |"
            )
    print("\nInstructions per call (callgrind, scalar build -O2 -fno-tree-vectorize):\n")
    print("| sparsity / structure | C f32 | C int8 | dense C f32 | dense C int8 | C f32 / dense C f32 |")
    print("|---|---|---|---|---|---|")
    for s, ins in instr_rows:
        print(f"| {s} | {ins['c']:.0f} | {ins['c8']:.0f} | {ins['cd']:.0f} | {ins['cd8']:.0f} | {ins['c'] / ins['cd']:.3f} |")


if __name__ == "__main__":
    main()
