"""Which layers compute sparsely: the ``backend`` choice and its measured break-even density (torch only).

- ``"dense"``: every layer keeps dense storage (:class:`~sparse_rl.sparse.MaskedLinear`: dense kernels on
  a weight with exact zeros).
- ``"sparse"``: every layer that has absent connections uses sparse storage
  (:class:`~sparse_rl.sparse.SparseLinear`: CSR kernels, optimizer state over the nonzeros).
- ``"auto"`` (default): per layer, sparse storage where the layer's density is below the **break-even
  density measured on this machine** for its shape, dense otherwise. The measurement (forward + backward
  of one layer at a batch of 256, dense and sparse timed back to back in alternating order, the median of
  their ratios, over a grid of densities; sparse must be :data:`CALIBRATION_MARGIN` of dense's time or
  less) takes from milliseconds for small layers to a few seconds for 1024×1024, and is cached per
  machine, torch version, thread count and shape in ``$SPARSE_RL_CACHE_DIR`` (default
  ``~/.cache/sparse_rl``) ``/break_even.json``. On devices other than the CPU, ``auto`` keeps dense
  storage (not measured yet).

The two storages round differently when the agent acts (a batch of 1), so runs of one seed under ``auto``
agree bit for bit only where ``auto`` chose the same storage (a run's ``summary.json`` records each
layer's); ``"dense"`` and ``"sparse"`` do not depend on a measurement. The margin keeps layers where CSR
gains under a tenth on dense storage (the small first layers, whose choice a plain comparison of noisy
timings flipped); a layer whose density lies close to its break-even can still fall either way on a
loaded machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

BACKENDS = ("auto", "sparse", "dense")
#: densities tried by the calibration, highest first
CALIBRATION_DENSITIES = (0.6, 0.45, 0.35, 0.27, 0.2, 0.15, 0.11, 0.08, 0.06, 0.04, 0.03, 0.02, 0.01)
CALIBRATION_BATCH = 256
#: sparse storage is chosen at a density only where it takes at most this fraction of dense's time
CALIBRATION_MARGIN = 0.9
#: seconds of timing per density tried (each a pair of calls), within the bounds on repetitions below
CALIBRATION_BUDGET_S = 0.1
CALIBRATION_REPS = (15, 301)
#: part of the cache key: entries measured by an earlier method are measured again
CALIBRATION_VERSION = 2

_memory: dict[str, float] = {}


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return str(backend)


def cache_path() -> Path:
    root = os.environ.get("SPARSE_RL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sparse_rl")
    return Path(root) / "break_even.json"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _key(out_features: int, in_features: int, batch: int) -> str:
    threads = torch.get_num_threads()
    return (
        f"{cpu_name()}|torch {torch.__version__}|threads {threads}|{out_features}x{in_features}|batch {batch}"
        f"|calibration {CALIBRATION_VERSION}"
    )


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of ``fn()`` over ``reps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_ratio(dense: Callable[[], object], sparse: Callable[[], object], reps: int) -> float:
    """Median over ``reps`` pairs of ``sparse()``'s wall time over ``dense()``'s, the two called back to back
    in alternating order (after warming both up), so that load from other processes and the order of the
    calls weigh on both alike."""
    for _ in range(3):
        dense()
        sparse()
    order = (("dense", dense), ("sparse", sparse))
    ratios = []
    for i in range(reps):
        times = {}
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - start
        ratios.append(times["sparse"] / max(times["dense"], 1e-9))
    return statistics.median(ratios)


def measure_break_even(out_features: int, in_features: int, batch: int = CALIBRATION_BATCH, reps: int | None = None) -> float:
    """The highest density of :data:`CALIBRATION_DENSITIES` from which down sparse storage takes at most
    :data:`CALIBRATION_MARGIN` of dense's time for forward + backward of one ``[out, in]`` layer at
    ``batch`` (0.0: never). ``reps`` pairs per density (default: what :data:`CALIBRATION_BUDGET_S` allows,
    within :data:`CALIBRATION_REPS`). Measures now."""
    with torch.random.fork_rng(devices=[]):  # measuring must not move the global RNG (seeded runs stay exact)
        return _measure(out_features, in_features, batch, reps)


def _measure(out_features: int, in_features: int, batch: int, reps: int | None) -> float:
    from sparse_rl.sparse.layers import MaskedLinear, SparseLinear
    from sparse_rl.sparse.networks import random_mask

    generator = torch.Generator().manual_seed(0)
    # Inputs and output gradients in the layout sparse neighbours produce: transposed views of contiguous
    # [features, batch] tensors (see sparse_rl.sparse.kernels), so a layer is judged in the network it joins.
    x = torch.randn(in_features, batch, generator=generator).t()
    grad_out = torch.randn(out_features, batch, generator=generator).t()
    dense = MaskedLinear(in_features, out_features)

    def step(layer: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            inp = x.detach().requires_grad_(True)
            layer.zero_grad(set_to_none=True)
            layer(inp).backward(grad_out)

        return run

    if reps is None:  # as many pairs as the budget allows: cheap layers get many, so noise averages out
        run = step(dense)
        run()
        start = time.perf_counter()
        run()
        pair = 2 * max(time.perf_counter() - start, 1e-9)
        reps = int(min(max(CALIBRATION_BUDGET_S / pair, CALIBRATION_REPS[0]), CALIBRATION_REPS[1]))
    numel = out_features * in_features
    break_even = 0.0
    for density in reversed(CALIBRATION_DENSITIES):  # lowest first: stop at the first loss
        nnz = max(1, round(density * numel))
        dense.set_mask(random_mask(dense.weight.shape, nnz, generator))
        sparse = SparseLinear.from_masked(dense)
        if paired_ratio(step(dense), step(sparse), reps) > CALIBRATION_MARGIN:
            break
        break_even = density
    return break_even


def break_even_density(out_features: int, in_features: int, batch: int = CALIBRATION_BATCH) -> float:
    """:func:`measure_break_even`, cached in memory and in :func:`cache_path` (written atomically)."""
    key = _key(out_features, in_features, batch)
    if key in _memory:
        return _memory[key]
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    value = cached.get(key)
    if not isinstance(value, (int, float)):
        value = measure_break_even(out_features, in_features, batch)
        cached[key] = value
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".break_even.", delete=False) as f:
                json.dump(cached, f, indent=1, sort_keys=True)
            os.replace(f.name, path)
        except OSError:
            pass  # an unwritable cache only costs a new measurement next time
    _memory[key] = float(value)
    return float(value)


def use_sparse_storage(backend: str, out_features: int, in_features: int, nnz: int, device: torch.device) -> bool:
    """Whether a layer with ``nnz`` active connections computes sparsely under ``backend``."""
    check_backend(backend)
    numel = out_features * in_features
    if backend == "dense" or nnz >= numel:
        return False
    if backend == "sparse":
        return True
    if torch.device(device).type != "cpu":
        return False
    return nnz / numel <= break_even_density(out_features, in_features)


__all__ = [
    "BACKENDS",
    "break_even_density",
    "cache_path",
    "check_backend",
    "cpu_name",
    "measure_break_even",
    "use_sparse_storage",
]
