"""Sparse compute for linear layers whose weight is stored as its active values only (torch only).

A layer with ``nnz`` active connections keeps a 1-D ``values`` tensor in CSR order (row-major order of
``mask.nonzero()``) and a :class:`CSRStructure` built from the mask **once per topology change**. One
training step then costs O(nonzeros) in the layer:

- forward ``y = x Wᵀ + b``: ``Wᵀ``-free, as ``(W xᵀ)ᵀ`` with a CSR × dense product (SpMM);
- input gradient ``gx = gy W``: SpMM with the transposed structure (``values[perm]``, no conversion);
- weight gradient at the active positions only: SDDMM ``(gyᵀ x)`` sampled at the mask
  (``torch.sparse.sampled_addmm``);
- the *dense* weight gradient ``gyᵀ x`` (one dense product) only when the owning layer asks for it
  (``capture_dense_grad``): gradient-based growth needs it on topology-update steps.

Activations flow between layers in the transposed layout the kernels produce: the output is returned as
the transposed view of a contiguous ``[out, batch]`` tensor, so the next sparse layer's ``xᵀ`` is already
contiguous and no copy is made.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

# torch flags every CSR construction as beta; the ops used here are tested for parity in tests/test_backend.py
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)


@dataclass(frozen=True)
class CSRStructure:
    """Index structure of a boolean mask ``[out, in]``; the values are kept apart (see module docstring).

    :ivar index: flat (row-major) positions of the active weights, ``int64 [nnz]``, in CSR order.
    :ivar crow: CSR row pointers, ``[out + 1]``.
    :ivar col: CSR column indices, ``[nnz]``.
    :ivar crow_t: row pointers of the transposed matrix (``[in + 1]``).
    :ivar col_t: column indices of the transposed matrix (``[nnz]``).
    :ivar perm: the transposed matrix's values are ``values[perm]``.
    """

    shape: tuple[int, int]
    index: torch.Tensor
    crow: torch.Tensor
    col: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor
    perm: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.index.numel())

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> CSRStructure:
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"a CSR structure needs a 2-D boolean mask, got {mask.dim()}-D {mask.dtype}")
        out, inp = mask.shape
        # int32 row/column indices when they fit: the CPU kernels (MKL) take them as they are, int64 ones are
        # converted on every call
        itype = torch.int32 if mask.numel() < 2**31 else torch.int64
        index = mask.reshape(-1).nonzero().squeeze(1)
        rows = torch.div(index, inp, rounding_mode="floor")
        cols = index - rows * inp
        crow = torch.zeros(out + 1, dtype=torch.int64, device=mask.device)
        crow[1:] = torch.cumsum(mask.sum(dim=1), 0)
        perm = torch.argsort(cols * out + rows)
        crow_t = torch.zeros(inp + 1, dtype=torch.int64, device=mask.device)
        crow_t[1:] = torch.cumsum(mask.sum(dim=0), 0)
        return cls(
            (out, inp), index, crow.to(itype), cols.to(itype), crow_t.to(itype), rows[perm].to(itype).contiguous(), perm
        )

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """``W`` as a CSR tensor over ``values`` (no copy)."""
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)

    def transposed(self, values: torch.Tensor) -> torch.Tensor:
        """``Wᵀ`` as a CSR tensor (one gather of the values)."""
        return torch.sparse_csr_tensor(
            self.crow_t, self.col_t, values[self.perm], (self.shape[1], self.shape[0]), check_invariants=False
        )

    def dense(self, values: torch.Tensor) -> torch.Tensor:
        """The dense ``[out, in]`` weight with zeros at absent positions (differentiable in ``values``)."""
        flat = values.new_zeros(self.shape[0] * self.shape[1])
        return flat.index_put((self.index,), values).view(self.shape)


class SparseLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` for ``W`` given by ``(structure, values)``; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        structure: CSRStructure,
        owner: Any,
    ) -> torch.Tensor:
        x_t = x.t().contiguous()  # free when x came from a sparse layer; one copy (kept for backward) otherwise
        if bias is not None:
            y_t = torch.addmm(bias.unsqueeze(1), structure.matrix(values), x_t)
        else:
            y_t = torch.sparse.mm(structure.matrix(values), x_t)
        ctx.structure = structure
        ctx.owner = owner
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x_t, values)
        return y_t.t()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x_t, values = ctx.saved_tensors
        structure: CSRStructure = ctx.structure
        owner = ctx.owner
        g_t = grad_out.t().contiguous()  # one copy at most, shared by both products below
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sparse.mm(structure.transposed(values), g_t).t()
        if ctx.needs_input_grad[1]:
            if owner is not None and owner.capture_dense_grad:
                dense = g_t @ x_t.t()  # the dense gradient, for gradient-based growth
                owner._store_dense_grad(dense)
                grad_values = dense.view(-1).index_select(0, structure.index)
            else:
                pattern = structure.matrix(values)
                # x_t.t() is column-major, the layout this SDDMM reads without a copy
                grad_values = torch.sparse.sampled_addmm(pattern, g_t, x_t.t(), beta=0.0).values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_values, grad_bias, None, None


def sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    structure: CSRStructure,
    owner: Any = None,
) -> torch.Tensor:
    """Apply the sparse linear map to ``x`` of shape ``[..., in]`` (any leading dims, or 1-D)."""
    if x.dim() == 2:
        return SparseLinearFunction.apply(x, values, bias, structure, owner)
    lead = x.shape[:-1]
    y = SparseLinearFunction.apply(x.reshape(-1, x.shape[-1]), values, bias, structure, owner)
    return y.reshape(*lead, structure.shape[0])


__all__ = ["CSRStructure", "SparseLinearFunction", "sparse_linear"]
