"""Choosing positions in masks: top-k by score with random tie breaks, magnitude drops, schedules' counts.

Shared by the methods; every function is deterministic given its ``generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def uniform_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator).to(weight.device)



def apportion(total: int, shares: Sequence[float], capacity: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` (largest remainders), none above its
    ``capacity``; what a full layer cannot take goes to the others by their shares."""
    counts = [0] * len(shares)
    left = min(total, sum(capacity))
    open_ = [i for i, c in enumerate(capacity) if c > 0]
    while left > 0 and open_:
        weight = [max(float(shares[i]), 0.0) for i in open_]
        if sum(weight) <= 0:
            weight = [1.0] * len(open_)
        exact = [left * w / sum(weight) for w in weight]
        give = [int(e) for e in exact]
        for j in sorted(range(len(open_)), key=lambda j: exact[j] - give[j], reverse=True)[: left - sum(give)]:
            give[j] += 1
        for j, i in enumerate(open_):
            take = min(give[j], capacity[i] - counts[i])
            counts[i] += take
            left -= take
        open_ = [i for i in open_ if counts[i] < capacity[i]]
    return counts


def drop_smallest(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of smallest magnitude (boolean, the shape of ``mask``)."""
    dropped = torch.zeros_like(mask.flatten())
    if k > 0:
        scores = weight.abs().flatten().float().masked_fill(~mask.flatten(), float("inf"))
        dropped[torch.topk(scores, k, largest=False).indices] = True
    return dropped.view(mask.shape)


def grow_top(scores: torch.Tensor, free: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` positions among ``free`` of highest score, ties broken at random."""
    grown = torch.zeros_like(free.flatten())
    if k > 0:
        flat = scores.flatten().float().masked_fill(~free.flatten(), float("-inf"))
        perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        grown[perm[torch.topk(flat[perm], k).indices]] = True
    return grown.view(free.shape)



def scheduled_counts(targets: Sequence[int], starts: Sequence[int], remaining: float) -> list[int]:
    """Nonzeros on the pruning schedule: ``starts`` when ``remaining`` is 1, ``targets`` when it is 0."""
    return [t + round((n - t) * remaining) for t, n in zip(targets, starts)]


def keep_largest(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of largest magnitude (all of them if fewer are active)."""
    return keep_top(weight.abs(), mask, k)


def keep_top(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of highest score (all of them if fewer are active)."""
    if k >= int(mask.sum()):
        return mask.clone()
    flat = scores.flatten().float().masked_fill(~mask.flatten(), float("-inf"))
    new = torch.zeros_like(mask.flatten())
    new[torch.topk(flat, k).indices] = True
    return new.view(mask.shape)


def keep_largest_global(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The ``k`` active positions of largest magnitude over all layers together."""
    return keep_top_global([w.abs() for w in weights], masks, k)


def keep_top_global(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The ``k`` active positions of highest score over all layers together."""
    flat = torch.cat([s.flatten().float().masked_fill(~m.flatten(), float("-inf")) for s, m in zip(scores, masks)])
    if k >= int(sum(int(m.sum()) for m in masks)):
        return [m.clone() for m in masks]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k).indices] = True
    out, offset = [], 0
    for m in masks:
        out.append(keep[offset : offset + m.numel()].view(m.shape))
        offset += m.numel()
    return out



def check_number(value: Any, name: str, low: float, high: float = float("inf"), low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}{f' and <= {high}' if high != float('inf') else ''}, got {value!r}")

