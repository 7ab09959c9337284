"""Pruning at initialisation, adapted to RL: one-shot pruning of a dense start from its first gradients.

SNIP (connection sensitivity ``|g ⊙ w|``) and GraSP (gradient flow, ``-w ⊙ Hg``); afterwards the topology
is static, or evolves by a RigL of the method's own (``then="rigl"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparse_rl.topology.methods.base import MaskUpdate, Method, register_method
from sparse_rl.topology.methods.dst import RegrowthOptions
from sparse_rl.topology.methods.selection import keep_largest, keep_largest_global, keep_top, keep_top_global


@register_method("snip")
@dataclass
class SNIP(RegrowthOptions, Method):
    """SNIP (Lee et al. 2019): one-shot pruning by connection sensitivity ``|g ⊙ w|``, adapted to RL.

    A supervised network is pruned at initialisation from a batch of data; an RL agent has no data
    before it acts, so here the network starts dense, collects ``learning_starts`` random steps as SB3
    does, and the sensitivity is computed from the dense gradients of its first ``score_batches``
    optimizer steps (SB3's own losses on replay batches: the critic's TD loss for the critic, the policy
    loss for the actor), summed, times the weights after those steps. Right after step
    ``score_batches`` each layer keeps its target number of most sensitive connections (``scope=layer``,
    the ``distribution``'s targets) or the network keeps its total (``scope=global``, SNIP's original).
    Then the topology is static, or with ``then="rigl"`` evolves by RigL (a RigL of its own, whose options
    apply) every ``update_interval`` steps until ``end_fraction``.
    """

    score_batches: int = 1
    scope: str = "layer"
    then: str = "static"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._regrowth = self.make_regrowth()  # what evolves the topology after pruning, with then="rigl"
        if isinstance(self.score_batches, bool) or not isinstance(self.score_batches, int) or self.score_batches < 1:
            raise ValueError(f"score_batches must be an int >= 1, got {self.score_batches!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.then not in ("static", "rigl"):
            raise ValueError(f"then must be 'static' or 'rigl', got {self.then!r}")
        self._targets: list[int] | None = None
        self._scores: list[torch.Tensor] | None = None
        self._pruned = False

    def check_schedule(self, update_interval, end_fraction):
        self._regrowth.check_schedule(update_interval, end_fraction)

    def start_nonzeros(self, targets, sizes):
        self._targets = list(targets)
        return list(sizes)  # dense until the sensitivities are known

    def is_update_step(self, step, update_interval, progress, end_fraction):
        if not self._pruned:
            return step == self.score_batches
        return self.then == "rigl" and self._regrowth.is_update_step(step, update_interval, progress, end_fraction)

    def needs_dense_grad(self, step, update_interval):
        if not self._pruned:
            return step <= self.score_batches
        return self.then == "rigl" and self._regrowth.needs_dense_grad(step, update_interval)

    @torch.no_grad()
    def observe(self, step, update_interval, grads, due):
        if self._pruned:
            self._regrowth.observe(step, update_interval, grads, due)
        elif self._scores is None:
            self._scores = [g.detach().clone() for g in grads]
        else:
            torch._foreach_add_(self._scores, list(grads))

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._pruned:
            return self._regrowth.update(weights, masks, fraction, generator, progress)
        if self._targets is None or self._scores is None:
            raise RuntimeError("snip needs its target nonzeros and the gradients of its first steps")
        sensitivity = [(g * w).abs() for g, w in zip(self._scores, weights)]
        if self.scope == "layer":
            new_masks = [keep_largest(s, m, k) for s, m, k in zip(sensitivity, masks, self._targets)]
        else:
            new_masks = keep_largest_global(sensitivity, masks, sum(self._targets))
        self._scores, self._pruned = None, True
        return [MaskUpdate(new, m & ~new, torch.zeros_like(m)) for m, new in zip(masks, new_masks)]

    def state_dict(self) -> dict[str, Any]:
        scores = None if self._scores is None else [t.clone() for t in self._scores]
        return {**self._regrowth.state_dict(), "pruned": self._pruned, "scores": scores}

    def load_state_dict(self, state, device="cpu"):
        self._regrowth.load_state_dict(state, device)
        self._pruned = bool(state.get("pruned", False))
        scores = state.get("scores")
        self._scores = None if scores is None else [t.to(device).clone() for t in scores]


@register_method("grasp")
@dataclass
class GraSP(SNIP):
    """GraSP (Wang et al. 2020): one-shot pruning that preserves gradient flow, adapted to RL like SNIP.

    The score of a connection is ``-w ⊙ Hg``: ``g`` is the gradient of the network's loss and ``Hg`` the
    Hessian-gradient product, the gradient of ``gᵀ stop_grad(g)`` (double backpropagation). A high score
    marks a connection whose removal reduces the gradient norm least (or raises it), so each layer (or the
    network, ``scope=global``) keeps its target number of *lowest* scores, as Wang et al.'s code does.

    RL adaptation: the network starts dense and collects ``learning_starts`` random steps; right after
    the first optimizer step the losses SB3 minimises (the critic's TD loss, the policy loss for the actor)
    are computed on ``score_batches`` fresh replay batches with their graphs, ``g`` is summed over them,
    and ``Hg`` is the gradient of their summed ``gᵀ stop_grad(g)``. Sampling those batches leaves every
    random generator as it was. Afterwards the topology is static, or follows RigL with ``then="rigl"``.
    The policy supplies the losses (:attr:`loss_fn`); a custom loop sets it to a function returning
    ``n`` scalar losses computed from the layers' weights.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        #: ``loss_fn(n)`` -> ``n`` scalar losses of the network on fresh batches, with their graphs
        self.loss_fn: Callable[[int], list[torch.Tensor]] | None = None

    def is_update_step(self, step, update_interval, progress, end_fraction):
        if not self._pruned:
            return step == 1
        return super().is_update_step(step, update_interval, progress, end_fraction)

    def needs_dense_grad(self, step, update_interval):
        return self._pruned and super().needs_dense_grad(step, update_interval)

    def observe(self, step, update_interval, grads, due):
        if self._pruned:
            super().observe(step, update_interval, grads, due)

    def scores(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``-w ⊙ Hg`` for each of ``weights`` (the layers' dense weight parameters)."""
        if self.loss_fn is None:
            raise RuntimeError(
                "grasp needs the network's loss: train through SAC/TD3 with a sparse policy, or set the "
                "method's loss_fn"
            )
        if not all(w.requires_grad and w.is_leaf for w in weights):
            raise RuntimeError("grasp scores dense weight parameters; these layers store their weights sparsely")
        with torch.enable_grad():
            losses = self.loss_fn(self.score_batches)
            grads = [torch.autograd.grad(loss, weights, create_graph=True) for loss in losses]
            total = [sum(gs) for gs in zip(*grads)]
            flow = sum((g * g.detach()).sum() for g in total)
            hessian_grad = torch.autograd.grad(flow, weights)
        return [-(w.detach() * hg) for w, hg in zip(weights, hessian_grad)]

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._pruned:
            return super().update(weights, masks, fraction, generator, progress)
        if self._targets is None:
            raise RuntimeError("grasp needs its target nonzeros")
        lowest = [-s for s in self.scores(weights)]
        if self.scope == "layer":
            new_masks = [keep_top(s, m, k) for s, m, k in zip(lowest, masks, self._targets)]
        else:
            new_masks = keep_top_global(lowest, masks, sum(self._targets))
        self._pruned = True
        return [MaskUpdate(new, m & ~new, torch.zeros_like(m)) for m, new in zip(masks, new_masks)]

