"""Topology updaters: *what* to drop and *what* to grow.

An updater only defines scores; the shared :meth:`Updater.update` turns scores into a new mask, so a new
method is one small class registered by name::

    @register_updater("my_method")
    class MyMethod(Updater):
        def grow_score(self, weight, grad, generator):
            return grad.abs() * weight.new_empty(weight.shape).uniform_(generator=generator)

Scores follow one convention: the *lowest* ``drop_score`` among active weights is dropped first, the
*highest* ``grow_score`` among the weights that were not kept is grown first. Grown connections may
include some just dropped (as in RigL); kept and grown never overlap and the number of active
connections of the layer never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class MaskUpdate:
    """Result of one layer's update: the new mask and the positions dropped and grown (all boolean)."""

    mask: torch.Tensor
    dropped: torch.Tensor
    grown: torch.Tensor

    @property
    def changed(self) -> torch.Tensor:
        """Positions whose weight and optimizer state must restart from zero."""
        return self.dropped | self.grown


class Updater:
    """Base class: magnitude drop, no growth signal defined."""

    name: ClassVar[str] = ""
    #: whether :meth:`grow_score` needs the dense gradient of the weights
    needs_grad: ClassVar[bool] = False
    #: ``False`` for updaters that never change the topology (static sparse training)
    changes_topology: ClassVar[bool] = True

    def drop_groups(self, weight: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Disjoint groups of active weights; ``drop_fraction`` of each group is dropped."""
        return [mask]

    def drop_score(self, weight: torch.Tensor) -> torch.Tensor:
        """Lower is dropped first. Default: weight magnitude."""
        return weight.abs()

    def grow_score(self, weight: torch.Tensor, grad: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """Higher is grown first."""
        raise NotImplementedError

    @torch.no_grad()
    def update(
        self,
        weight: torch.Tensor,
        mask: torch.Tensor,
        drop_fraction: float,
        grad: torch.Tensor | None,
        generator: torch.Generator,
    ) -> MaskUpdate:
        """Drop ``drop_fraction`` of each drop group, grow as many elsewhere.

        :param weight: the layer's weight, any shape.
        :param mask: boolean, same shape as ``weight``.
        :param drop_fraction: in [0, 1].
        :param grad: dense gradient of ``weight`` (required when :attr:`needs_grad`).
        :param generator: CPU generator for any randomness.
        """
        if self.needs_grad and grad is None:
            raise ValueError(f"updater {self.name!r} needs the dense gradient of the weights")
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
        if n_grow:
            scores = self.grow_score(weight, grad, generator).flatten().float()
            scores = scores.masked_fill(kept, float("-inf"))
            # Visit positions in random order so that ties (e.g. zero gradients) break at random.
            perm = torch.randperm(scores.numel(), generator=generator).to(scores.device)
            grown[perm[torch.topk(scores[perm], n_grow).indices]] = True
        new_mask = kept | grown
        if int(new_mask.sum()) != int(flat_mask.sum()) or bool((kept & grown).any()):
            raise RuntimeError(f"updater {self.name!r} broke the mask invariants")
        shape = mask.shape
        return MaskUpdate(new_mask.view(shape), dropped.view(shape), grown.view(shape))


_UPDATERS: dict[str, type[Updater]] = {}


def register_updater(name: str):
    """Class decorator: make an :class:`Updater` selectable by ``name``."""

    def deco(cls: type[Updater]) -> type[Updater]:
        cls.name = name
        _UPDATERS[name] = cls
        return cls

    return deco


def available_updaters() -> list[str]:
    return sorted(_UPDATERS)


def make_updater(name: str) -> Updater:
    """Instantiate the updater registered as ``name``.

    :raises ValueError: for an unknown name (the message lists the known ones).
    """
    if name not in _UPDATERS:
        raise ValueError(f"unknown topology {name!r}; known: {', '.join(available_updaters())}")
    return _UPDATERS[name]()


def _uniform_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator).to(weight.device)


@register_updater("static")
class Static(Updater):
    """Static sparse training: the random initial mask never changes."""

    changes_topology = False

    def grow_score(self, weight, grad, generator):  # pragma: no cover - never called
        raise RuntimeError("static topology never grows")


@register_updater("set")
class SET(Updater):
    """Sparse Evolutionary Training (Mocanu et al. 2018).

    Drops the smallest positive and the largest negative weights (``drop_fraction`` of each sign
    separately; exact zeros count as positive) and grows at uniformly random free positions.
    """

    def drop_groups(self, weight, mask):
        return [mask & (weight >= 0), mask & (weight < 0)]

    def grow_score(self, weight, grad, generator):
        return _uniform_scores(weight, generator)


@register_updater("rigl")
class RigL(Updater):
    """RigL (Evci et al. 2020): drop smallest magnitude, grow where the dense gradient is largest.

    Ties in the gradient (e.g. exact zeros under dead ReLUs) are broken at random.
    """

    needs_grad = True

    def grow_score(self, weight, grad, generator):
        assert grad is not None  # checked in update()
        return grad.abs()
