"""Compiling generated C: a host shared library for ctypes, and Cortex-M4 objects for sizes."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

GCC_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-O2"]
CORTEX_M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return proc.stderr


class CPolicy:
    """The generated C compiled by the host ``gcc`` into a shared library, called through ctypes; ``discrete``:
    the function returns an action index (``int <prefix>_act(const float *obs)``)."""

    def __init__(self, c_dir: Path, prefix: str, obs_dim: int, act_dim: int, extra_flags: list[str] | None = None,
                 discrete: bool = False):
        self._tmp = tempfile.TemporaryDirectory()
        lib = Path(self._tmp.name) / "libpolicy.so"
        self.warnings = _run(
            ["gcc", *GCC_FLAGS, *(extra_flags or []), "-fPIC", "-shared", str(c_dir / "policy.c"), "-o", str(lib), "-lm"]
        )
        self._lib = ctypes.CDLL(str(lib))
        self._fn = getattr(self._lib, f"{prefix}_act")
        self._fn.restype = ctypes.c_int if discrete else None
        self._fn.argtypes = [ctypes.POINTER(ctypes.c_float)] + ([] if discrete else [ctypes.POINTER(ctypes.c_float)])
        self.obs_dim, self.act_dim, self.discrete = obs_dim, act_dim, discrete

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float32)
        batch = obs.reshape(-1, self.obs_dim)
        fptr = ctypes.POINTER(ctypes.c_float)
        if self.discrete:
            return np.array([self._fn(row.ctypes.data_as(fptr)) for row in batch], dtype=np.int64).reshape(obs.shape[:-1])
        out = np.empty((len(batch), self.act_dim), dtype=np.float32)
        for i in range(len(batch)):
            self._fn(batch[i].ctypes.data_as(fptr), out[i].ctypes.data_as(fptr))
        return out.reshape((*obs.shape[:-1], self.act_dim))


def arm_toolchain() -> str | None:
    """Path of ``arm-none-eabi-gcc`` if installed (Debian package ``gcc-arm-none-eabi``)."""
    return shutil.which("arm-none-eabi-gcc")


def cortex_m4_size(c_dir: Path) -> dict[str, int]:
    """Compile ``policy.c`` for a Cortex-M4F and return ``arm-none-eabi-size`` numbers:
    ``flash = text + data`` and ``ram = data + bss`` (bytes)."""
    if arm_toolchain() is None:
        raise RuntimeError("arm-none-eabi-gcc not found (install Debian's gcc-arm-none-eabi)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / "policy.o"
        _run(["arm-none-eabi-gcc", *GCC_FLAGS, *CORTEX_M4_FLAGS, "-c", str(c_dir / "policy.c"), "-o", str(obj)])
        out = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}
