"""The contract every sparse training method fulfils, the drop-and-grow skeleton, and the registry by name.

A method decides, at each topology update, the new mask of every layer of a network. The shared
machinery (:class:`~sparse_rl.topology.TopologyController`) does the rest for every method: it masks
gradients, zeroes new weights and every optimizer slot at changed positions, re-masks target networks,
counts steps, schedules updates and logs. The families live beside this module: dynamic sparse training
(:mod:`.dst`), gradual pruning (:mod:`.pruning`), pruning at initialisation (:mod:`.init_pruning`), DeepR
(:mod:`.deepr`) and Top-KAST (:mod:`.topkast`).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparse_rl.topology.methods.selection import grow_top


@dataclass(frozen=True)
class MaskUpdate:
    """Result of one layer's update: the new mask and the positions dropped and grown (all boolean)."""

    mask: torch.Tensor
    dropped: torch.Tensor
    grown: torch.Tensor
    #: dense ``[out, in]`` weights the grown connections start from (``None``: zero, the default)
    values: torch.Tensor | None = None

    @property
    def changed(self) -> torch.Tensor:
        """Positions whose weight and optimizer state must restart from zero."""
        return self.dropped | self.grown


@dataclass
class Method:
    """Base class of sparse training methods. Subclasses are dataclasses whose fields are their options.

    :param rewire_dormant: at each update, give dormant neurons (ReDo score <= ``dormant_tau``) new random
        incoming connections (same count, fresh init) and zero their outgoing weights.
    :param dormant_tau: dormancy threshold, >= 0.
    """

    name: ClassVar[str] = ""
    #: ``False`` for methods that never change the topology (static sparse training)
    changes_topology: ClassVar[bool] = True

    rewire_dormant: bool = False
    dormant_tau: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.rewire_dormant, bool):
            raise TypeError(f"rewire_dormant must be a bool, got {self.rewire_dormant!r}")
        if isinstance(self.dormant_tau, bool) or not isinstance(self.dormant_tau, (int, float)) or not self.dormant_tau >= 0:
            raise ValueError(f"dormant_tau must be a number >= 0, got {self.dormant_tau!r}")

    def check_schedule(self, update_interval: int, end_fraction: float) -> None:
        """Check the options that must agree with the schedule; raise ``ValueError`` naming them."""

    def start_nonzeros(self, targets: Sequence[int], sizes: Sequence[int]) -> list[int]:
        """The nonzeros each layer starts training with, given the ``targets`` of the configured sparsity
        and distribution and the layers' ``sizes`` (weights). Sparse training starts at its targets; a
        pruning method starts denser and keeps the targets."""
        return list(targets)

    def active(self, progress: float, end_fraction: float) -> bool:
        """Whether the topology may still change at ``progress`` (fraction of training done)."""
        return progress < end_fraction

    def is_update_step(
        self, step: int, update_interval: int, progress: Callable[[], float], end_fraction: float
    ) -> bool:
        """Whether the topology changes after optimizer step ``step`` (``progress()``: fraction of training
        done). Default: every ``update_interval`` steps while :meth:`active`."""
        return step % update_interval == 0 and self.active(progress(), end_fraction)

    # ------------------------------------------------------------ gradient signal
    def needs_dense_grad(self, step: int, update_interval: int) -> bool:
        """Whether :meth:`observe` reads the dense weight gradients of optimizer step ``step``."""
        return False

    def observe(self, step: int, update_interval: int, grads: Sequence[torch.Tensor], due: bool) -> None:
        """Called before optimizer step ``step`` with the layers' dense gradients when
        :meth:`needs_dense_grad` said so; ``due`` tells whether the topology updates after this step."""

    # -------------------------------------------------------------------- update
    def update(
        self,
        weights: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        fraction: float,
        generator: torch.Generator,
        progress: float = 0.0,
    ) -> list[MaskUpdate | None]:
        """New masks of the layers of one network, one per layer (``None``: that layer is unchanged).

        :param weights: dense weights (absent connections at zero).
        :param masks: boolean, same shapes.
        :param fraction: the drop schedule's value now (for drop/grow methods: the fraction dropped).
        :param generator: CPU generator for any randomness.
        :param progress: fraction of training done.
        """
        raise NotImplementedError

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The method's state (tensors and numbers), saved with the policy."""
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` output."""

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --------------------------------------------------------------- extra hooks
    #: whether :meth:`after_step` runs after every optimizer step (while the method is active)
    wants_after_step: ClassVar[bool] = False

    def after_step(
        self, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], generator: torch.Generator
    ) -> list[torch.Tensor | None] | None:
        """After each optimizer step (with :attr:`wants_after_step`): new dense weights to write at each
        layer's active positions (``None``: unchanged)."""
        return None

    def extra_stats(self, masks: Sequence[torch.Tensor]) -> dict[str, float]:
        """Metrics of the method's own (logged with the controller's density, ITOP, ...)."""
        return {}


@dataclass
class DropGrow(Method):
    """Dynamic sparse training: drop by :meth:`drop_score`, grow as many by :meth:`grow_score`."""

    #: whether :meth:`grow_score` reads the dense weight gradient (``grad``)
    uses_gradient: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        #: N:M structure's M (set by the policy): growth replaces each drop inside its group of M columns
        self.group_size: int | None = None

    def drop_groups(self, weight: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Disjoint groups of active weights; ``drop_fraction`` of each group is dropped."""
        return [mask]

    def drop_score(self, weight: torch.Tensor) -> torch.Tensor:
        """Lower is dropped first. Default: weight magnitude."""
        return weight.abs()

    def grow_score(self, weight: torch.Tensor, grad: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """Higher is grown first."""
        raise NotImplementedError

    def grow_gradients(self) -> Sequence[torch.Tensor | None] | None:
        """The gradient signal :meth:`grow_score` uses at this update, one per layer (``None``: none)."""
        return None

    @torch.no_grad()
    def update_layer(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        drop_fraction: float,
        grad: torch.Tensor | None,
        generator: torch.Generator,
    ) -> MaskUpdate:
        """Drop ``drop_fraction`` of each drop group of one layer, grow as many elsewhere (``grad``: its dense
        gradient, needed when :attr:`uses_gradient`)."""
        if self.uses_gradient and grad is None:
            raise ValueError(f"method {self.name!r} needs the dense gradient of the weights")
        flat_mask = mask.flatten()
        dropped = torch.zeros_like(flat_mask)
        drop_scores = self.drop_score(weight).flatten().float()
        for group in self.drop_groups(weight, mask):
            group = group.flatten()
            k = int(drop_fraction * int(group.sum()))
            if k == 0:
                continue
            scores = drop_scores.masked_fill(~group, float("inf"))
            dropped[torch.topk(scores, k, largest=False).indices] = True
        kept = flat_mask & ~dropped
        n_grow = int(dropped.sum())
        grown = torch.zeros_like(flat_mask)
        if n_grow and self.group_size is not None:
            from sparse_rl.sparse.structure import grow_in_groups

            scores = self.grow_score(weight, grad, generator)
            shape = mask.shape
            grown = grow_in_groups(scores, kept.view(shape), dropped.view(shape), self.group_size, generator).flatten()
        elif n_grow:  # ties (e.g. zero gradients) break at random
            grown = grow_top(self.grow_score(weight, grad, generator), ~kept, n_grow, generator).flatten()
        new_mask = kept | grown
        if int(new_mask.sum()) != int(flat_mask.sum()) or bool((kept & grown).any()):
            raise RuntimeError(f"method {self.name!r} broke the mask invariants")
        shape = mask.shape
        return MaskUpdate(new_mask.view(shape), dropped.view(shape), grown.view(shape))

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        grads = self.grow_gradients() if self.uses_gradient else None
        if self.uses_gradient and grads is None:
            raise ValueError(f"method {self.name!r} needs the dense gradient of the weights")
        return [
            None if bool(m.all()) else self.update_layer(w, m, fraction, grads[i] if grads is not None else None, generator)
            for i, (w, m) in enumerate(zip(weights, masks))
        ]  # fully dense layers have nothing to explore


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: make a :class:`Method` selectable by ``name`` (``topology=name``)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def available_methods() -> list[str]:
    return sorted(_METHODS)


def method_options(name: str) -> dict[str, Any]:
    """The options of method ``name`` with their defaults."""
    return make_method(name).options()


def make_method(name: str, **options: Any) -> Method:
    """Instantiate the method registered as ``name`` with ``options``.

    :raises ValueError: for an unknown name or option (the message lists the known ones), or an option
        out of range (the message names it and its allowed range).
    """
    if name not in _METHODS:
        raise ValueError(f"unknown topology {name!r}; known: {', '.join(available_methods())}")
    cls = _METHODS[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise ValueError(f"unknown option {key!r} of topology {name!r}; {hint}its options: {', '.join(known)}")
    return cls(**options)



LEGACY_OPTIONS: dict[str, Any] = {
    "grow_signal": "batch",
    "grow_batches": 1,
    "grow_momentum": 0.9,
    "rewire_dormant": False,
    "dormant_tau": 0.1,
}


def migrate_legacy_options(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a config or policy kwargs saved by an older version) with the former flat method keys
    moved into ``topology_kwargs``; those at their old default are dropped (they meant "not set")."""
    if not any(key in values for key in LEGACY_OPTIONS):
        return values
    values = dict(values)
    options = dict(values.get("topology_kwargs") or {})
    for key, default in LEGACY_OPTIONS.items():
        if key in values:
            value = values.pop(key)
            if value != default:
                options.setdefault(key, value)
    values["topology_kwargs"] = options
    return values

