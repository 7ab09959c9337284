"""N:M structured sparsity: at most N nonzeros in every M consecutive weights of a row.

A layer's row of ``in`` weights splits into ``ceil(in / M)`` groups of M consecutive columns (the last one
shorter when M does not divide ``in``). With ``structure="N:M"`` every sparse layer gets ``n`` nonzeros per
group, ``n`` being the layer's density under the configured sparsity and distribution rounded to the
nearest multiple of ``1/M`` and clipped to ``[1, N]`` (a short last group keeps ``min(n, its size)``).
So ``sparsity = 1 - N/M`` with the ``uniform`` distribution gives exactly N:M in every layer; other
settings give layers at or below N:M, and the densities reported are those of the masks.

Dynamic methods keep each group's count: a dropped connection is regrown inside its own group.
"""

from __future__ import annotations

import math
import re

import torch

UNSTRUCTURED = "unstructured"
_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``(N, M)`` for ``"N:M"``, ``None`` for ``"unstructured"``; a clear ``ValueError`` otherwise."""
    if structure == UNSTRUCTURED:
        return None
    match = _PATTERN.match(str(structure)) if isinstance(structure, str) else None
    if match is None:
        raise ValueError(f"structure must be 'unstructured' or 'N:M' (e.g. '2:4'), got {structure!r}")
    n, m = int(match[1]), int(match[2])
    if not (m >= 2 and 1 <= n < m):
        raise ValueError(f"structure {structure!r}: need 1 <= N < M and M >= 2")
    return n, m


def group_count(in_features: int, m: int) -> int:
    return math.ceil(in_features / m)


def layer_n(density: float, n: int, m: int) -> int:
    """Nonzeros per group of ``m`` for a layer of ``density`` under an ``n:m`` structure."""
    return min(max(round(density * m), 1), n)


def _grouped(t: torch.Tensor, m: int, fill: float | bool) -> torch.Tensor:
    """``t`` [out, in] as [out, groups, m], padded with ``fill`` past the last column."""
    out, inp = t.shape
    pad = group_count(inp, m) * m - inp
    if pad:
        t = torch.cat([t, t.new_full((out, pad), fill)], dim=1)
    return t.view(out, -1, m)


def _ungrouped(t: torch.Tensor, in_features: int) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)[:, :in_features]


def _top_per_group(scores: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Boolean [out, groups, m]: in each group the ``counts`` highest scores, ties broken at random."""
    noise = torch.rand(scores.shape, generator=generator).to(scores.device)
    order = torch.argsort(noise, dim=-1)  # a random order first, then a stable sort by score
    shuffled = torch.gather(scores, -1, order)
    ranked = torch.sort(shuffled, dim=-1, descending=True, stable=True).indices
    positions = torch.gather(order, -1, ranked)
    take = torch.arange(scores.shape[-1], device=scores.device) < counts.unsqueeze(-1)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen.scatter_(-1, positions, take)
    return chosen


def nm_mask(shape: tuple[int, int], n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """A random mask with ``n`` nonzeros in every group of ``m`` consecutive weights of each row."""
    out, inp = shape
    valid = _grouped(torch.ones(out, inp, dtype=torch.bool), m, False)
    scores = torch.rand(valid.shape, generator=generator).masked_fill(~valid, -1.0)
    counts = torch.clamp(valid.sum(-1), max=n)
    return _ungrouped(_top_per_group(scores, counts, generator), inp)


def group_nonzeros(mask: torch.Tensor, m: int) -> torch.Tensor:
    """Nonzeros of each group of ``m``: [out, groups]."""
    return _grouped(mask, m, False).sum(-1)


def grow_in_groups(
    scores: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor, m: int, generator: torch.Generator
) -> torch.Tensor:
    """Regrow, inside each group of ``m``, as many connections as were ``dropped`` from it: the highest
    ``scores`` among its positions not ``kept`` (a just-dropped one may come back, as in RigL)."""
    inp = kept.shape[1]
    free = _grouped(~kept, m, False)
    counts = _grouped(dropped, m, False).sum(-1)
    grouped = _grouped(scores.float(), m, float("-inf")).masked_fill(~free, float("-inf"))
    return _ungrouped(_top_per_group(grouped, counts, generator), inp) & ~kept


__all__ = ["UNSTRUCTURED", "group_count", "group_nonzeros", "grow_in_groups", "layer_n", "nm_mask", "parse_structure"]
