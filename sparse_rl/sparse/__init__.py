"""Sparse layers, masks and per-layer density distributions (depends on torch only)."""

from sparse_rl.sparse.distributions import (
    available_distributions,
    check_density,
    check_distribution,
    layer_nonzeros,
    register_distribution,
)
from sparse_rl.sparse.layers import (
    MaskedLinear,
    masked_layers,
    random_mask,
    replace_linears,
    set_linear_backend,
    sparsify,
)

__all__ = [
    "MaskedLinear",
    "available_distributions",
    "check_density",
    "check_distribution",
    "layer_nonzeros",
    "masked_layers",
    "random_mask",
    "register_distribution",
    "replace_linears",
    "set_linear_backend",
    "sparsify",
]
