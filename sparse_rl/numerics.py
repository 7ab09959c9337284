"""What decides a run's floating-point sums, pinned where it can be and recorded where it cannot.

A seeded run repeats bit for bit only where every sum is taken in the same order. On x86-64, torch's
CPU build calls Intel MKL for its GEMMs and sparse products, and MKL picks a code path per CPU at run
time: a run on an AVX-512 machine and its twin on an AVX2 machine part in the last bit of the first
gradient step, and an RL run magnifies that into a different learning curve. ``cpu_kernels="avx2"``
pins MKL's path to its AVX2 one (MKL's conditional numerical reproducibility, ``MKL_CBWR=AVX2``), which
every x86-64 CPU with AVX2 runs, so a config repeats on any of them. torch's own vectorised kernels
(``ATEN_CPU_CAPABILITY``) did not change a training's weights in our check (docs/benchmarks.md), so
they are recorded, not pinned.

MKL reads ``MKL_CBWR`` once, before its first call, which happens while torch loads: the variable must
be in the environment of the process. ``python -m sparse_rl.train`` re-executes itself with it set
(:func:`pinned_environment`); an in-process caller is told to set it (:func:`check_pinned`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

#: allowed values of the ``cpu_kernels`` config key, and the MKL_CBWR value each one needs (None: MKL's own)
CPU_KERNELS: dict[str, str | None] = {"native": None, "avx2": "AVX2"}


class NumericsError(ValueError):
    """A ``cpu_kernels`` setting this machine or process cannot honour; the message says why."""


def check_cpu_kernels(value: str) -> None:
    """Raise :class:`NumericsError` unless ``value`` is a known setting this machine can run."""
    if value not in CPU_KERNELS:
        raise NumericsError(f"cpu_kernels must be one of {', '.join(CPU_KERNELS)}, got {value!r}")
    if CPU_KERNELS[value] is None:
        return
    import torch

    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkl.is_available():
        raise NumericsError(
            f"cpu_kernels={value!r} pins Intel MKL's code path, which needs an x86-64 CPU and a torch built with MKL "
            f"(this is {platform.machine()}, MKL {'present' if torch.backends.mkl.is_available() else 'absent'}); "
            "use cpu_kernels=native"
        )
    if "avx2" not in _cpu_flags():
        raise NumericsError(f"cpu_kernels={value!r} needs a CPU with AVX2; this one has none: use cpu_kernels=native")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"avx2"}  # no /proc/cpuinfo to read: MKL itself will refuse a path the CPU lacks


def pinned_environment(value: str) -> dict[str, str] | None:
    """The environment a process needs for ``cpu_kernels=value``; None when the current one already fits."""
    wanted = CPU_KERNELS[value]
    if wanted is None or os.environ.get("MKL_CBWR") == wanted:
        return None
    return {**os.environ, "MKL_CBWR": wanted}


def check_pinned(value: str) -> None:
    """Raise :class:`NumericsError` when this process cannot run ``cpu_kernels=value`` (MKL already loaded)."""
    if pinned_environment(value) is not None:
        raise NumericsError(
            f"cpu_kernels={value!r} needs MKL_CBWR={CPU_KERNELS[value]} in the environment before torch loads; "
            f"run `MKL_CBWR={CPU_KERNELS[value]} python ...`, or train with `python -m sparse_rl.train`, which sets it"
        )


def machine_numerics() -> dict[str, Any]:
    """What selected this process's kernels: recorded in every run's ``summary.json``."""
    import torch

    from sparse_rl.sparse.backend import cpu_name

    return {
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": platform.machine(),
        "threads": torch.get_num_threads(),
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
    }


def code_version() -> dict[str, Any]:
    """The sparse_rl version and, for a git checkout, its commit and whether tracked files differ from it."""
    import sparse_rl

    info: dict[str, Any] = {"version": sparse_rl.__version__}
    root = Path(sparse_rl.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return info
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return info
    return {**info, "commit": commit, "dirty": bool(dirty)}


__all__ = ["CPU_KERNELS", "NumericsError", "check_cpu_kernels", "check_pinned", "code_version", "machine_numerics",
           "pinned_environment"]
