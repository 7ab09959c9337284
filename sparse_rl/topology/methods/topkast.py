"""Top-KAST (Jayakumar et al. 2020): a forward set of the top-k weights, and a reserve that learns beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparse_rl.topology.methods.base import MaskUpdate, Method, register_method
from sparse_rl.topology.methods.selection import check_number, drop_smallest, grow_top, uniform_scores


@register_method("topkast")
@dataclass
class TopKAST(Method):
    """Top-KAST (Jayakumar et al. 2020): a forward set of the top-k weights, a larger backward set.

    Each layer's mask is the forward set A (its nonzeros: what the network computes with, what its density
    reports). Beside it the method keeps a reserve R: ``(backward_ratio - 1) * |A|`` more positions whose
    weights also learn, from the dense gradient of every optimizer step, though the forward pass does not
    use them: A ∪ R is the backward set B, of density ``backward_ratio`` times the forward one (capped at
    dense), logged as ``backward_density``. The forward set is trained by the optimizer as usual; reserve
    weights take steps of their own (they are not parameters the optimizer knows): the gradient plus
    Top-KAST's exploration penalty, an L2 term of weight ``penalty / D`` (``D``: the layer's forward
    density) so that a connection outside the forward set must earn its way in, divided by the root of
    its running mean square (RMSprop, β = 0.999, bias-corrected, as Adam's second moment), times
    ``reserve_lr``. A reserve weight does not take part in the forward pass, so its gradient does not
    shrink as it grows: plain SGD steps (the first version) summed SAC's critic gradients until reserve
    weights reached 1e4 and, entering A by magnitude, made the critic diverge within 10k steps on
    HalfCheetah. Normalised steps move a weight at most about ``reserve_lr`` per step, like Adam. Every
    ``update_interval`` steps A becomes the top ``|A|`` magnitudes of A ∪ R (reserve weights that enter
    start from their reserve values, weights that leave go to the reserve with theirs), and the drop
    schedule's fraction of the smallest reserve weights is replaced by random new positions at 0, so that
    B explores (the dense parameters Top-KAST keeps outside B are not stored here).

    :param backward_ratio: ``|B| / |A|`` per layer, > 1.
    :param penalty: the exploration penalty's weight, >= 0.
    :param reserve_lr: step size of the reserve weights' normalised steps, > 0 (SB3 SAC's Adam default).
    """

    #: decay of the running mean square of the reserve's gradients, and the term that keeps its root positive
    beta: ClassVar[float] = 0.999
    eps: ClassVar[float] = 1e-8

    backward_ratio: float = 2.0
    penalty: float = 1e-4
    reserve_lr: float = 3e-4

    wants_after_step = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.backward_ratio, "backward_ratio", 1.0, low_open=True)
        check_number(self.penalty, "penalty", 0.0)
        check_number(self.reserve_lr, "reserve_lr", 0.0, low_open=True)
        self._reserve: list[torch.Tensor] | None = None  # dense values, zero outside R
        self._reserve_mask: list[torch.Tensor] | None = None
        self._grads: list[torch.Tensor] | None = None
        self._square: list[torch.Tensor] | None = None  # running mean square of the reserve's gradients
        self._steps = 0  # reserve steps taken (bias correction)

    def needs_dense_grad(self, step, update_interval):
        return True

    @torch.no_grad()
    def observe(self, step, update_interval, grads, due):
        self._grads = [g.detach().clone() for g in grads]

    def _init_reserve(self, weights, masks, generator) -> None:
        self._reserve, self._reserve_mask = [], []
        for w, m in zip(weights, masks):
            extra = 0 if bool(m.all()) else min(int((self.backward_ratio - 1) * int(m.sum())), int((~m).sum()))
            chosen = grow_top(uniform_scores(w, generator), ~m, extra, generator)
            self._reserve_mask.append(chosen)
            self._reserve.append(torch.zeros_like(w))

    @torch.no_grad()
    def after_step(self, weights, masks, generator):
        if self._reserve is None:
            self._init_reserve(weights, masks, generator)
        assert self._reserve is not None and self._reserve_mask is not None
        if self._grads is not None:
            if self._square is None:
                self._square = [torch.zeros_like(v) for v in self._reserve]
            self._steps += 1
            correction = 1.0 - self.beta**self._steps
            for value, chosen, g, m, square in zip(self._reserve, self._reserve_mask, self._grads, masks, self._square):
                density = max(float(m.float().mean()), 1e-12)
                grad = g.to(value) + (self.penalty / density) * value
                square.mul_(self.beta).addcmul_(grad, grad, value=1.0 - self.beta)
                step = grad / ((square / correction).sqrt_().add_(self.eps))
                value.sub_(self.reserve_lr * step * chosen)
            self._grads = None
        return None

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._reserve is None:
            self._init_reserve(weights, masks, generator)
        assert self._reserve is not None and self._reserve_mask is not None
        results: list[MaskUpdate | None] = []
        for i, (w, m) in enumerate(zip(weights, masks)):
            reserve, chosen = self._reserve[i], self._reserve_mask[i]
            if bool(m.all()) or not bool(chosen.any()):
                results.append(None)
                continue
            combined = torch.where(m, w, reserve)
            backward = m | chosen
            scores = combined.abs().float().masked_fill(~backward, float("-inf"))
            new = grow_top(scores, backward, int(m.sum()), generator)
            entering, leaving = new & ~m, m & ~new
            # the reserve: what left A (with its weights), what stayed, minus its smallest, plus random new ones
            left_in = (backward & ~new)
            values = torch.where(leaving, w, reserve) * left_in
            n_explore = int(fraction * int(left_in.sum()))
            if n_explore:
                smallest = drop_smallest(values.masked_fill(~left_in, float("inf")), left_in, n_explore)
                left_in = left_in & ~smallest
                values = values * left_in
                left_in = left_in | grow_top(uniform_scores(w, generator), ~(new | left_in | smallest), n_explore, generator)
            self._reserve[i], self._reserve_mask[i] = values, left_in
            results.append(MaskUpdate(new, leaving, entering, values=torch.where(entering, reserve, torch.zeros_like(w))))
        return results

    def extra_stats(self, masks):
        if self._reserve_mask is None:
            return {"backward_density": float(sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks))}
        backward = sum(int((m | r).sum()) for m, r in zip(masks, self._reserve_mask))
        return {"backward_density": backward / sum(m.numel() for m in masks)}

    def state_dict(self) -> dict[str, Any]:
        def copy(ts):
            return None if ts is None else [t.clone() for t in ts]

        return {"reserve": copy(self._reserve), "reserve_mask": copy(self._reserve_mask), "grads": copy(self._grads),
                "square": copy(self._square), "steps": self._steps}

    def load_state_dict(self, state, device="cpu"):
        def load(ts):
            return None if ts is None else [t.to(device).clone() for t in ts]

        self._reserve, self._reserve_mask = load(state.get("reserve")), load(state.get("reserve_mask"))
        self._grads = load(state.get("grads"))
        self._square, self._steps = load(state.get("square")), int(state.get("steps", 0))

