"""Masked linear layers: the mask is state, absent weights are exact zeros.

:class:`MaskedLinear` is an :class:`torch.nn.Linear` with two boolean buffers (so both are in
``state_dict`` and survive save/load; see "Saved masks" below):

- ``mask``: which connections exist. Absent weights are kept at exactly ``0.0``; the forward pass is the
  plain dense ``F.linear`` on that weight, so it costs no more than a dense layer and autograd yields the
  *dense* gradient that gradient-based growth (RigL) needs. Masking of gradients and of optimizer state
  is done by the topology controller around the optimizer step.
- ``explored``: which connections were ever active (for the ITOP rate).

:class:`SparseLinear` is the same layer with *sparse storage*: the trained parameter is ``values``, the
active weights only (CSR order), and forward/backward run sparse kernels (:mod:`sparse_rl.sparse.kernels`),
so compute, optimizer state and target updates all follow the nonzeros. Both classes share one
interface (:meth:`MaskedLinear.change_mask`, :meth:`MaskedLinear.set_weights`,
:meth:`MaskedLinear.dense_grad`) through which topology updates are made, and one ``state_dict`` format
(dense ``weight`` + ``mask``), so a checkpoint of either loads into either.

Saved masks: in ``state_dict`` both buffers are float tensors of 0.0 and 1.0 (in memory they stay boolean), so code
that treats every ``state_dict`` entry as a float tensor (``torch.rand_like``, averaging, ``.half()``, SB3's own
tests) works on a sparse policy. Loading accepts floats and booleans (every model saved before is boolean): a
connection exists where the saved mask rounds to 1 (``>= 0.5``), and weights where it rounds to 0 load as
exactly ``0.0``.

The dense compute path is a module-level function (:func:`set_linear_backend`). Applying these layers to a
network (replacing its linears, drawing masks, switching storage) is :mod:`sparse_rl.sparse.networks`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparse_rl.sparse.kernels import CSRStructure, sparse_linear

LinearBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


def _dense_backend(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or bias is None:
        return F.linear(x, weight, bias)
    # (W xᵀ + b)ᵀ: the same GEMM as F.linear, but the output is the transposed view of a [out, batch] tensor,
    # the layout SparseLinear reads and writes without copies. A dense layer beside sparse ones then
    # hands them activations and gradients they need not transpose (measured: a 90%-sparse HalfCheetah
    # critic, dense first layer, forward + backward 1285 µs with F.linear's layout, 903 µs with this one;
    # an all-dense stack is unchanged).
    return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()


_backend: LinearBackend = _dense_backend

#: the topology buffers of a masked layer: boolean in memory, 0.0/1.0 floats in ``state_dict``
TOPOLOGY_BUFFERS = ("mask", "explored")


def _save_topology_as_float(destination: dict, prefix: str, dtype: torch.dtype) -> None:
    for name in TOPOLOGY_BUFFERS:
        if prefix + name in destination:
            destination[prefix + name] = destination[prefix + name].to(dtype)


def _load_topology_as_bool(state_dict: dict, prefix: str) -> None:
    for name in TOPOLOGY_BUFFERS:
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and value.dtype != torch.bool:
            state_dict[prefix + name] = value >= 0.5  # rounded to the nearer of 0 and 1


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

    @property
    def dense_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

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

    # ---------------------------------------------- interface shared with SparseLinear
    #: ``"dense"``: the trained parameter is the dense ``weight``; ``"sparse"``: the active ``values``
    storage: str = "dense"
    #: set by the topology controller before a backward pass whose dense weight gradient it needs
    capture_dense_grad: bool = False

    @property
    def trained_weight(self) -> nn.Parameter:
        """The parameter the optimizer updates for this layer's weights."""
        return self.weight

    def dense_grad(self) -> torch.Tensor | None:
        """The dense gradient of the weight (at absent connections too), or ``None`` if there is none."""
        return self.weight.grad

    def clear_dense_grad(self) -> None:
        """Forget a kept dense gradient (sparse storage keeps one only when asked; nothing to do here)."""

    @torch.no_grad()
    def change_mask(
        self, mask: torch.Tensor, changed: torch.Tensor | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Make ``mask`` the topology: weights and every optimizer slot of the weight restart at zero where
        ``changed`` is true (dropped, grown or rewired positions); kept connections keep both."""
        if changed is not None:
            self.weight.masked_fill_(changed, 0.0)
            if optimizer is not None:
                for slot in optimizer.state.get(self.weight, {}).values():
                    if isinstance(slot, torch.Tensor) and slot.shape == self.weight.shape:
                        slot.masked_fill_(changed, 0)
        self.set_mask(mask)

    @torch.no_grad()
    def set_weights(self, positions: torch.Tensor, weight: torch.Tensor) -> None:
        """Write ``weight`` (dense ``[out, in]``) at the active ``positions`` (boolean ``[out, in]``)."""
        positions = positions & self.mask
        self.weight[positions] = weight[positions].to(self.weight)

    @torch.no_grad()
    def rescale_by_fan_in(self) -> None:
        """Sparse-aware init: scale each output neuron's weights by ``sqrt(dense_fan_in / actual_fan_in)``.

        This keeps the variance of each pre-activation what the dense initialisation intended
        (Evci et al. 2022, "Gradient flow in sparse neural networks").
        """
        fan_in = self.mask.sum(dim=1, keepdim=True).clamp(min=1).to(self.weight.dtype)
        self.weight.mul_(torch.sqrt(self.in_features / fan_in))

    # ------------------------------------------------------------ state_dict
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        _save_topology_as_float(destination, prefix, torch.float32)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        _load_topology_as_bool(state_dict, prefix)
        errors_before = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if prefix + "weight" in state_dict and prefix + "mask" in state_dict and len(error_msgs) == errors_before:
            self.apply_mask()  # absent connections are exactly zero, whatever the file held there

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, density={self.density:.4f}"



class MaskedConv2d(MaskedLinear):
    """A 2-D convolution with :class:`MaskedLinear`'s interface: ``weight`` and ``mask`` are
    ``[out_channels, in_channels / groups, kh, kw]`` and absent weights are exactly zero.

    Topology methods, controllers and ER/ERK (which count the kernel's size, as Evci et al. 2020 do) treat it
    like any masked layer. ``in_features``/``out_features`` are its fan-in (``in_channels / groups * kh * kw``)
    and ``out_channels``, so FLOP counts are per output position. Convolutions keep dense storage: ``backend``
    ``auto`` and ``sparse`` apply to linear layers only. Build one with :meth:`from_conv`.
    """

    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> MaskedConv2d:
        """Wrap ``conv``, *reusing its Parameter objects* (optimizers that hold them stay valid)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"MaskedConv2d supports padding_mode='zeros', got {conv.padding_mode!r}")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_channels, new.out_channels, new.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        new.stride, new.padding, new.dilation, new.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        new.in_features = conv.weight[0].numel()
        new.out_features = conv.out_channels
        new.weight = conv.weight
        new.bias = conv.bias
        ones = torch.ones_like(conv.weight, dtype=torch.bool)
        new.register_buffer("mask", ones)
        new.register_buffer("explored", ones.clone())
        new.train(conv.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    @property
    def dense_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @torch.no_grad()
    def rescale_by_fan_in(self) -> None:
        fan_in = self.mask.reshape(self.out_channels, -1).sum(dim=1).clamp(min=1).to(self.weight.dtype)
        self.weight.mul_(torch.sqrt(self.in_features / fan_in).view(-1, 1, 1, 1))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"density={self.density:.4f}")


class SparseLinear(MaskedLinear):
    """A :class:`MaskedLinear` with sparse storage: the trained parameter is ``values``, its active weights.

    Build one with :meth:`from_masked` (the mask fixes the nonzero count). ``weight`` is a read-only
    dense view computed from ``values`` (differentiable, so diagnostics and exports that read it keep
    working); write through :meth:`change_mask` and :meth:`set_weights`. The CSR structure is rebuilt
    only when the mask changes (it is cached against the mask buffer's version counter), so the per-step
    cost is O(nonzeros). ``state_dict`` holds the dense ``weight`` exactly as :class:`MaskedLinear`'s.
    """

    storage = "sparse"
    values: nn.Parameter

    @classmethod
    def from_masked(cls, layer: MaskedLinear) -> SparseLinear:
        """A sparse-storage copy of ``layer`` with the same mask, weights and ITOP record."""
        if isinstance(layer, SparseLinear):
            return layer
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        weight = layer.weight.detach()
        new.values = nn.Parameter(weight[layer.mask].clone(), requires_grad=layer.weight.requires_grad)
        new.bias = layer.bias
        new.register_buffer("mask", layer.mask.clone())
        new.register_buffer("explored", layer.explored.clone())
        new._structure = None
        new._structure_key = None
        new._dense_grad = None
        new._dense_leaf = None
        new.capture_dense_grad = False
        new.train(layer.training)
        return new

    def to_masked(self) -> MaskedLinear:
        """A dense-storage copy (:class:`MaskedLinear`) with the same mask, weights and ITOP record."""
        new = MaskedLinear.__new__(MaskedLinear)
        nn.Module.__init__(new)
        new.in_features, new.out_features = self.in_features, self.out_features
        new.weight = nn.Parameter(self.weight.detach().clone(), requires_grad=self.values.requires_grad)
        new.bias = self.bias
        new.register_buffer("mask", self.mask.clone())
        new.register_buffer("explored", self.explored.clone())
        new.train(self.training)
        return new

    # ---------------------------------------------------------------- storage
    def structure(self) -> CSRStructure:
        """The CSR structure of the current mask (rebuilt only after the mask changed)."""
        key = (self.mask._version, self.mask.data_ptr())
        if self._structure is None or self._structure_key != key:
            self._structure = CSRStructure.from_mask(self.mask)
            self._structure_key = key
        return self._structure

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.structure().dense(self.values)

    @property
    def trained_weight(self) -> nn.Parameter:
        return self.values

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_leaf is not None:  # inside dense_gradient_view()
            return _dense_backend(x, self._dense_leaf, self.bias, self.mask)
        return sparse_linear(x, self.values, self.bias, self.structure(), self)

    # --------------------------------------------------------- dense gradient
    def _store_dense_grad(self, grad: torch.Tensor) -> None:
        # Same accumulation rule as ``.grad``: a backward after ``zero_grad(set_to_none=True)`` starts over.
        if self.values.grad is None or self._dense_grad is None:
            self._dense_grad = grad
        else:
            self._dense_grad = self._dense_grad + grad

    def dense_grad(self) -> torch.Tensor | None:
        """The dense weight gradient of the last backward pass made with ``capture_dense_grad`` set."""
        return self._dense_grad

    def clear_dense_grad(self) -> None:
        self._dense_grad = None

    # ------------------------------------------------------ topology changes
    @torch.no_grad()
    def change_mask(
        self, mask: torch.Tensor, changed: torch.Tensor | None = None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """See :meth:`MaskedLinear.change_mask`; here values, their gradient and every optimizer slot shaped
        like them are re-laid out for the new structure (kept connections keep theirs, the rest start at 0)."""
        mask = mask.to(device=self.mask.device, dtype=torch.bool).clone()
        old = self.structure()
        self.mask.copy_(mask)
        self.explored.logical_or_(mask)
        new = self.structure()
        keep, src_kept = _relayout_map(old.index, new.index, mask.numel(), changed)

        def relayout(t: torch.Tensor) -> torch.Tensor:
            return _relayout(t, keep, src_kept)

        slots = optimizer.state.get(self.values, {}) if optimizer is not None else {}
        for name, slot in list(slots.items()):
            if isinstance(slot, torch.Tensor) and slot.shape == self.values.shape:
                slots[name] = relayout(slot)
        grad = None if self.values.grad is None else relayout(self.values.grad)
        values = relayout(self.values)
        if values.shape == self.values.shape:
            self.values.copy_(values)
            if grad is not None:
                self.values.grad = grad
            return
        # A new nonzero count needs a new parameter: swapping ``.data`` under the old one keeps autograd's
        # gradient accumulator for it, which remembers the old shape while any graph that used it is alive
        # (SB3's SAC keeps the critic loss until the next step), and the next backward then fails.
        old_param = self.values
        param = nn.Parameter(values, requires_grad=old_param.requires_grad)
        if grad is not None:
            param.grad = grad
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["params"] = [param if p is old_param else p for p in group["params"]]
            if old_param in optimizer.state:
                optimizer.state[param] = optimizer.state.pop(old_param)
        self.values = param

    @torch.no_grad()
    def set_weights(self, positions: torch.Tensor, weight: torch.Tensor) -> None:
        index = self.structure().index
        chosen = positions.reshape(-1).to(index.device)[index]
        self.values[chosen] = weight.reshape(-1).to(self.values)[index][chosen]

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        self.change_mask(mask)

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Nothing to do: absent weights are not stored."""

    @torch.no_grad()
    def rescale_by_fan_in(self) -> None:
        fan_in = self.mask.sum(dim=1).clamp(min=1).to(self.values.dtype)
        scale = torch.sqrt(self.in_features / fan_in)
        rows = torch.div(self.structure().index, self.in_features, rounding_mode="floor")
        self.values.mul_(scale[rows])

    # ------------------------------------------------------------ state_dict
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        values = destination.pop(prefix + "values")
        entries = {prefix + "weight": self.structure().dense(values if keep_vars else values.detach())}
        for key in [k for k in destination if k.startswith(prefix) and "." not in k[len(prefix) :]]:
            entries[key] = destination.pop(key)
        destination.update(entries)  # the same keys, in the same order, as MaskedLinear's

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        _load_topology_as_bool(state_dict, prefix)
        weight_key, mask_key = prefix + "weight", prefix + "mask"
        if weight_key in state_dict and mask_key in state_dict:
            weight, mask = state_dict.pop(weight_key), state_dict[mask_key]
            if tuple(weight.shape) != self.dense_shape or tuple(mask.shape) != self.dense_shape:
                error_msgs.append(
                    f"size mismatch for {weight_key}: copying a param with shape {tuple(weight.shape)} (mask "
                    f"{tuple(mask.shape)}), the shape in current model is {self.dense_shape}."
                )
                return
            values = weight.reshape(-1)[mask.reshape(-1).to(torch.bool)]
            if values.shape != self.values.shape:
                with torch.no_grad():
                    self.values.data = self.values.data.new_empty(values.shape)
            state_dict[prefix + "values"] = values
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, storage=sparse"


def _relayout_map(old_index: torch.Tensor, new_index: torch.Tensor, numel: int,
                  changed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Values stored at the flat positions ``old_index``, re-laid out at ``new_index``: ``(keep, source)``, where
    ``keep`` marks the new values that come from an old one (kept, not ``changed``) and ``source`` says which."""
    source = torch.full((numel,), -1, dtype=torch.int64, device=old_index.device)
    source[old_index] = torch.arange(old_index.numel(), device=old_index.device)
    if changed is not None:
        source[changed.reshape(-1).to(old_index.device)] = -1
    src = source[new_index]
    keep = src >= 0
    return keep, src[keep]


def _relayout(t: torch.Tensor, keep: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    out = t.new_zeros(keep.numel())
    out[keep] = t[source]
    return out


@torch.no_grad()
def follow_loaded_mask(layer: MaskedLinear, old_mask: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` gave ``layer`` a mask other than ``old_mask``, make ``optimizer``'s slots of its
    weights (Adam's moments, ...) follow, as :meth:`MaskedLinear.change_mask` would: connections present in
    both keep theirs, the others start at zero (sparse storage: the slots are re-laid out for the new count)."""
    state = optimizer.state.get(layer.trained_weight)
    if not state or torch.equal(old_mask, layer.mask):
        return
    changed = old_mask != layer.mask
    if layer.storage == "dense":
        for slot in state.values():
            if isinstance(slot, torch.Tensor) and slot.shape == layer.mask.shape:
                slot.masked_fill_(changed, 0)
        return
    old_index = old_mask.reshape(-1).nonzero().squeeze(1)
    keep, src_kept = _relayout_map(old_index, layer.structure().index, old_mask.numel(), changed)
    for name, slot in list(state.items()):
        if isinstance(slot, torch.Tensor) and slot.dim() == 1 and slot.numel() == old_index.numel():
            state[name] = _relayout(slot, keep, src_kept)
