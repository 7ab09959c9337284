"""Per-layer density distributions with an exact global density.

A *distribution* decides how a global density budget is shared among the weight matrices of one
network. All of them return integer nonzero counts whose sum is exactly ``round(density * total)``:

- ``uniform``: every sparse layer gets the same density.
- ``er`` (Erdős–Rényi, Mocanu et al. 2018): density of a layer ∝ ``(n_in + n_out) / (n_in * n_out)``.
- ``erk`` (ER-Kernel, Evci et al. 2020): density ∝ ``sum(shape) / prod(shape)``; for the 2-D weights of
  fully connected layers it equals ``er``, and differs only for convolution kernels.

Layers listed as dense keep all their weights; their weights count towards the global budget, so the
other layers are made sparser to keep the global density exact. A layer whose share would exceed
density 1 is made dense and the others are rescaled (repeated until no layer exceeds 1).
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
) -> list[int]:
    """Number of nonzero weights for each layer.

    :param shapes: weight shapes, ``(out_features, in_features, *kernel)`` per layer.
    :param density: global density in (0, 1] over all the layers' weights together.
    :param distribution: one of :func:`available_distributions`.
    :param dense_layers: per layer, whether it must stay fully dense (default: none).
    :return: nonzeros per layer; their sum is exactly ``round(density * total)``.
    :raises ValueError: unknown distribution, density out of range, or dense layers alone
        holding more weights than the budget allows.
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
    # Iteratively make layers dense whose share would exceed 1, then rescale the rest.
    while True:
        fixed = sum(n for n, d in zip(sizes, dense) if d)
        free = budget - fixed
        if free < 0:
            raise ValueError(
                f"density {density} allows {budget} weights but the layers kept dense already hold {fixed}; "
                "lower the sparsity or keep fewer layers dense"
            )
        weighted = sum(r * n for r, n, d in zip(raw, sizes, dense) if not d)
        if weighted == 0:
            break
        eps = free / weighted
        over = [not d and eps * r > 1.0 for r, d in zip(raw, dense)]
        if not any(over):
            break
        dense = [d or o for d, o in zip(dense, over)]
    fractional = [float(n) if d else eps * r * n for r, n, d in zip(raw, sizes, dense)]
    counts = [math.floor(f) for f in fractional]
    # Largest-remainder rounding so the total is exact.
    short = budget - sum(counts)
    order = sorted(
        (i for i in range(len(counts)) if not dense[i]),
        key=lambda i: fractional[i] - counts[i],
        reverse=True,
    )
    for i in order[:short]:
        counts[i] += 1
    return counts
