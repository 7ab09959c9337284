"""``python -m sparse_rl.export``: export a trained actor.

    python -m sparse_rl.export runs/cheetah --format c --out build/cheetah_c             # policy.h + policy.c
    python -m sparse_rl.export runs/cheetah --format c --quantize int8 --out build/c8
    python -m sparse_rl.export runs/cheetah --format sparse --out cheetah.npz            # numpy-only runtime
    python -m sparse_rl.export runs/cheetah --format onnx --out cheetah.onnx
    python -m sparse_rl.export runs/cheetah --report                                     # nnz, MACs, bytes
    python -m sparse_rl.export runs/cheetah --verify-on qemu-cortex-m4 [--quantize int8]  # C on an emulated M4
    python -m sparse_rl.export runs/cheetah --target cortex-m4 --flash 12K --ram 4K [--quantize int8]  # fits?

The input is a run directory or an SB3 ``.zip`` of a SAC, TD3, DDPG, TQC, CrossQ, PPO, A2C or DQN model (vector
observations, or NatureCNN/MinAtarCNN images); a discrete policy exports its argmax (an action index).
Outputs are built in a temporary location beside the target and renamed into place, so a failure leaves nothing partial behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from sparse_rl.export.graph import ActorGraph, ExportError, extract_actor
from sparse_rl.export.qemu import TARGETS
from sparse_rl.export.runtime import WEIGHT_NAMES

FORMATS = ("sparse", "onnx", "c")


def load_model(path: Path) -> Any:
    """An SB3 model from a run directory or a ``.zip``."""
    from sparse_rl.models import load_model_file, load_run_model
    from sparse_rl.run_directory import RunError

    if not path.exists():
        raise ExportError(f"{str(path)!r} does not exist")
    try:
        return load_run_model(path) if path.is_dir() else load_model_file(path)
    except RunError as err:
        raise ExportError(str(err)) from None


def load_graph(path: Path) -> ActorGraph:
    """The exportable graph of the model at ``path`` (a run directory or a ``.zip``); a model of a run trained
    with ``normalize`` (its directory, its ``model.zip`` or a checkpoint's) brings its observation statistics."""
    return _load_with_normalization(path)[1]


def _load_with_normalization(path: Path) -> tuple[Any, ActorGraph, dict[str, Any] | None]:
    """``(model, graph, normalisation statistics or None)`` of the model at ``path``."""
    from sparse_rl.envs.normalize import obs_normalization
    from sparse_rl.models import model_normalization
    from sparse_rl.run_directory import RunError

    model = load_model(path)
    try:
        state = model_normalization(path)
    except RunError as err:
        raise ExportError(str(err)) from None
    return model, extract_actor(model, obs_normalization(state) if state is not None else None), state


def _place_file(out: Path, data: bytes) -> None:
    from sparse_rl.run_directory import atomic_write

    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as err:
        raise ExportError(f"cannot write {str(out)!r}: {err.strerror}") from None


def _place_dir(out: Path, files: dict[str, str]) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as err:
        raise ExportError(f"cannot write {str(out)!r}: {err.strerror}") from None
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export(
    graph: ActorGraph, fmt: str, out: Path, quantize: str = "none", prefix: str = "sparse_rl_policy", dense: bool = False
) -> Path:
    """Write ``graph`` as ``fmt`` to ``out`` (a file, or a directory for C)."""
    from sparse_rl.export import formats

    if fmt == "sparse":
        _place_file(out, formats.sparse_file_bytes(graph, quantize))
    elif fmt == "onnx":
        if quantize != "none":
            raise ExportError("--quantize applies to the sparse and C formats, not ONNX")
        _place_file(out, formats.onnx_bytes(graph))
    elif fmt == "c":
        _place_dir(out, formats.c_sources(graph, prefix=prefix, quantize=quantize, dense=dense))
    else:
        raise ExportError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return out


def c_weight_bytes(graph: ActorGraph, quantize: str = "none", dense: bool = False) -> int:
    """Bytes of the ``const`` weight arrays of the generated C (values, indices, row pointers or N:M offsets,
    biases, scales)."""
    from sparse_rl.export.formats import layer_payload_bytes, layer_quantize

    total = 0
    for i, layer in enumerate(graph.layers):
        out, inp = layer.shape
        lq = layer_quantize(quantize, i)
        value = 1 if lq == "int8" else 4
        total += out * 4 + (out * 4 if lq == "int8" else 0)
        total += out * inp * value if dense else layer_payload_bytes(layer, lq)
    return total


def int8_error(graph: ActorGraph, n: int = 1000, seed: int = 0, quantize: str = "int8") -> dict[str, float]:
    """Error of the int8 export against float32, as fractions of the widest action range; a discrete policy:
    the fraction of observations whose action differs (``max`` and ``mean`` both)."""
    import numpy as np

    from sparse_rl.export import formats
    from sparse_rl.export.runtime import SparsePolicy

    obs = np.random.default_rng(seed).uniform(-1, 1, size=(n, graph.obs_dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p8.npz"
        path.write_bytes(formats.sparse_file_bytes(graph, quantize))
        actions = SparsePolicy.load(path).act(obs)
    if graph.discrete:
        differ = float(np.mean(actions != graph.forward(obs)))
        return {"max": differ, "mean": differ}
    diff = np.abs(actions - graph.forward(obs))
    span = float(np.max(graph.action_high - graph.action_low))
    return {"max": float(diff.max()) / span, "mean": float(diff.mean()) / span}


def report(graph: ActorGraph) -> list[str]:
    from sparse_rl.export import formats
    from sparse_rl.export.compile import arm_toolchain, cortex_m4_size

    s = graph.stats()
    what = "Q-network" if graph.algo == "dqn" else "policy" if graph.discrete else "actor"
    lines = [
        f"{what} ({graph.algo}): {graph.obs_dim} -> {' -> '.join(str(l.n_out) for l in graph.layers)}"
        f"{f' -> argmax of {graph.act_dim}' if graph.discrete else ''}, "
        f"nonzeros {s['nonzeros']} of {s['weights']} (density {s['density']:.4f}), MACs {s['macs']} (dense {s['dense_macs']})",
        *([f"inputs read: {graph.obs_dim} of the env's {graph.env_obs_dim} observation features "
           f"({', '.join(str(int(i)) for i in graph.input_index)}); the C function takes these, in this order, the "
           ".npz and ONNX take the whole observation"] if graph.input_index is not None else []),
        "",
        "| format | bytes | vs dense float32 weights |",
        "|---|---|---|",
    ]
    dense_bytes = s["weights"] * 4 + sum(l.shape[0] for l in graph.layers) * 4
    sizes = {
        "dense float32 weights + biases": dense_bytes,
        "sparse .npz float32": len(formats.sparse_file_bytes(graph)),
        "sparse .npz int8": len(formats.sparse_file_bytes(graph, "int8")),
        "onnx (dense initializers)": len(formats.onnx_bytes(graph)),
        "C float32 const arrays": c_weight_bytes(graph),
        "C int8 const arrays": c_weight_bytes(graph, "int8"),
        "C mixed const arrays (float32 input layer)": c_weight_bytes(graph, "mixed"),
    }
    lines += [f"| {k} | {v} | {v / dense_bytes:.3f} |" for k, v in sizes.items()]
    err = int8_error(graph)
    lines.append("")
    if graph.discrete:
        lines.append(f"int8 vs float32 over 1000 observations uniform in [-1, 1]: the action differs on "
                     f"{err['mean']:.1%} of them")
    else:
        lines.append(f"int8 vs float32 over 1000 observations uniform in [-1, 1]: max abs error {err['max']:.4f}, "
                     f"mean {err['mean']:.5f} (fractions of the action range)")
        mixed = int8_error(graph, quantize="mixed")
        lines.append(f"mixed (int8, float32 input layer) vs float32, the same observations: max abs error "
                     f"{mixed['max']:.4f}, mean {mixed['mean']:.5f}")
    if arm_toolchain() is None:
        lines += ["", "Cortex-M4 sizes: arm-none-eabi-gcc not found (apt-get install gcc-arm-none-eabi)"]
        return lines
    lines += ["", "Cortex-M4F (arm-none-eabi-gcc -O2, object file, bytes):", "", "| variant | flash | RAM |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, quantize, dense in (
            ("C float32", "none", False),
            ("C int8", "int8", False),
            ("C mixed (float32 input layer)", "mixed", False),
            ("dense C float32", "none", True),
        ):
            d = Path(tmp) / name.replace(" ", "_")
            d.mkdir()
            for fname, text in formats.c_sources(graph, quantize=quantize, dense=dense).items():
                (d / fname).write_text(text)
            size = cortex_m4_size(d)
            lines.append(f"| {name} | {size['flash']} | {size['ram']} |")
    return lines


#: the exported C against torch on a real trajectory: float32 exactly but for rounding, int8 within the bounds
#: docs/embedded.md documents (fractions of the widest action range)
VERIFY_TOL = {"none": {"max": 1e-5, "mean": 1e-5}, "int8": {"max": 0.15, "mean": 0.01},
              "mixed": {"max": 0.15, "mean": 0.01}}
#: a discrete policy's C against torch, the fraction of observations whose action differs: float32 never,
#: except on a near tie (:data:`NEAR_TIE`); int8 on at most 5%
VERIFY_DISCRETE_TOL = {"none": 0.0, "int8": 0.05, "mixed": 0.05}
#: two best outputs closer than this (relative to the larger's magnitude, at least 1) are a tie float32
#: rounding may break either way
NEAR_TIE = 1e-5


def discrete_disagreement(graph: ActorGraph, obs: Any, actions: Any, expected: Any) -> tuple[float, float]:
    """``(differ, beyond ties)``: the fractions of observations on which ``actions`` differ from ``expected``, all
    of them and those whose two best outputs (the float64 reference's) are not a near tie."""
    import numpy as np

    scores = np.atleast_2d(graph.scores(obs))
    top = np.sort(scores, axis=-1)[:, -2:]
    tie = (top[:, -1] - top[:, 0]) <= NEAR_TIE * np.maximum(1.0, np.abs(top[:, -1])) if top.shape[1] > 1 else \
        np.zeros(len(scores), dtype=bool)
    differ = np.asarray(actions).reshape(-1) != np.asarray(expected).reshape(-1)
    return float(differ.mean()), float((differ & ~tie).mean())


def verify_on_target(path: Path, target: str, quantize: str, steps: int, prefix: str) -> tuple[bool, list[str]]:
    """Run the exported C of the run at ``path`` on ``target`` for ``steps`` observations of a real trajectory
    of its own policy, and compare its actions with torch's; returns (within the bounds, report lines)."""
    import numpy as np

    from sparse_rl.config import wrapper_options
    from sparse_rl.envs.normalize import obs_normalization
    from sparse_rl.export.qemu import TargetError, record_observations, run_on_qemu
    from sparse_rl.run_directory import RunError, read_run

    if not path.is_dir():
        raise ExportError("--verify-on needs a run directory (its env makes the observations)")
    try:
        info = read_run(path)
    except RunError as err:
        raise ExportError(str(err)) from None
    model, graph, state = _load_with_normalization(path)
    config = info["config"]
    obs = record_observations(model, info["env"], steps, seed=int(info["seed"]) + 30_000, env_kwargs=config.env_kwargs,
                              wrappers=wrapper_options(config), run_dir=path)
    try:
        actions = run_on_qemu(graph, obs, quantize, prefix)
    except TargetError as err:
        raise ExportError(str(err)) from None
    seen = obs
    if state is not None:  # the policy saw the normalised observation (the C normalises the raw one itself)
        mean, std, clip = obs_normalization(state)
        seen = np.clip((obs - mean) / std, -clip, clip)
    if graph.obs_keys is not None:  # a dict observation again, from its concatenated parts
        cuts = np.cumsum([size for _, size in graph.obs_keys])[:-1]
        policy_obs: Any = dict(zip([k for k, _ in graph.obs_keys], np.split(np.asarray(seen, np.float32), cuts, axis=1)))
    else:
        policy_obs = np.asarray(seen, np.float32).reshape(-1, *model.observation_space.shape)
    expected = model.predict(policy_obs, deterministic=True)[0]
    kind = WEIGHT_NAMES[quantize]
    head = (f"{kind} C on QEMU's mps2-an386 (Cortex-M4F, hard float) against torch, {len(obs)} observations of a "
            f"{info['env']} trajectory")
    if graph.discrete:
        differ, beyond = discrete_disagreement(graph, obs, actions, expected)
        bound = VERIFY_DISCRETE_TOL[quantize]
        ok = (beyond if quantize == "none" else differ) <= bound
        rule = "none beyond near ties" if quantize == "none" else f"at most {bound:.0%}"
        return ok, [f"{head}: the action differs on {differ:.1%} ({beyond:.1%} beyond near ties; bound: {rule}): "
                    f"{'within' if ok else 'OUTSIDE'} the bound"]
    span = float(np.max(graph.action_high - graph.action_low))
    diff = np.abs(actions - expected) / span
    tol = VERIFY_TOL[quantize]
    ok = bool(diff.max() <= tol["max"] and diff.mean() <= tol["mean"])
    lines = [f"{head}: max error {diff.max():.3g}, mean {diff.mean():.3g} of the action range "
             f"(bounds {tol['max']:g}, {tol['mean']:g}): {'within' if ok else 'OUTSIDE'} the bounds"]
    return ok, lines


def parse_bytes(text: str, flag: str) -> int:
    """``12K``, ``12KB``, ``64k``, ``1M``, ``4096``: bytes (K = 1024); bad input as :class:`ExportError`."""
    from sparse_rl.export.budget import BudgetError, parse_size

    try:
        return parse_size(text, flag)
    except BudgetError as err:
        raise ExportError(str(err)) from None


def check_budget(graph: ActorGraph, flash: int | None, ram: int | None, quantize: str, prefix: str) -> tuple[bool, list[str]]:
    """Compile the run's C (``quantize``) for a Cortex-M4F and compare ``arm-none-eabi-size``'s flash and RAM
    with the budget; returns (fits, report lines)."""
    from sparse_rl.export import formats
    from sparse_rl.export.compile import arm_toolchain, cortex_m4_size

    if arm_toolchain() is None:
        raise ExportError("--target cortex-m4 measures the compiled object: install Debian's gcc-arm-none-eabi")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in formats.c_sources(graph, prefix=prefix, quantize=quantize).items():
            (Path(tmp) / name).write_text(text)
        size = cortex_m4_size(Path(tmp))
    kind = WEIGHT_NAMES[quantize]
    lines, fits = [], True
    for what, used, budget in (("flash", size["flash"], flash), ("RAM", size["ram"], ram)):
        if budget is None:
            lines.append(f"{what}: {used} B")
            continue
        ok = used <= budget
        fits = fits and ok
        margin = budget - used
        lines.append(f"{what}: {used} B of {budget} B: " + (f"fits, {margin} B ({margin / budget:.1%}) to spare" if ok
                     else f"MISSES by {-margin} B ({-margin / budget:.1%} over)"))
    head = (f"Cortex-M4F, {kind} C (arm-none-eabi-gcc -O2, arm-none-eabi-size of the object; flash = text + data, "
            f"RAM = data + bss): {'fits' if fits else 'does not fit'}")
    return fits, [head, *("  " + line for line in lines)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sparse_rl.export",
                                description="Export a trained policy (SAC, TD3, DDPG, TQC, CrossQ, PPO, A2C, DQN).")
    p.add_argument("path", type=Path, help="run directory or SB3 .zip")
    p.add_argument("--format", choices=FORMATS, help="sparse (.npz), onnx, or c (directory with policy.h/policy.c)")
    p.add_argument("--out", type=Path, help="output file (sparse, onnx) or directory (c)")
    p.add_argument("--quantize", default="none",
                   help="none, int8, or mixed (int8 but a float32 input layer) (sparse and c formats)")
    p.add_argument("--prefix", default="sparse_rl_policy", help="C symbol prefix: <prefix>_act()")
    p.add_argument("--dense-c", action="store_true", help="C with dense arrays (baseline for comparisons)")
    p.add_argument("--report", action="store_true", help="print nonzeros, MACs and bytes per format")
    p.add_argument("--verify-on", choices=TARGETS, default=None,
                   help="run the exported C (--quantize none, int8 or mixed) on an emulated chip against torch")
    p.add_argument("--steps", type=int, default=200, help="observations of a real trajectory for --verify-on (200)")
    p.add_argument("--target", choices=("cortex-m4",), default=None,
                   help="check the exported C (--quantize none, int8 or mixed) against a chip's --flash/--ram budget")
    p.add_argument("--flash", default=None, help="flash budget, e.g. 12K (with --target)")
    p.add_argument("--ram", default=None, help="RAM budget, e.g. 4K (with --target)")
    args = p.parse_args(argv)
    try:
        if args.target is None and (args.flash is not None or args.ram is not None):
            raise ExportError("--flash and --ram are budgets of a --target (cortex-m4)")
        if args.target is not None:
            if args.flash is None and args.ram is None:
                raise ExportError("--target needs a budget: --flash SIZE and/or --ram SIZE (e.g. --flash 12K --ram 4K)")
            if args.quantize not in ("none", "int8", "mixed"):
                raise ExportError(f"--quantize must be none, int8 or mixed, got {args.quantize!r}")
            flash = parse_bytes(args.flash, "--flash") if args.flash is not None else None
            ram = parse_bytes(args.ram, "--ram") if args.ram is not None else None
            fits, lines = check_budget(load_graph(args.path), flash, ram, args.quantize, args.prefix)
            print("\n".join(lines))
            return 0 if fits else 1
        if args.verify_on is not None:
            if args.quantize not in VERIFY_TOL:
                raise ExportError(f"--quantize must be one of {', '.join(VERIFY_TOL)}, got {args.quantize!r}")
            if args.steps <= 0:
                raise ExportError(f"--steps must be positive, got {args.steps}")
            ok, lines = verify_on_target(args.path, args.verify_on, args.quantize, args.steps, args.prefix)
            print("\n".join(lines))
            return 0 if ok else 1
        if not args.report and (args.format is None or args.out is None):
            raise ExportError("give --format and --out, --report, or --verify-on")
        graph = load_graph(args.path)
        if args.format is not None:
            if args.out is None:
                raise ExportError("--format needs --out")
            out = export(graph, args.format, args.out, args.quantize, args.prefix, args.dense_c)
            print(f"wrote {out}")
        if args.report:
            print("\n".join(report(graph)))
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
