"""Input-feature importance: which observation features a sparse network reads, and how strongly.

``python -m sparse_rl.features RUN [--top 20] [--plot PNG]`` prints the ranking of a run's input features.

Per input feature of the actor's and the critic's first layer: its **strength**, the sum of the absolute
weights of its outgoing connections (QuickSelection's neuron strength, Atashgahi et al. 2022), and its
**connections**, how many of them exist. For the critic, whose input is the observation and the action, both
are summed over its Q-networks. On an env with noise features (``noise_fraction``, :mod:`sparse_rl.envs.wrappers`)
the **real fraction** is the share of a first layer's connections that sit on real features, ANF's headline
diagnostic (Grooten et al. 2023): a network that filters the noise drives it towards 1.

Training records both at every evaluation: ``features.csv`` in the run directory (one row per evaluation,
network and feature) and, with noise features, ``actor_real_input_fraction`` and
``critic_real_input_fraction`` in ``evaluations.csv`` and TensorBoard. Reading weights and masks touches no
random generator and no parameter, so it leaves training as it was.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse_rl.sparse.layers import MaskedConv2d

FEATURES_FILE = "features.csv"
FIELDS = ["timesteps", "net", "feature", "name", "strength", "connections"]


def _first_linear(module: nn.Module) -> nn.Linear:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            return layer
    raise ValueError(f"{type(module).__name__} has no linear layer")


@torch.no_grad()
def _layer_importance(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    weight = layer.weight.detach().float().cpu()
    mask = getattr(layer, "mask", None)
    present = mask.detach().cpu() if mask is not None else weight != 0
    return (weight.abs() * present).sum(0).numpy().astype(np.float64), present.sum(0).numpy().astype(np.int64)


def input_layers(policy: nn.Module) -> dict[str, list[nn.Module]]:
    """The layers reading the observation, per network: SAC/TD3/DDPG/TQC/CrossQ actor and critic (one per
    Q-network), PPO/A2C policy and value networks (``actor``, ``critic``), DQN's ``q_net``. ``{}`` for a policy
    whose first layers are convolutions (image observations)."""
    if hasattr(policy, "actor") and hasattr(policy, "critic"):
        actor = policy.actor  # type: ignore[attr-defined]
        layers = {"actor": [_first_linear(getattr(actor, "latent_pi", None) or getattr(actor, "mu", None) or actor)],
                  "critic": [_first_linear(q) for q in policy.critic.q_networks]}  # type: ignore[attr-defined]
    elif hasattr(policy, "mlp_extractor"):  # PPO, A2C: an empty extractor net leaves the head as the first layer
        extractor = policy.mlp_extractor  # type: ignore[attr-defined]
        layers = {name: [next((m for m in net.modules() if isinstance(m, nn.Linear)), head)]
                  for name, net, head in (("actor", extractor.policy_net, policy.action_net),  # type: ignore[attr-defined]
                                          ("critic", extractor.value_net, policy.value_net))}  # type: ignore[attr-defined]
    elif hasattr(policy, "q_net"):  # DQN
        layers = {"q_net": [next(m for m in policy.q_net.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))]}  # type: ignore[attr-defined]
    else:
        raise ValueError(f"{type(policy).__name__}: not an SB3 policy this knows the input layers of")
    if any(not isinstance(layer, nn.Linear) or isinstance(layer, MaskedConv2d) for ls in layers.values() for layer in ls):
        return {}
    return layers


def input_importance(policy: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{network: {"strength", "connections"}}`` of an SB3 policy (sparse or dense; networks as
    :func:`input_layers` names them), one entry per input feature of the network's first layer(s)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, layers in input_layers(policy).items():
        parts = [_layer_importance(layer) for layer in layers]
        out[name] = {"strength": sum(p[0] for p in parts), "connections": sum(p[1] for p in parts)}
    return out


def feature_names(n_inputs: int, n_obs: int, n_real: int | None = None, order: np.ndarray | None = None) -> list[str]:
    """The name of what each input position reads: ``obs[i]`` (real observation feature ``i``), ``noise[j]``,
    ``action[k]`` past the observation (the critic's action inputs). ``order``: a feature permutation that is
    on (position ``p`` reads feature ``order[p]``)."""
    n_real = n_obs if n_real is None else n_real
    base = [f"obs[{i}]" if i < n_real else f"noise[{i - n_real}]" for i in range(n_obs)]
    if order is not None:
        base = [base[int(i)] for i in order]
    return base + [f"action[{k}]" for k in range(n_inputs - n_obs)]


def real_fraction(connections: np.ndarray, names: list[str]) -> float:
    """The share of a first layer's connections from observation features that sit on the real ones."""
    real = sum(int(c) for c, n in zip(connections, names) if n.startswith("obs["))
    noise = sum(int(c) for c, n in zip(connections, names) if n.startswith("noise["))
    return real / (real + noise) if real + noise else float("nan")


def input_layout(venv: Any) -> tuple[int, int, np.ndarray | None]:
    """``(observation features, real ones, active permutation or None)`` of an SB3 vector env, read from our
    wrappers (:mod:`sparse_rl.envs.wrappers`) around its first copy."""
    import gymnasium as gym

    from sparse_rl.envs.wrappers import NoiseFeatures, PermuteFeatures

    env = venv.envs[0]
    space = env.observation_space
    # dict observations: the multi-input policies read their parts flattened and concatenated (in key order)
    n_obs = gym.spaces.flatdim(space) if isinstance(space, gym.spaces.Dict) else int(space.shape[0])
    n_real, order = n_obs, None
    while isinstance(env, gym.Wrapper):
        if isinstance(env, PermuteFeatures) and env.active:
            order = env.order
        if isinstance(env, NoiseFeatures):
            n_real = env.n_real
        env = env.env
    return n_obs, n_real, order


def evaluation_fields(policy: nn.Module, venv: Any, path: Path, timesteps: int, logger: Any = None) -> dict[str, float]:
    """Record the input importance of ``policy`` at ``timesteps`` in ``path`` (``features.csv``) and, with an
    SB3 ``logger``, as TensorBoard histograms (``features/<net>_strength``, ``features/<net>_connections``);
    with noise features, return the real-feature connection fractions for the evaluation row."""
    n_obs, n_real, order = input_layout(venv)
    importance = input_importance(policy)
    append_features(path, timesteps, importance, n_obs, n_real, order)
    if logger is not None:
        only_tensorboard = ("stdout", "log", "json", "csv")
        for net, values in importance.items():
            for key in ("strength", "connections"):
                logger.record(f"features/{net}_{key}", torch.as_tensor(values[key]), exclude=only_tensorboard)
    if n_real == n_obs:
        return {}
    return {f"{net}_real_input_fraction": real_fraction(v["connections"],
                                                         feature_names(len(v["connections"]), n_obs, n_real, order))
            for net, v in importance.items()}


def append_features(path: Path, timesteps: int, importance: dict[str, dict[str, np.ndarray]], n_obs: int,
                    n_real: int | None = None, order: np.ndarray | None = None) -> None:
    """Append one evaluation's rows to ``features.csv`` (the whole file rewritten under a temporary name)."""
    from sparse_rl.run_directory import atomic_write

    text = io.StringIO()
    writer = csv.writer(text)
    if path.is_file():
        text.write(path.read_text())
    else:
        writer.writerow(FIELDS)
    for net, values in importance.items():
        names = feature_names(len(values["strength"]), n_obs, n_real, order)
        for i, (s, c) in enumerate(zip(values["strength"], values["connections"])):
            writer.writerow([timesteps, net, i, names[i], f"{s:.9g}", int(c)])
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def rewind_features(path: Path, timesteps: int) -> None:
    """Drop the rows made after ``timesteps`` (a resumed run makes those evaluations again)."""
    from sparse_rl.run_directory import atomic_write

    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= timesteps]
    if len(kept) < len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def read_features(path: Path) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """``{timesteps: {net: [row, ...]}}`` of a ``features.csv``."""
    table: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            entry = {"feature": int(row["feature"]), "name": row["name"], "strength": float(row["strength"]),
                     "connections": int(row["connections"])}
            table.setdefault(int(row["timesteps"]), {}).setdefault(row["net"], []).append(entry)
    return table


def _fraction(rows: list[dict[str, Any]]) -> float:
    return real_fraction(np.array([r["connections"] for r in rows]), [r["name"] for r in rows])


def _plot(table: dict[int, dict[str, list[dict[str, Any]]]], out: Path, n_obs: int, n_real: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparse_rl.run_directory import atomic_write

    last = table[max(table)]
    panels = 2 if n_real is not None and n_real < n_obs else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 2, 4), squeeze=False)
    ax = axes[0][0]
    for net, rows in last.items():
        ax.plot([r["feature"] for r in rows], [r["strength"] for r in rows], ".", label=net)
    if n_real is not None and n_real < n_obs:
        ax.axvline(n_real - 0.5, color="grey", linestyle=":", label="real | noise (before a permutation)")
    ax.set(xlabel="input feature", ylabel="strength (sum of |w| of its connections)",
           title=f"input strength at {max(table)} steps")
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0][1]
        steps = sorted(table)
        for net in last:
            fractions = [_fraction(table[t][net]) for t in steps]
            ax.plot(steps, fractions, marker="o", label=net)
        ax.axhline(n_real / n_obs, color="grey", linestyle=":", label="at random")  # type: ignore[operator]
        ax.set(xlabel="env steps", ylabel="connections on real features", title="real-feature connection fraction")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(out, lambda f: f.write(buf.getvalue()))


def main(argv: list[str] | None = None) -> int:
    from sparse_rl.run_directory import RunError, read_run

    p = argparse.ArgumentParser(prog="python -m sparse_rl.features", description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run directory")
    p.add_argument("--top", type=int, default=20, help="features listed per network (default 20)")
    p.add_argument("--plot", type=Path, default=None, help="write the strengths (and real fraction over time) here")
    args = p.parse_args(argv)
    try:
        if args.top <= 0:
            raise RunError(f"--top must be positive, got {args.top}")
        info = read_run(args.run)
        path = args.run / FEATURES_FILE
        if not path.is_file():
            raise RunError(f"{str(args.run)!r} has no {FEATURES_FILE} (runs record it at every evaluation since "
                           "features were logged; an older run can be evaluated again with a newer version)")
        table = read_features(path)
        if not table:
            raise RunError(f"{str(path)!r} holds no evaluation yet")
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = info["config"]
    steps = max(table)
    n_obs = len(table[steps]["actor"])
    names = [r["name"] for r in table[steps]["actor"]]
    n_real = sum(name.startswith("obs[") for name in names) if config.noise_fraction > 0 else None
    print(f"{args.run}: input features at {steps} steps ({n_obs} observation features"
          + (f", {n_real} real and {n_obs - n_real} noise" if n_real is not None else "") + ")")
    for net, rows in table[steps].items():
        ranked = sorted(rows, key=lambda r: -r["strength"])
        line = f"  {net}: top {min(args.top, len(ranked))} of {len(ranked)} by strength"
        if n_real is not None:
            line += f"; real-feature connection fraction {_fraction(rows):.3f}"
            line += f" (at random: {n_real / n_obs:.3f})"
        print(line)
        for rank, r in enumerate(ranked[: args.top], 1):
            print(f"    {rank:>3}. {r['name']:<12} strength {r['strength']:10.4f}  connections {r['connections']}")
    if args.plot is not None:
        _plot(table, args.plot, n_obs, n_real)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
