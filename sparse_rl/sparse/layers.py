"""Masked linear layers: the mask is state, absent weights are exact zeros.

:class:`MaskedLinear` is an :class:`torch.nn.Linear` with two boolean buffers (so both are in
``state_dict`` and survive save/load):

- ``mask``: which connections exist. Absent weights are kept at exactly ``0.0``; the forward pass is the
  plain dense ``F.linear`` on that weight, so it costs no more than a dense layer and autograd yields the
  *dense* gradient that gradient-based growth (RigL) needs. Masking of gradients and of optimizer state
  is done by the topology controller around the optimizer step.
- ``explored``: which connections were ever active (for the ITOP rate).

The compute path is a module-level function (:func:`set_linear_backend`) so faster sparse kernels can
replace it without touching the layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rl.sparse.distributions import layer_nonzeros

LinearBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def _dense_backend(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight, bias)


_backend: LinearBackend = _dense_backend


def set_linear_backend(fn: LinearBackend | None) -> None:
    """Swap the compute path of every :class:`MaskedLinear` (``None`` restores the dense one).

    A backend receives ``(x, weight, bias, mask)`` and must return ``F.linear(x, weight, bias)`` for a
    weight that is zero wherever ``mask`` is false, with the same autograd behaviour.
    """
    global _backend
    _backend = _dense_backend if fn is None else fn


class MaskedLinear(nn.Linear):
    """A linear layer whose absent connections are exactly zero.

    :param in_features: input size.
    :param out_features: output size.
    :param bias: whether to learn an additive bias (never masked).
    """

    mask: torch.Tensor
    explored: torch.Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device))
        self.register_buffer("explored", torch.ones(out_features, in_features, dtype=torch.bool, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> MaskedLinear:
        """Wrap an existing layer, *reusing its Parameter objects* (optimizers that hold them stay valid)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features = linear.in_features
        new.out_features = linear.out_features
        new.weight = linear.weight
        new.bias = linear.bias
        ones = torch.ones_like(linear.weight, dtype=torch.bool)
        new.register_buffer("mask", ones)
        new.register_buffer("explored", ones.clone())
        new.train(linear.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _backend(x, self.weight, self.bias, self.mask)

    @property
    def nnz(self) -> int:
        """Number of active connections."""
        return int(self.mask.sum())

    @property
    def density(self) -> float:
        return self.nnz / self.mask.numel()

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask in place (the buffer object never changes) and zero the absent weights."""
        self.mask.copy_(mask)
        self.explored.logical_or_(self.mask)
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Zero the weights of absent connections."""
        self.weight.mul_(self.mask)

    @torch.no_grad()
    def rescale_by_fan_in(self) -> None:
        """Sparse-aware init: scale each output neuron's weights by ``sqrt(dense_fan_in / actual_fan_in)``.

        This keeps the variance of each pre-activation what the dense initialisation intended
        (Evci et al. 2022, "Gradient flow in sparse neural networks").
        """
        fan_in = self.mask.sum(dim=1, keepdim=True).clamp(min=1).to(self.weight.dtype)
        self.weight.mul_(torch.sqrt(self.in_features / fan_in))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}"


def random_mask(shape: torch.Size | tuple[int, ...], nnz: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of ``shape`` with exactly ``nnz`` true entries placed uniformly at random."""
    numel = math.prod(shape)
    if not 0 <= nnz <= numel:
        raise ValueError(f"nnz must be in [0, {numel}], got {nnz}")
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:nnz]] = True
    return flat.view(*shape)


def replace_linears(module: nn.Module) -> list[MaskedLinear]:
    """Replace every :class:`nn.Linear` inside ``module`` by a :class:`MaskedLinear` sharing its parameters.

    :return: the new layers in definition order.
    """
    layers: list[MaskedLinear] = []
    named = dict(module.named_modules())
    for name, child in list(named.items()):  # pre-order: the order layers are defined in
        if isinstance(child, MaskedLinear):
            layers.append(child)
        elif isinstance(child, nn.Linear):
            parent_name, _, attr = name.rpartition(".")
            new = MaskedLinear.from_linear(child)
            setattr(named[parent_name], attr, new)
            layers.append(new)
    return layers


def masked_layers(module: nn.Module) -> list[MaskedLinear]:
    """The :class:`MaskedLinear` layers of ``module`` in definition order."""
    return [m for m in module.modules() if isinstance(m, MaskedLinear)]


def sparsify(
    layers: Iterable[MaskedLinear],
    density: float,
    distribution: str,
    generator: torch.Generator,
    dense_layers: Iterable[bool] | None = None,
    sparse_init: bool = False,
) -> list[int]:
    """Give ``layers`` random masks with the global ``density`` shared by ``distribution``.

    :return: the nonzero count of each layer.
    """
    layers = list(layers)
    counts = layer_nonzeros([tuple(l.weight.shape) for l in layers], density, distribution, dense_layers)
    for layer, nnz in zip(layers, counts):
        mask = random_mask(layer.weight.shape, nnz, generator).to(layer.weight.device)
        layer.explored.zero_()
        layer.set_mask(mask)
        if sparse_init:
            layer.rescale_by_fan_in()
    return counts
