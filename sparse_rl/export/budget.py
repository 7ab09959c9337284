"""Training to a microcontroller's budget: the flash and RAM the exported C of an actor takes, before training.

Only the actor ships, so only the actor is sized. The byte model mirrors :func:`sparse_rl.export.formats.c_sources`:
per exported layer its biases (float32), with int8 weights one float32 scale per row, the CSR row pointers and
column indices in the smallest unsigned type that holds them, and one value per nonzero (4 bytes, or 1 for
int8); the action bounds; and the code of its loops, :data:`CODE_BYTES` per layer, as measured with
``arm-none-eabi-gcc -O2`` for a Cortex-M4F. RAM is the two static scratch buffers of the widest hidden layer.
On the quickstart run the model is within 2% of ``arm-none-eabi-size`` (tested where the toolchain is).

:func:`derive` picks, for a budget, the lowest actor sparsity (the densest actor) that fits, in float32 weights
or in int8 weights with a float32 input layer (``mixed``), whichever allows the denser actor. All-int8 is
chosen only on request: on HalfCheetah trajectories its input layer's rounding moved actions by up to 0.62
of the range, outside the on-target bounds, where ``mixed`` stayed within them (docs/embedded.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparse_rl.export.runtime import index_dtype, layer_quantize
from sparse_rl.sparse.distributions import connected_nonzeros

TARGETS = ("cortex-m4",)
#: bytes of code per exported layer (its loops), float32 and int8, arm-none-eabi-gcc -O2 for a Cortex-M4F
CODE_BYTES = {"none": 130, "int8": 160}
#: what ``deploy_quantize: auto`` chooses from (all-int8 only on request: see the module docstring)
AUTO_QUANTIZE = ("none", "mixed")
#: the sparsities a budget may choose from (the densest that fits wins)
MAX_SPARSITY = 0.999


class BudgetError(ValueError):
    """A budget that cannot be met or read; the message names it and what would work."""


def parse_size(value: str | int, key: str) -> int:
    """``12K``, ``12KB``, ``64k``, ``1M`` or a number of bytes (K = 1024)."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)[bB]?\s*", str(value))
        if not match:
            raise BudgetError(f"{key} must be a size such as 12K, 64KB, 1M or 4096, got {value!r}")
        size = float(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2].lower()]
    if size <= 0:
        raise BudgetError(f"{key} must be positive, got {value!r}")
    return int(size)


def actor_shapes(algo: str, obs_dim: int, act_dim: int, net_arch: Sequence[int]) -> tuple[list[tuple[int, int]], list[bool]]:
    """The weight shapes of the SB3 actor's linear layers (``(out, in)``) and which of them are exported
    (SAC's ``log_std`` head is not: the deterministic action uses the mean)."""
    widths = [obs_dim, *net_arch]
    hidden = [(widths[i + 1], widths[i]) for i in range(len(net_arch))]
    if algo == "sac":
        return [*hidden, (act_dim, widths[-1]), (act_dim, widths[-1])], [True] * (len(hidden) + 1) + [False]
    return [*hidden, (act_dim, widths[-1])], [True] * (len(hidden) + 1)


def c_bytes(shapes: Sequence[tuple[int, int]], nnz: Sequence[int], act_dim: int, quantize: str) -> dict[str, int]:
    """``{"flash", "ram"}`` of the C export of exported layers ``shapes`` with ``nnz`` nonzeros each
    (``quantize``: ``none``, ``int8`` or ``mixed``, each layer as :func:`runtime.layer_quantize` stores it)."""
    flash = 2 * act_dim * 4
    for i, ((out, inp), n) in enumerate(zip(shapes, nnz)):
        kind = layer_quantize(quantize, i)
        flash += CODE_BYTES[kind]
        flash += out * 4 * (2 if kind == "int8" else 1)
        flash += (out + 1) * np.dtype(index_dtype(int(n))).itemsize
        flash += max(int(n), 1) * np.dtype(index_dtype(max(inp - 1, 0))).itemsize
        flash += max(int(n), 1) * (1 if kind == "int8" else 4)
    width = max((out for out, _ in shapes[:-1]), default=1)
    return {"flash": flash, "ram": 2 * width * 4}


def predicted(algo: str, obs_dim: int, act_dim: int, net_arch: Sequence[int], sparsity: float, distribution: str,
              quantize: str) -> dict[str, int]:
    """The byte model's flash and RAM of the exported actor at ``sparsity``."""
    shapes, exported = actor_shapes(algo, obs_dim, act_dim, net_arch)
    counts, _ = connected_nonzeros(shapes, 1.0 - sparsity, distribution)  # as the policy draws them
    return c_bytes([s for s, e in zip(shapes, exported) if e], [n for n, e in zip(counts, exported) if e], act_dim, quantize)


@dataclass(frozen=True)
class Derived:
    sparsity: float
    quantize: str
    flash: int
    ram: int


def derive(algo: str, obs_dim: int, act_dim: int, net_arch: Sequence[int], distribution: str, flash: int | None,
           ram: int | None, quantize: str = "auto") -> Derived:
    """The densest actor (lowest sparsity, to 0.001) whose C fits ``flash`` and ``ram``, in ``quantize``
    (``auto``: float32 or ``mixed``, whichever allows the denser actor).

    :raises BudgetError: when no sparsity up to :data:`MAX_SPARSITY` fits, naming the smallest budget that would.
    """
    kinds = AUTO_QUANTIZE if quantize == "auto" else (quantize,)
    best: Derived | None = None
    for kind in kinds:
        def size(s: float, kind: str = kind) -> dict[str, int]:
            return predicted(algo, obs_dim, act_dim, net_arch, s, distribution, kind)

        tightest = size(MAX_SPARSITY)
        if (flash is not None and tightest["flash"] > flash) or (ram is not None and tightest["ram"] > ram):
            continue
        lo, hi = 0, round(MAX_SPARSITY * 1000)  # in thousandths; hi fits
        if flash is None or size(0.0)["flash"] <= flash:
            hi = 0
        while lo < hi:
            mid = (lo + hi) // 2
            if size(mid / 1000)["flash"] <= flash:  # type: ignore[operator]
                hi = mid
            else:
                lo = mid + 1
        found = size(hi / 1000)
        candidate = Derived(hi / 1000, kind, found["flash"], found["ram"])
        if best is None or candidate.sparsity < best.sparsity:
            best = candidate
    if best is None:
        floor = {k: predicted(algo, obs_dim, act_dim, net_arch, MAX_SPARSITY, distribution, k) for k in kinds}
        need_flash = min(v["flash"] for v in floor.values())
        need_ram = min(v["ram"] for v in floor.values())
        given = " and ".join(f"{k} {v} B" for k, v in (("flash", flash), ("RAM", ram)) if v is not None)
        smallest = " ".join(f"--set deploy_{k}={math.ceil(n / 1024 * 10) / 10}K"
                            for k, n, v in (("flash", need_flash, flash), ("ram", need_ram, ram)) if v is not None)
        raise BudgetError(
            f"no actor of net_arch {list(net_arch)} fits {given}: even at sparsity {MAX_SPARSITY} its C needs "
            f"{need_flash} B of flash and {need_ram} B of RAM (biases, row pointers, code, activations); the smallest "
            f"budget that works is {smallest}, or a narrower net_arch"
        )
    return best




def deploy_check(model, target: str, flash: int | None, ram: int | None, quantize: str) -> dict:
    """Whether the trained ``model``'s exported actor fits: ``arm-none-eabi-size`` of its compiled C where the
    toolchain is installed, the byte model otherwise. For ``summary.json``."""
    import tempfile
    from pathlib import Path

    from sparse_rl.export import formats
    from sparse_rl.export.compile import arm_toolchain, cortex_m4_size
    from sparse_rl.export.graph import extract_actor

    graph = extract_actor(model)
    if arm_toolchain() is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in formats.c_sources(graph, quantize=quantize).items():
                (Path(tmp) / name).write_text(text)
            size = cortex_m4_size(Path(tmp))
        how = "arm-none-eabi-size"
    else:
        size = c_bytes([layer.shape for layer in graph.layers], [layer.nnz for layer in graph.layers], graph.act_dim,
                       quantize)
        how = "byte model"
    fits = (flash is None or size["flash"] <= flash) and (ram is None or size["ram"] <= ram)
    return {"target": target, "quantize": quantize, "flash": int(size["flash"]), "ram": int(size["ram"]),
            "flash_budget": flash, "ram_budget": ram, "fits": bool(fits), "measured_by": how}


__all__ = ["CODE_BYTES", "TARGETS", "BudgetError", "Derived", "actor_shapes", "c_bytes", "deploy_check", "derive",
           "parse_size", "predicted"]
