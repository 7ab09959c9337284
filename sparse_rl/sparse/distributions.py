"""Per-layer density distributions with an exact global density.

A *distribution* decides how a global density budget is shared among the weight matrices of one
network. All of them return integer nonzero counts whose sum is exactly ``round(density * total)``:

- ``uniform``: every sparse layer gets the same density.
- ``er`` (Erdős–Rényi, Mocanu et al. 2018): density of a layer ∝ ``(n_in + n_out) / (n_in * n_out)``.
- ``erk`` (ER-Kernel, Evci et al. 2020): density ∝ ``sum(shape) / prod(shape)``; for the 2-D weights of
  fully connected layers it equals ``er``, and differs only for convolution kernels.

Layers listed as dense keep all their weights; their weights count towards the global budget, so the
other layers are made sparser to keep the global density exact. A layer whose share would exceed
density 1 is made dense and the others are rescaled (repeated until no layer exceeds 1). Likewise a layer
whose share would fall below its floor (``min_counts``: the fewest weights that leave no unit without a
connection, :func:`connected_floor`) gets its floor and the others are rescaled; a budget smaller than the
floors raises :class:`BudgetTooSmall`, which names the lowest density that fits them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

DistributionFn = Callable[[Sequence[Sequence[int]]], list[float]]

_RAW_SCORES: dict[str, DistributionFn] = {}


def register_distribution(name: str) -> Callable[[DistributionFn], DistributionFn]:
    """Register a raw-score function: it maps layer shapes to unnormalised relative densities."""

    def deco(fn: DistributionFn) -> DistributionFn:
        _RAW_SCORES[name] = fn
        return fn

    return deco


@register_distribution("uniform")
def _uniform(shapes: Sequence[Sequence[int]]) -> list[float]:
    return [1.0 for _ in shapes]


@register_distribution("er")
def _er(shapes: Sequence[Sequence[int]]) -> list[float]:
    return [(s[0] + s[1]) / (s[0] * s[1]) for s in shapes]


@register_distribution("erk")
def _erk(shapes: Sequence[Sequence[int]]) -> list[float]:
    return [sum(s) / math.prod(s) for s in shapes]


def available_distributions() -> list[str]:
    """Names accepted by :func:`layer_nonzeros`."""
    return sorted(_RAW_SCORES)


def check_distribution(name: str) -> str:
    if name not in _RAW_SCORES:
        raise ValueError(f"unknown density distribution {name!r}; known: {', '.join(available_distributions())}")
    return name


class BudgetTooSmall(ValueError):
    """The density's weights cannot give every layer its floor; ``density`` is the lowest one that can."""

    def __init__(self, message: str, density: float) -> None:
        super().__init__(message)
        self.density = density


def connected_floor(shape: Sequence[int]) -> int:
    """The fewest weights of a layer of ``shape`` (``(out, in, *kernel)``) that can give every input unit
    (input channel) and every output unit a connection: ``max(out, in)``."""
    return max(int(shape[0]), int(shape[1]))


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` as float if it lies in (0, 1], else raise ``ValueError``."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(f"{what} must be a number in (0, 1], got {density!r}")
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(f"{what} must be in (0, 1], got {density!r}")
    return float(density)


def layer_nonzeros(
    shapes: Sequence[Sequence[int]],
    density: float,
    distribution: str = "erk",
    dense_layers: Sequence[bool] | None = None,
    min_counts: Sequence[int] | None = None,
) -> list[int]:
    """Number of nonzero weights for each layer.

    :param shapes: weight shapes, ``(out_features, in_features, *kernel)`` per layer.
    :param density: global density in (0, 1] over all the layers' weights together.
    :param distribution: one of :func:`available_distributions`.
    :param dense_layers: per layer, whether it must stay fully dense (default: none).
    :param min_counts: per layer, the fewest nonzeros it may get (default: none); a layer held at its floor
        counts towards the budget as a dense one does.
    :return: nonzeros per layer; their sum is exactly ``round(density * total)``.
    :raises ValueError: unknown distribution, density out of range, or dense layers alone
        holding more weights than the budget allows.
    :raises BudgetTooSmall: the budget is smaller than the dense layers and the floors together.
    """
    density = check_density(density)
    raw_fn = _RAW_SCORES[check_distribution(distribution)]
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    budget = round(density * total)
    dense = list(dense_layers) if dense_layers is not None else [False] * len(shapes)
    if len(dense) != len(shapes):
        raise ValueError(f"dense_layers has {len(dense)} entries for {len(shapes)} layers")
    if density == 1.0:
        return sizes
    raw = raw_fn(shapes)
    floors = list(min_counts) if min_counts is not None else [0] * len(shapes)
    if len(floors) != len(shapes):
        raise ValueError(f"min_counts has {len(floors)} entries for {len(shapes)} layers")
    held = [False] * len(shapes)  # held at the floor
    kept_dense = sum(n for n, d in zip(sizes, dense) if d)
    if kept_dense > budget:
        raise ValueError(
            f"density {density} allows {budget} weights but the layers kept dense already hold {kept_dense}; "
            "lower the sparsity or keep fewer layers dense"
        )
    if sum(n if d else f for n, f, d in zip(sizes, floors, dense)) > budget:
        fits = sum(n if d else f for n, f, d in zip(sizes, floors, dense))
        raise BudgetTooSmall(f"density {density} allows {budget} weights, fewer than the {fits} that leave no unit "
                             f"without a connection", fits / total)
    # Iteratively make layers dense whose share would exceed 1 (or hold at their floor those below it), then
    # rescale the rest.
    while True:
        fixed = sum(n for n, d in zip(sizes, dense) if d) + sum(f for f, h in zip(floors, held) if h)
        free = budget - fixed
        if free < 0:
            raise ValueError(
                f"density {density} allows {budget} weights but the layers kept dense already hold {fixed}; "
                "lower the sparsity or keep fewer layers dense"
            )
        weighted = sum(r * n for r, n, d, h in zip(raw, sizes, dense, held) if not (d or h))
        if weighted == 0:
            break
        eps = free / weighted
        over = [not (d or h) and eps * r > 1.0 for r, d, h in zip(raw, dense, held)]
        if any(over):
            dense = [d or o for d, o in zip(dense, over)]
            continue
        under = [not (d or h) and eps * r * n < f for r, n, f, d, h in zip(raw, sizes, floors, dense, held)]
        if not any(under):
            break
        held = [h or u for h, u in zip(held, under)]
    fractional = [float(n) if d else float(f) if h else eps * r * n
                  for r, n, f, d, h in zip(raw, sizes, floors, dense, held)]
    counts = [math.floor(f) for f in fractional]
    # Largest-remainder rounding so the total is exact.
    short = budget - sum(counts)
    order = sorted(
        (i for i in range(len(counts)) if not (dense[i] or held[i])),
        key=lambda i: fractional[i] - counts[i],
        reverse=True,
    )
    for i in order[:short]:
        counts[i] += 1
    short = budget - sum(counts)  # only when every sparse layer sits at its floor: the rest fills them in order
    for i in range(len(counts)):
        if short <= 0:
            break
        if held[i] and not dense[i]:
            extra = min(short, sizes[i] - counts[i])
            counts[i] += extra
            short -= extra
    return counts


def connected_nonzeros(
    shapes: Sequence[Sequence[int]],
    density: float,
    distribution: str = "erk",
    dense_layers: Sequence[bool] | None = None,
) -> tuple[list[int], float]:
    """:func:`layer_nonzeros` with every layer at or above its :func:`connected_floor`: ``(counts, density)``,
    where ``density`` is raised to the lowest that fits the floors when the one asked for does not."""
    floors = [connected_floor(shape) for shape in shapes]
    try:
        return layer_nonzeros(shapes, density, distribution, dense_layers, min_counts=floors), density
    except BudgetTooSmall as err:
        return layer_nonzeros(shapes, err.density, distribution, dense_layers, min_counts=floors), err.density
