"""Gradual pruning: from dense (or denser) to the target sparsity on a cubic schedule.

GMP (magnitude pruning, nothing regrows) and GraNet (the same pruning, plus RigL's regeneration at every
update, composed from a GMP and a RigL of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparse_rl.topology.methods.base import MaskUpdate, Method, register_method
from sparse_rl.topology.methods.dst import RegrowthOptions
from sparse_rl.topology.methods.selection import keep_largest, keep_largest_global, scheduled_counts


@register_method("gmp")
@dataclass
class GMP(Method):
    """Gradual magnitude pruning (Zhu & Gupta 2018) from dense to the configured sparsity.

    Training starts dense; from ``start_fraction`` of training, every ``update_interval`` optimizer steps
    the smallest-magnitude active weights are pruned so that the sparsity follows the cubic schedule
    ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3`` with ``s_i = 0``, ``t_0 =
    start_fraction`` and ``t_1 = end_fraction``; the first update at or after ``end_fraction`` reaches the
    target nonzero counts exactly, and the topology is frozen after it. Nothing regrows.

    :param start_fraction: fraction of training at which pruning starts, in [0, end_fraction).
    :param scope: ``layer``: each layer follows the schedule towards its own target (the ``distribution``'s
        per-layer densities); ``global``: one magnitude threshold over all the network's layers, with only
        the total number of nonzeros scheduled.

    Defaults follow Graesser et al. (2022)'s SAC pruning configuration (rigl/rl/tfagents): pruning from
    20% to 80% of training, every 1000 steps, towards ERK per-layer targets.
    """

    start_fraction: float = 0.2
    scope: str = "layer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.start_fraction, bool) or not isinstance(self.start_fraction, (int, float)):
            raise ValueError(f"start_fraction must be a number in [0, 1), got {self.start_fraction!r}")
        if not 0 <= self.start_fraction < 1:
            raise ValueError(f"start_fraction must be in [0, 1), got {self.start_fraction!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        self._targets: list[int] | None = None
        self._end: float | None = None
        self._done = False

    def check_schedule(self, update_interval, end_fraction):
        if self.start_fraction >= end_fraction:
            raise ValueError(f"gmp: start_fraction ({self.start_fraction}) must be below end_fraction ({end_fraction})")
        self._end = end_fraction

    def start_nonzeros(self, targets, sizes):
        self._targets = list(targets)
        return list(sizes)  # dense

    def active(self, progress, end_fraction):
        return not self._done

    def _remaining(self, progress: float) -> float:
        """``(1 - (t - t_0) / (t_1 - t_0))^3``, clipped to [0, 1]: 1 before pruning, 0 at its end."""
        assert self._end is not None, "check_schedule() sets the end of pruning"
        span = (progress - self.start_fraction) / (self._end - self.start_fraction)
        return (1.0 - min(max(span, 0.0), 1.0)) ** 3

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._targets is None:
            raise RuntimeError(
                "gmp needs its target nonzeros: build the network through SparseSACPolicy/SparseTD3Policy, "
                "or call method.start_nonzeros(targets, sizes) first"
            )
        if progress < self.start_fraction:
            return [None] * len(masks)
        remaining = self._remaining(progress)
        sizes = [m.numel() for m in masks]
        if self.scope == "layer":
            keep = scheduled_counts(self._targets, sizes, remaining)
            new_masks = [keep_largest(w, m, k) for w, m, k in zip(weights, masks, keep)]
        else:
            total_target, total = sum(self._targets), sum(sizes)
            k = total_target + round((total - total_target) * remaining)
            new_masks = keep_largest_global(weights, masks, k)
        self._done = remaining == 0.0
        results: list[MaskUpdate | None] = []
        for mask, new in zip(masks, new_masks):
            dropped = mask & ~new
            results.append(MaskUpdate(new, dropped, torch.zeros_like(mask)) if bool(dropped.any()) else None)
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"done": self._done}

    def load_state_dict(self, state, device="cpu"):
        self._done = bool(state.get("done", False))


@register_method("granet")
@dataclass
class GraNet(RegrowthOptions, Method):
    """GraNet (Liu et al. 2021): gradual magnitude pruning with neuroregeneration.

    At each update, first prune along GMP's cubic schedule (per layer, from the starting density to the
    target, between ``start_fraction`` and ``end_fraction``), then, on the pruned masks, drop the
    drop schedule's fraction of the smallest weights and regrow as many where the dense gradient is
    largest (a RigL of its own, with RigL's ``grow_signal`` options). Before ``start_fraction`` only the regeneration
    runs (on layers that are not dense). The first update at or after ``end_fraction`` reaches the
    targets exactly and freezes the topology.

    :param start_fraction: fraction of training at which pruning starts, in [0, end_fraction).
    :param initial_sparsity: where each layer starts between dense (0) and its target (the configured
        sparsity): its starting nonzeros are ``target + round((size - target) * (1 - initial_sparsity /
        sparsity))``, a random mask; 0 starts dense.
    """

    start_fraction: float = 0.2
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._regrowth = self.make_regrowth()  # the regeneration half: RigL's gradient signal and drop/grow
        self._gmp = GMP(start_fraction=self.start_fraction)  # the pruning half, and its checks
        if isinstance(self.initial_sparsity, bool) or not isinstance(self.initial_sparsity, (int, float)):
            raise ValueError(f"initial_sparsity must be a number in [0, 1), got {self.initial_sparsity!r}")
        if not 0 <= self.initial_sparsity < 1:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity!r}")

    def check_schedule(self, update_interval, end_fraction):
        self._regrowth.check_schedule(update_interval, end_fraction)
        self._gmp.check_schedule(update_interval, end_fraction)

    def needs_dense_grad(self, step, update_interval):
        return self._regrowth.needs_dense_grad(step, update_interval)

    def observe(self, step, update_interval, grads, due):
        self._regrowth.observe(step, update_interval, grads, due)

    def start_nonzeros(self, targets, sizes):
        final_sparsity = [1 - t / n for t, n in zip(targets, sizes)]
        start = [
            t if s_f == 0 else t + round((n - t) * (1 - min(self.initial_sparsity / s_f, 1.0)))
            for t, n, s_f in zip(targets, sizes, final_sparsity)
        ]
        self._gmp._targets = list(targets)
        self._start = start
        return start

    def active(self, progress, end_fraction):
        return self._gmp.active(progress, end_fraction)

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        gmp = self._gmp
        if gmp._targets is None:
            raise RuntimeError("granet needs its target nonzeros: build the network through the sparse policies")
        pruned = list(masks)
        if progress >= gmp.start_fraction:
            remaining = gmp._remaining(progress)
            keep = scheduled_counts(gmp._targets, self._start, remaining)
            pruned = [keep_largest(w, m, k) for w, m, k in zip(weights, masks, keep)]
            gmp._done = remaining == 0.0
        grads = self._regrowth.grow_gradients()
        if grads is None:
            raise ValueError("method 'granet' needs the dense gradient of the weights")
        results: list[MaskUpdate | None] = []
        for w, old, new, grad in zip(weights, masks, pruned, grads):
            lost = old & ~new
            regrow = None
            if not bool(new.all()) and fraction > 0:
                regrow = self._regrowth.update_layer(w * new, new, fraction, grad, generator)
            if regrow is None and not bool(lost.any()):
                results.append(None)
                continue
            mask = new if regrow is None else regrow.mask
            dropped = lost if regrow is None else lost | regrow.dropped
            grown = torch.zeros_like(old) if regrow is None else regrow.grown
            results.append(MaskUpdate(mask, dropped, grown))
        return results

    def state_dict(self) -> dict[str, Any]:
        return {**self._regrowth.state_dict(), "done": self._gmp._done}

    def load_state_dict(self, state, device="cpu"):
        self._regrowth.load_state_dict(state, device)
        self._gmp._done = bool(state.get("done", False))

