"""Sparse layers, masks and per-layer density distributions (depends on torch only)."""

from sparse_rl.sparse.backend import BACKENDS, break_even_density, check_backend, use_sparse_storage
from sparse_rl.sparse.distributions import (
    available_distributions,
    check_density,
    check_distribution,
    layer_nonzeros,
    register_distribution,
)
from sparse_rl.sparse.kernels import CSRStructure, sparse_linear
from sparse_rl.sparse.layers import MaskedConv2d, MaskedLinear, SparseLinear, set_linear_backend
from sparse_rl.sparse.networks import (
    dense_gradient_view,
    keep_dense_optimizer_format,
    masked_layers,
    random_mask,
    replace_linears,
    sparsify,
    use_sparse_storage_for,
)

__all__ = [
    "BACKENDS",
    "CSRStructure",
    "MaskedConv2d",
    "MaskedLinear",
    "SparseLinear",
    "available_distributions",
    "break_even_density",
    "check_backend",
    "check_density",
    "check_distribution",
    "dense_gradient_view",
    "keep_dense_optimizer_format",
    "layer_nonzeros",
    "masked_layers",
    "random_mask",
    "register_distribution",
    "replace_linears",
    "set_linear_backend",
    "sparse_linear",
    "sparsify",
    "use_sparse_storage",
    "use_sparse_storage_for",
]
