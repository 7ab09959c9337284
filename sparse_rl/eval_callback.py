"""Evaluation that reports return *and* sparsity: one row per evaluation, to CSV and SB3's logger."""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from sparse_rl.agents import sparsity_report
from sparse_rl.agents.model_diagnostics import model_diagnostics
from sparse_rl.run_directory import atomic_write

EVAL_FIELDS = [
    "timesteps",
    "wall_clock_s",
    "return_mean",
    "return_std",
    "return_ci95_low",
    "return_ci95_high",
    "episodes",
    "actor_density",
    "critic_density",
    "actor_itop_rate",
    "critic_itop_rate",
    "actor_flops",
    "critic_flops",
    "actor_dense_flops",
    "critic_dense_flops",
    "actor_dormant",
    "critic_dormant",
    "critic_grad_snr",
    "actor_nnstd_init",
    "critic_nnstd_init",
]


#: columns written only by the runs that have them (an env with noise features)
OPTIONAL_FIELDS = ["actor_real_input_fraction", "critic_real_input_fraction"]


def return_stats(returns: list[float] | np.ndarray) -> dict[str, float]:
    """Mean, std (ddof=1) and a normal-approximation 95% confidence interval of the mean."""
    r = np.asarray(returns, dtype=np.float64)
    mean = float(r.mean())
    std = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    half = 1.96 * std / math.sqrt(len(r))
    return {"return_mean": mean, "return_std": std, "return_ci95_low": mean - half, "return_ci95_high": mean + half}


def evaluate(model: BaseAlgorithm, env: VecEnv, episodes: int) -> dict[str, Any]:
    """Run ``episodes`` deterministic episodes; return their statistics with the model's sparsity and,
    once the replay buffer has data, dormant-neuron fractions and the critic's gradient SNR."""
    returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    row: dict[str, Any] = {"episodes": episodes, **return_stats(returns)}
    column = {"q_net": "critic"}  # DQN's Q-network fills the critic columns
    report = {column.get(net, net): stats for net, stats in sparsity_report(model).items()}
    for net in report:
        row[f"{net}_density"] = report[net]["density"]
        row[f"{net}_itop_rate"] = report[net]["itop_rate"]
        row[f"{net}_flops"] = report[net]["flops"]
        row[f"{net}_dense_flops"] = report[net]["dense_flops"]
    row.update(model_diagnostics(model))
    distance = getattr(model.policy, "topology_distance", None)
    if distance is not None:  # sparse policies: how far the topology has travelled from its start (NNSTD)
        for net, d in distance().items():
            row[f"{column.get(net, net)}_nnstd_init"] = d["total"]
    return row


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the evaluations CSV by writing the whole file anew under a temporary name and
    renaming it, so a process killed meanwhile leaves the previous file intact (it is small)."""
    old: list[dict[str, str]] = []
    if path.exists():  # rows of an older version may lack newer columns: rewritten under today's header
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    # optional columns (e.g. the real-feature fractions of a noisy env) follow the fixed ones, when present
    optional = [k for k in OPTIONAL_FIELDS if k in row or any(k in r for r in old)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=EVAL_FIELDS + optional, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(old)
    writer.writerow(row)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


class SparseEvalCallback(BaseCallback):
    """Every ``eval_freq`` env steps, evaluate on ``eval_env`` and append a row to ``csv_path``."""

    def __init__(self, eval_env: VecEnv, eval_freq: int, episodes: int, csv_path: str | Path, start_time: float):
        super().__init__()
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.episodes = episodes
        self.csv_path = Path(csv_path)
        self.start_time = start_time
        self.last_row: dict[str, Any] | None = None
        #: called with the training step count before each evaluation (e.g. to follow a feature permutation)
        self.before_evaluation: Callable[[int], None] | None = None
        #: each called with the model and the step count; returns fields for the row (and may record more)
        self.row_extras: list[Callable[[BaseAlgorithm, int], dict[str, Any]]] = []
        self._next = 0

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.eval_freq + 1) * self.eval_freq

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.eval_freq
            self.run_evaluation()
        return True

    def run_evaluation(self) -> dict[str, Any]:
        if self.before_evaluation is not None:
            self.before_evaluation(self.num_timesteps)
        row = {"timesteps": self.num_timesteps, **evaluate(self.model, self.eval_env, self.episodes)}
        for extra in self.row_extras:
            row.update(extra(self.model, self.num_timesteps))
        row["wall_clock_s"] = time.time() - self.start_time
        append_row(self.csv_path, row)
        for key, value in row.items():
            if key not in ("timesteps", "wall_clock_s", "episodes"):
                self.logger.record(f"eval/{key}", value)
        self.logger.dump(self.num_timesteps)
        self.last_row = row
        return row
