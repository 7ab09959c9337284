"""The callbacks a training run adds to SB3's ``learn``: checkpoints, the divergence guard, the progress line.

Evaluation rows are :class:`sparse_rl.eval_callback.SparseEvalCallback`. Order matters: the guard goes first,
so a diverged model is never checkpointed over the last good one.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sparse_rl.agents import sparsity_report
from sparse_rl.checkpoint import Checkpoint, CheckpointError, latest_checkpoint, save_checkpoint
from sparse_rl.eval_callback import SparseEvalCallback


class CheckpointCallback(BaseCallback):
    """Every ``freq`` env steps, an atomic checkpoint in the run directory.

    It is written at the start of a rollout, i.e. after the gradient steps that follow the previous
    rollout, so resuming from it replays exactly what an uninterrupted run does next.
    """

    def __init__(self, run_dir: Path, freq: int, save_replay_buffer: bool, eval_env: VecEnv | None = None):
        super().__init__()
        self.run_dir, self.freq, self.save_replay_buffer = run_dir, freq, save_replay_buffer
        #: the evaluation env, whose state each checkpoint keeps
        self.eval_env = eval_env
        self._next = 0
        self._stop_asked: int | None = None
        #: ``(signal number, checkpoint)`` once training stopped on :meth:`stop_at_next_checkpoint`
        self.stopped: tuple[int, Checkpoint] | None = None

    def stop_at_next_checkpoint(self, signum: int) -> None:
        """Write a checkpoint at the next rollout start and stop training there (safe in a signal handler:
        it only sets a flag)."""
        self._stop_asked = signum

    @property
    def stop_asked(self) -> bool:
        return self._stop_asked is not None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.freq + 1) * self.freq

    def _on_rollout_start(self) -> None:
        if self.stopped is None and self._stop_asked is not None:
            self.stopped = (self._stop_asked, self._save())
        elif self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.freq + 1) * self.freq
            self._save()

    def _save(self) -> Checkpoint:
        return save_checkpoint(self.model, self.run_dir, self.save_replay_buffer, self.eval_env)

    def _on_step(self) -> bool:
        return self.stopped is None  # False: SB3 ends learn() after this env step, which nothing records


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the step, the network and the last good checkpoint."""


#: SB3's logged losses and the network each one trains
_LOSSES = {"train/critic_loss": "critic", "train/actor_loss": "actor", "train/ent_coef_loss": "entropy coefficient"}


class DivergenceGuard(BaseCallback):
    """Stops training with :class:`TrainingDiverged` when a loss SB3 just logged is not finite.

    It checks at the start of each rollout, i.e. right after the gradient steps and *before* a checkpoint
    could be written (place it first in the callback list), and at the end of training, so a diverged
    model is never checkpointed over the last good one.
    """

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = run_dir

    def _check(self) -> None:
        values = self.model.logger.name_to_value
        for key, net in _LOSSES.items():
            value = values.get(key)
            if value is None or math.isfinite(value):
                continue
            bad = [
                name
                for name, p in self.model.policy.named_parameters()
                if not bool(torch.isfinite(p.detach()).all())
            ]
            listed = ", ".join(bad[:4]) + (" ..." if len(bad) > 4 else "")
            where = f"non-finite parameters: {listed}" if bad else "parameters still finite"
            try:
                last = latest_checkpoint(self.run_dir)
            except CheckpointError:
                last = None
            kept = f"the last good checkpoint, {last.describe()}, is kept" if last else "no checkpoint was written yet"
            raise TrainingDiverged(f"the {net} loss ({key}) is {value} at step {self.num_timesteps} ({where}); {kept}")

    def _on_rollout_start(self) -> None:
        self._check()

    def _on_training_end(self) -> None:
        self._check()

    def _on_step(self) -> bool:
        return True


class ProgressLine(BaseCallback):
    """A one-line progress display on stderr: steps, steps/s, last evaluation, density."""

    def __init__(self, total: int, evaluator: SparseEvalCallback | None, every_s: float = 1.0):
        super().__init__()
        self.total, self.evaluator, self.every_s = total, evaluator, every_s
        self._t0 = self._last = 0.0
        self._n0 = 0

    def _on_training_start(self) -> None:
        self._t0 = self._last = time.perf_counter()
        self._n0 = self.num_timesteps

    def _on_step(self) -> bool:
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            rate = (self.num_timesteps - self._n0) / max(now - self._t0, 1e-9)
            row = self.evaluator.last_row if self.evaluator else None
            ret = f"{row['return_mean']:.1f}" if row else "-"
            density = sparsity_report(self.model)["actor"]["density"]
            pct = 100 * self.num_timesteps / self.total
            sys.stderr.write(
                f"\r{self.num_timesteps}/{self.total} ({pct:.0f}%) {rate:.0f} steps/s"
                f" | eval {ret} | actor density {density:.3f}"
            )
            sys.stderr.flush()
        return True

    def _on_training_end(self) -> None:
        sys.stderr.write("\n")
