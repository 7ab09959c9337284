"""Sparse layers applied to a network: replace its linears, give them masks, switch their storage.

:func:`replace_linears` and :func:`sparsify` turn a network's ``nn.Linear`` layers into
:class:`~sparse_rl.sparse.layers.MaskedLinear` ones with masks drawn from a density distribution;
:func:`use_sparse_storage_for` moves layers between dense and CSR storage (their optimizer state and target
copies along); :func:`keep_dense_optimizer_format` keeps saved optimizer state in one format for both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sparse_rl.sparse.distributions import connected_nonzeros
from sparse_rl.sparse.layers import MaskedConv2d, MaskedLinear, SparseLinear


def random_mask(shape: torch.Size | tuple[int, ...], nnz: int, generator: torch.Generator) -> torch.Tensor:
    """A boolean mask of ``shape`` with exactly ``nnz`` true entries placed uniformly at random."""
    numel = math.prod(shape)
    if not 0 <= nnz <= numel:
        raise ValueError(f"nnz must be in [0, {numel}], got {nnz}")
    flat = torch.zeros(numel, dtype=torch.bool)
    flat[torch.randperm(numel, generator=generator)[:nnz]] = True
    return flat.view(*shape)


def unconnected_units(mask: torch.Tensor) -> tuple[int, int]:
    """``(output units without an input, input units without an output)`` of a layer's mask ``[out, in, *kernel]``."""
    m = mask.reshape(mask.shape[0], mask.shape[1], -1).any(dim=2)
    return int((~m.any(dim=1)).sum()), int((~m.any(dim=0)).sum())


@torch.no_grad()
def connect_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (``[out, in, *kernel]``, boolean) with every input unit (column; a conv's input channel) feeding
    some output unit, and as many connections.

    A mask that already does is returned as it is (the same object), so a connected draw costs nothing and
    draws no random numbers. Otherwise each unused input gets a connection (from the output with the fewest; a
    conv's kernel centre), and as many connections go from the inputs with the most (then from the outputs
    with the most, sparing outputs with a single connection where possible); lowest index breaks ties.
    Needs at least ``in`` connections.
    """
    out, inp = mask.shape[0], mask.shape[1]
    nnz = int(mask.sum())
    if nnz < inp:
        raise ValueError(f"a layer with {inp} inputs needs at least {inp} connections to use every input, got {nnz}")
    cube = mask.reshape(out, inp, -1)
    cols = (~cube.any(dim=2).any(dim=0)).nonzero().flatten().tolist()
    if not cols:
        return mask
    new = cube.clone()
    centre = new.shape[2] // 2
    for c in cols:
        r = int(new.sum(dim=(1, 2)).argmin())
        new[r, c, centre] = True
        row_deg, col_deg = new.sum(dim=(1, 2)), new.sum(dim=(0, 2))
        spare = new & (col_deg >= 2)[None, :, None]  # never the one just made, nor any input's only connection
        score = (col_deg[None, :, None] * (out + 1) + row_deg[:, None, None]
                 + (row_deg >= 2)[:, None, None] * (out + 1) * (out + 1)).expand_as(new)
        new.view(-1)[int(torch.where(spare, score, -1).reshape(-1).argmax())] = False
    return new.view(mask.shape)


def replace_linears(module: nn.Module) -> list[MaskedLinear]:
    """Replace every :class:`nn.Linear` inside ``module`` by a :class:`MaskedLinear`, and every
    :class:`nn.Conv2d` by a :class:`MaskedConv2d`, sharing their parameters.

    :return: the new layers in definition order.
    """
    layers: list[MaskedLinear] = []
    named = dict(module.named_modules())
    for name, child in list(named.items()):  # pre-order: the order layers are defined in
        if isinstance(child, MaskedLinear):
            layers.append(child)
        elif isinstance(child, (nn.Linear, nn.Conv2d)):
            parent_name, _, attr = name.rpartition(".")
            new = MaskedLinear.from_linear(child) if isinstance(child, nn.Linear) else MaskedConv2d.from_conv(child)
            setattr(named[parent_name], attr, new)
            layers.append(new)
    return layers


_MASKED_CLASSES: dict[type, type] = {}


def _load_masked_state_dict(self: nn.Module, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
    if any(str(k).endswith(".mask") for k in state_dict):
        replace_linears(self)  # a copy rebuilt with plain layers gets masked ones (masked ones are kept as they are)
    return nn.Module.load_state_dict(self, state_dict, strict=strict, assign=assign)


def masked_class(cls: type) -> type:
    """A subclass of the network class ``cls`` (e.g. SB3's SAC ``Actor``) whose ``load_state_dict`` turns its
    plain linears into masked ones when the state it loads holds masks, so ``network.save(path)`` and
    ``type(network).load(path)`` (SB3's ``BasePolicy`` API, which rebuilds the class from its constructor
    arguments) bring a sparse network back sparse. Made once per class and kept in this module, so instances
    pickle by reference."""
    if cls in _MASKED_CLASSES.values():
        return cls
    if cls not in _MASKED_CLASSES:
        name = f"Masked{cls.__name__}"
        new = type(name, (cls,), {"load_state_dict": _load_masked_state_dict, "__module__": __name__,
                                  "__doc__": f"{cls.__name__} whose ``load_state_dict`` restores masked layers."})
        new.__qualname__ = name
        globals().setdefault(name, new)
        _MASKED_CLASSES[cls] = new
    return _MASKED_CLASSES[cls]


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
    start_counts: Callable[[list[int]], list[int]] | None = None,
    structure: tuple[int, int] | None = None,
    what: str = "network",
) -> list[int]:
    """Give ``layers`` random masks with the global ``density`` shared by ``distribution``, every input and
    every unit on a path to the output.

    Every sparse layer gets at least :func:`~sparse_rl.sparse.distributions.connected_floor` weights
    (``max(out, in)``), and a drawn mask that leaves an input unit of a layer without a connection is repaired
    (:func:`connect_mask`), so every unit feeds the next layer and a gradient reaches every input. A unit
    without inputs of its own (its bias alone) still reaches the output and is left as drawn: repairing those
    too would have changed 16 of the 60 initial networks of the campaign's sparse trials, and the campaign's
    stored runs must stay what this code computes. Where ``density`` is too low for the floors, a warning says
    so and the lowest density that fits them is used. N:M masks (``structure``) are drawn as they are.

    :param start_counts: maps the per-layer nonzero counts of ``density`` to the counts the masks start
        with (a pruning method starts denser than its target).
    :param structure: ``(N, M)``: N:M masks, each sparse layer's density rounded to its nearest ``n/M``
        with ``1 <= n <= N`` (:mod:`sparse_rl.sparse.structure`).
    :param what: the network's name, for the warning.
    :return: the nonzero count of each layer.
    """
    from sparse_rl.sparse.structure import layer_n, nm_mask

    layers = list(layers)
    dense_layers = list(dense_layers) if dense_layers is not None else None
    shapes = [tuple(l.weight.shape) for l in layers]
    counts, used = connected_nonzeros(shapes, density, distribution, dense_layers)
    if used != density:
        warnings.warn(f"{what}: sparsity {1 - density:g} is too high for layers of shapes {shapes}: some unit would "
                      f"have no path to the output; using sparsity {1 - used:g}, the highest that connects every "
                      "unit (widen the network to keep the sparsity)", stacklevel=2)
    if start_counts is not None:
        counts = start_counts(counts)
    declared_dense = dense_layers or [False] * len(layers)
    for i, (layer, nnz) in enumerate(zip(layers, counts)):
        numel = layer.weight.numel()
        if structure is not None and not declared_dense[i]:  # also a layer the distribution filled: capped at N:M
            n = layer_n(nnz / numel, *structure)
            mask = nm_mask(tuple(layer.weight.shape), n, structure[1], generator).to(layer.weight.device)
            counts[i] = int(mask.sum())
        else:
            mask = connect_mask(random_mask(layer.weight.shape, nnz, generator)).to(layer.weight.device)
        layer.explored.zero_()
        layer.set_mask(mask)
        if sparse_init:
            layer.rescale_by_fan_in()
    return counts


@contextmanager
def dense_gradient_view(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, sparse-storage layers of ``module`` compute with a dense weight tensor (a leaf,
    equal to their weight), so gradients taken w.r.t. the yielded tensors are the *dense* weight gradients a
    dense-storage layer would have. Yields ``module``'s trainable tensors in ``parameters()`` order with each
    sparse layer's ``values`` replaced by its dense leaf. Used by diagnostics that must read the same on
    both backends (the critic's gradient SNR)."""
    sparse = [m for m in module.modules() if isinstance(m, SparseLinear)]
    leaves = {id(m.values): m.weight.detach().requires_grad_(m.values.requires_grad) for m in sparse}
    for m in sparse:
        m._dense_leaf = leaves[id(m.values)]
    try:
        yield [leaves.get(id(p), p) for p in module.parameters()]
    finally:
        for m in sparse:
            m._dense_leaf = None


def _set_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for child in root.modules():
        for attr, sub in list(child.named_children()):
            if sub is old:
                setattr(child, attr, new)
                return
    raise ValueError("layer not found in its network")


def use_sparse_storage_for(
    network: nn.Module,
    layers: list[MaskedLinear],
    chosen: list[bool],
    targets: Iterable[tuple[nn.Module, list[MaskedLinear]]] = (),
    optimizer: torch.optim.Optimizer | None = None,
) -> list[MaskedLinear]:
    """Give the ``chosen`` layers of ``network`` (and the aligned layers of its ``targets``) sparse storage,
    and the others dense storage.

    The new :class:`SparseLinear` (or :class:`MaskedLinear`) modules replace the old ones in place;
    ``optimizer``'s parameter list gets each new layer's trained parameter (``values`` or ``weight``) where
    it had the old one (call before the first step), and its ``state_dict`` keeps the dense layout of
    :class:`MaskedLinear` (see :func:`keep_dense_optimizer_format`).

    :return: the network's layers after the swap, aligned with ``layers``.
    """
    new_layers = list(layers)
    swapped: dict[int, nn.Parameter] = {}
    for net, net_layers in [(network, layers), *targets]:
        for i, (layer, sparse) in enumerate(zip(net_layers, chosen)):
            if sparse and layer.storage == "dense":
                new: MaskedLinear = SparseLinear.from_masked(layer)
                old_param, new_param = layer.weight, new.values
            elif not sparse and isinstance(layer, SparseLinear):
                new = layer.to_masked()
                old_param, new_param = layer.values, new.weight
            else:
                continue
            _set_module(net, layer, new)
            if net is network:
                swapped[id(old_param)] = new_param
                new_layers[i] = new
    if optimizer is not None and swapped:
        if optimizer.state:
            raise RuntimeError("sparse storage must be chosen before the optimizer's first step")
        for group in optimizer.param_groups:
            group["params"] = [swapped.get(id(p), p) for p in group["params"]]
        keep_dense_optimizer_format(optimizer, [l for l in new_layers if isinstance(l, SparseLinear)])
    return new_layers


def _is_values_slot(value: object, layer: SparseLinear) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == layer.nnz


def _is_dense_slot(value: object, layer: SparseLinear) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == layer.mask.shape


def keep_dense_optimizer_format(optimizer: torch.optim.Optimizer, layers: list[SparseLinear]) -> None:
    """Make ``optimizer.state_dict()`` store the slots of sparse-storage ``layers`` (Adam's moments, ...)
    as dense ``[out, in]`` tensors, and ``load_state_dict`` accept either layout, so optimizer state moves
    between backends like the layers' own ``state_dict`` does. Loading needs the layers' masks loaded first
    (SB3 loads the policy before its optimizers)."""
    by_param = {id(layer.values): layer for layer in layers}

    def indexed(opt: torch.optim.Optimizer) -> dict[int, SparseLinear]:
        params = [p for group in opt.param_groups for p in group["params"]]
        return {i: by_param[id(p)] for i, p in enumerate(params) if id(p) in by_param}

    def to_dense(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in indexed(opt).items():
            if i in state:
                state[i] = {k: layer.structure().dense(v) if _is_values_slot(v, layer) else v for k, v in state[i].items()}
        return {**state_dict, "state": state}

    def to_values(opt: torch.optim.Optimizer, state_dict: dict) -> dict:
        state = dict(state_dict["state"])
        for i, layer in indexed(opt).items():
            if i in state:
                m = layer.mask.reshape(-1)
                state[i] = {k: v.reshape(-1)[m.to(v.device)] if _is_dense_slot(v, layer) else v for k, v in state[i].items()}
        return {**state_dict, "state": state}

    optimizer.register_state_dict_post_hook(to_dense)
    optimizer.register_load_state_dict_pre_hook(to_values)
