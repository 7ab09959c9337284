"""DeepR (Bellec et al. 2018): fixed-sign connections, a prior-and-noise step, rewiring on sign flips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparse_rl.topology.methods.base import MaskUpdate, Method, register_method
from sparse_rl.topology.methods.selection import check_number, grow_top, uniform_scores


@register_method("deepr")
@dataclass
class DeepR(Method):
    """Deep Rewiring (Bellec et al. 2018): connections with fixed signs, noisy updates, rewiring on sign flips.

    Every connection has a sign, fixed for the whole of training (an active one's initial sign; a random one
    for the others). While the method is active, after every optimizer step the active weights take the
    DEEP R prior and noise as an SGD-style Langevin step of their own, ``w <- w - step_size * l1 * s +
    sqrt(2 * step_size * temperature) * N(0, 1)`` (``s``: the fixed sign): **adapted to Adam**, the loss
    gradient itself is the optimizer's (Adam's) step, and the L1 shrinkage and the exploration noise are
    this separate plain step, whose size does not depend on Adam's normalisation. Every
    ``update_interval`` steps an active connection whose weight has crossed zero against its sign becomes
    dormant (dropped), and as many dormant connections, drawn uniformly at random, become active at weight
    0; each layer's count is unchanged.

    :param temperature: ``T`` of the noise, >= 0.
    :param l1: ``alpha`` of the L1 prior, >= 0.
    :param step_size: step size of the prior-and-noise step, > 0.
    """

    temperature: float = 1e-8
    l1: float = 1e-5
    step_size: float = 1e-3

    wants_after_step = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.temperature, "temperature", 0.0)
        check_number(self.l1, "l1", 0.0)
        check_number(self.step_size, "step_size", 0.0, low_open=True)
        self._signs: list[torch.Tensor] | None = None

    def signs(self, weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], generator: torch.Generator) -> list:
        """The fixed signs (+1/-1), chosen at the first call: active weights keep theirs, the rest at random."""
        if self._signs is None:
            signs = []
            for w, m in zip(weights, masks):
                coin = torch.rand(w.shape, generator=generator).to(w.device) < 0.5
                random_sign = torch.where(coin, 1.0, -1.0).to(w.dtype)
                signs.append(torch.where(m & (w != 0), torch.sign(w), random_sign))
            self._signs = signs
        return self._signs

    @torch.no_grad()
    def after_step(self, weights, masks, generator):
        signs = self.signs(weights, masks, generator)
        noise_scale = (2.0 * self.step_size * self.temperature) ** 0.5
        out = []
        for w, m, sign in zip(weights, masks, signs):
            if bool(m.all()):
                out.append(None)
                continue
            noise = torch.randn(w.shape, generator=generator).to(w.device) * noise_scale
            out.append(torch.where(m, w - self.step_size * self.l1 * sign + noise, w))
        return out

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        signs = self.signs(weights, masks, generator)
        results: list[MaskUpdate | None] = []
        for w, m, sign in zip(weights, masks, signs):
            if bool(m.all()):
                results.append(None)
                continue
            dormant = m & (w * sign < 0)
            kept = m & ~dormant
            count = int(dormant.sum())
            grown = grow_top(uniform_scores(w, generator), ~m, count, generator)  # never one just made dormant
            results.append(MaskUpdate(kept | grown, dormant, grown))
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"signs": None if self._signs is None else [t.clone() for t in self._signs]}

    def load_state_dict(self, state, device="cpu"):
        signs = state.get("signs")
        self._signs = None if signs is None else [t.to(device).clone() for t in signs]

