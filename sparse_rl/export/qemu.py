"""The exported C on an emulated Cortex-M4: build it for the chip, run it on QEMU, read its actions back.

The policy's C (float32 or int8) is compiled with Debian's ``gcc-arm-none-eabi`` for a Cortex-M4F with the
hard-float ABI (``-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16``, the flags of the size report),
linked with newlib's semihosting library (``libnewlib-arm-none-eabi``, ``--specs=rdimon.specs``) behind a
minimal vector table that switches the FPU on, and run on QEMU's ``mps2-an386`` board (an MPS2 FPGA image
of a Cortex-M4, ``qemu-system-arm``). The observations to act on are compiled into the program; it prints
each action with 9 significant digits (exact for float32) through semihosting and exits through it too.

    python -m sparse_rl.export RUN --verify-on qemu-cortex-m4 [--quantize int8] [--steps 200]
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sparse_rl.export.compile import CORTEX_M4_FLAGS
from sparse_rl.export.graph import ActorGraph
from sparse_rl.export.runtime import concatenate_parts

TARGETS = ("qemu-cortex-m4",)
BOARD = "mps2-an386"

_STARTUP = """/* Minimal Cortex-M4F start-up for QEMU's mps2-an386: vector table, FPU on, then newlib's _start. */
extern void _start(void);
extern unsigned long __stack_top;
void reset_handler(void);
void fault_handler(void);
void reset_handler(void)
{
    *(volatile unsigned long *)0xE000ED88 |= (0xFUL << 20); /* CPACR: CP10 and CP11 (the FPU) full access */
    __asm volatile("dsb\\n isb");
    _start();
    for (;;) {}
}
void fault_handler(void) { for (;;) {} }
__attribute__((section(".vectors"), used)) const void *const vectors[16] = {
    &__stack_top, reset_handler, fault_handler, fault_handler, fault_handler, fault_handler, fault_handler,
    0, 0, 0, 0, fault_handler, fault_handler, 0, fault_handler, fault_handler,
};
"""

# Code at 0 (where the board reads its vector table), data and stack in the second SRAM at 0x20000000. QEMU
# loads each ELF segment where it runs, so .data needs no copy at start-up.
_LINKER = """MEMORY { CODE (rx) : ORIGIN = 0x00000000, LENGTH = 4M  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M }
ENTRY(reset_handler)
SECTIONS {
  .text : { KEEP(*(.vectors)) *(.text*) *(.rodata*) KEEP(*(.init)) KEEP(*(.fini)) . = ALIGN(4); } > CODE
  .ARM.exidx : { *(.ARM.exidx*) } > CODE
  .preinit_array : { PROVIDE_HIDDEN(__preinit_array_start = .); KEEP(*(.preinit_array))
                     PROVIDE_HIDDEN(__preinit_array_end = .); } > CODE
  .init_array : { PROVIDE_HIDDEN(__init_array_start = .); KEEP(*(SORT(.init_array.*))) KEEP(*(.init_array))
                  PROVIDE_HIDDEN(__init_array_end = .); } > CODE
  .fini_array : { PROVIDE_HIDDEN(__fini_array_start = .); KEEP(*(.fini_array)) PROVIDE_HIDDEN(__fini_array_end = .); } > CODE
  .data : { *(.data*) . = ALIGN(4); } > RAM
  .bss : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > RAM
  end = .; PROVIDE(_end = .); PROVIDE(__end__ = .);
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""


class TargetError(RuntimeError):
    """The target's toolchain or emulator is missing, or the program did not run to its end."""


def missing_tools() -> list[str]:
    """The Debian packages this harness needs that are not installed (empty: ready)."""
    missing = []
    if shutil.which("arm-none-eabi-gcc") is None:
        missing.append("gcc-arm-none-eabi")
    elif not _has_rdimon():
        missing.append("libnewlib-arm-none-eabi")
    if shutil.which("qemu-system-arm") is None:
        missing.append("qemu-system-arm")
    return missing


def _has_rdimon() -> bool:
    out = subprocess.run(["arm-none-eabi-gcc", "-print-file-name=rdimon.specs"], capture_output=True, text=True)
    return out.returncode == 0 and Path(out.stdout.strip()).is_file()


def _harness(observations: np.ndarray, prefix: str, discrete: bool = False) -> str:
    n, dim = observations.shape
    rows = ",\n".join("    {" + ", ".join(f"{float(v)!r}f" if np.isfinite(v) else "0.0f" for v in row) + "}"
                      for row in observations.astype(np.float32))
    up = prefix.upper()
    if discrete:
        act = f"""    int i;
    for (i = 0; i < {n}; ++i) printf("%d\\n", {prefix}_act(observations[i]));"""
    else:
        act = f"""    float action[{up}_ACT_DIM];
    int i, j;
    for (i = 0; i < {n}; ++i) {{
        {prefix}_act(observations[i], action);
        for (j = 0; j < {up}_ACT_DIM; ++j) printf(j ? " %.9g" : "%.9g", (double)action[j]);
        printf("\\n");
    }}"""
    return f"""/* Acts on {n} recorded observations and prints every action (semihosting). */
#include <stdio.h>
#include "policy.h"

static const float observations[{n}][{dim}] = {{
{rows}
}};

int main(void)
{{
{act}
    printf("done %d\\n", i);
    return 0;
}}
"""


def run_on_qemu(graph: ActorGraph, observations: np.ndarray, quantize: str = "none", prefix: str = "sparse_rl_policy",
                timeout: float = 300.0) -> np.ndarray:
    """The exported C's actions for ``observations`` (env observations, ``(n, env_obs_dim)``), computed on an
    emulated Cortex-M4F; ``(n, act_dim)`` float32 (a discrete policy: ``(n,)`` action indices).

    :raises TargetError: a tool is missing (naming the Debian package), or the program failed or timed out.
    """
    from sparse_rl.export import formats

    missing = missing_tools()
    if missing:
        raise TargetError(f"the Cortex-M4 harness needs Debian's {', '.join(missing)} (apt-get install {' '.join(missing)})")
    obs = graph.select_inputs(np.atleast_2d(np.asarray(observations, dtype=np.float32)))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, text in formats.c_sources(graph, prefix=prefix, quantize=quantize).items():
            (work / name).write_text(text)
        (work / "main.c").write_text(_harness(obs, prefix, graph.discrete))
        (work / "startup.c").write_text(_STARTUP)
        (work / "mps2.ld").write_text(_LINKER)
        elf = work / "policy.elf"
        cmd = ["arm-none-eabi-gcc", "-std=c99", "-O2", *CORTEX_M4_FLAGS, "--specs=rdimon.specs", "-T", str(work / "mps2.ld"),
               str(work / "startup.c"), str(work / "policy.c"), str(work / "main.c"), "-o", str(elf), "-lm"]
        built = subprocess.run(cmd, capture_output=True, text=True)
        if built.returncode != 0:
            raise TargetError(f"building for the Cortex-M4 failed:\n{built.stderr}")
        qemu = ["qemu-system-arm", "-M", BOARD, "-nographic", "-monitor", "none", "-serial", "none",
                "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
        try:
            ran = subprocess.run(qemu, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TargetError(f"the program did not finish on QEMU's {BOARD} within {timeout:.0f} s") from None
    lines = ran.stdout.strip().splitlines()
    if ran.returncode != 0 or not lines or lines[-1] != f"done {len(obs)}":
        raise TargetError(f"the program failed on QEMU's {BOARD} (exit {ran.returncode}):\n{ran.stdout[-2000:]}{ran.stderr}")
    if graph.discrete:
        return np.array([int(line) for line in lines[:-1]], dtype=np.int64)
    return np.array([[float(v) for v in line.split()] for line in lines[:-1]], dtype=np.float32)


def record_observations(model, env_id: str, steps: int, seed: int = 0, env_kwargs: dict | None = None,
                        wrappers: dict | None = None, run_dir: Path | None = None) -> np.ndarray:
    """``steps`` observations of a real trajectory of ``model``'s deterministic policy on its env (resets
    included), the inputs the deployed policy would see, flat: ``(steps, observation size)`` (images as the
    policy reads them, channels first where SB3 transposes them). With the ``run_dir`` of a run trained with
    ``normalize``, the policy acts on normalised observations and the raw ones are recorded."""
    from stable_baselines3.common.preprocessing import maybe_transpose

    from sparse_rl.envs import make_env

    env = make_env(env_id, n_envs=1, seed=seed, env_kwargs=env_kwargs, wrappers=wrappers)
    if run_dir is not None:
        from sparse_rl.models import normalized_for_run

        env = normalized_for_run(env, run_dir)
    raw = getattr(env, "get_original_obs", None)
    try:
        obs = env.reset()
        seen = []
        for _ in range(steps):
            record = raw() if raw is not None else obs
            if isinstance(record, dict):  # its parts concatenated in the space's order, as the policy reads them
                seen.append(concatenate_parts(record, list(model.observation_space.spaces))[0])
            else:
                seen.append(np.asarray(maybe_transpose(record, model.observation_space))[0].reshape(-1))
            action, _ = model.predict(obs, deterministic=True)
            obs, _, _, _ = env.step(action)
    finally:
        env.close()
    return np.asarray(seen, dtype=np.float32)


__all__ = ["BOARD", "TARGETS", "TargetError", "missing_tools", "record_observations", "run_on_qemu"]
