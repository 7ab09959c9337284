"""Dynamic sparse training: a constant number of connections per network, some dropped and as many grown.

Static (no change), SET (random growth), RigL (gradient growth), SNFS (momentum growth redistributed
across layers) and DSR (one adaptive magnitude threshold, random regrowth spread by survivors). Scores follow
:class:`~sparse_rl.topology.methods.base.DropGrow`'s convention: the lowest drop score goes first, the
highest grow score comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparse_rl.topology.methods.base import DropGrow, MaskUpdate, Method, register_method
from sparse_rl.topology.methods.selection import apportion, drop_smallest, grow_top, uniform_scores


@register_method("static")
@dataclass
class Static(Method):
    """Static sparse training: the random initial mask never changes."""

    changes_topology = False

    def update(self, weights, masks, fraction, generator, progress=0.0):  # pragma: no cover - never called
        raise RuntimeError("static topology never changes")



GROW_SIGNALS = ("batch", "accumulate", "momentum")


@register_method("rigl")
@dataclass
class RigL(DropGrow):
    """RigL (Evci et al. 2020): drop the smallest magnitudes, grow where the dense gradient is largest.

    Ties in the gradient (e.g. exact zeros under dead ReLUs) are broken at random.

    :param grow_signal: the dense-gradient signal growth reads: ``batch`` (the update step's batch, RigL),
        ``accumulate`` (mean over the last ``grow_batches`` optimizer steps before the update) or
        ``momentum`` (exponential average with factor ``grow_momentum`` over every step, SNFS-style; it
        costs a dense gradient on every step).
    :param grow_batches: batches averaged by ``accumulate``, 1 <= k <= update_interval.
    :param grow_momentum: averaging factor of ``momentum``, in [0, 1).
    """

    uses_gradient = True

    grow_signal: str = "batch"
    grow_batches: int = 1
    grow_momentum: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grow_signal not in GROW_SIGNALS:
            raise ValueError(f"unknown grow_signal {self.grow_signal!r}; known: {', '.join(GROW_SIGNALS)}")
        if isinstance(self.grow_batches, bool) or not isinstance(self.grow_batches, int) or self.grow_batches < 1:
            raise ValueError(f"grow_batches must be an int >= 1, got {self.grow_batches!r}")
        if isinstance(self.grow_momentum, bool) or not isinstance(self.grow_momentum, (int, float)):
            raise ValueError(f"grow_momentum must be a number in [0, 1), got {self.grow_momentum!r}")
        if not 0.0 <= self.grow_momentum < 1.0:
            raise ValueError(f"grow_momentum must be in [0, 1), got {self.grow_momentum!r}")
        #: running signal (sum for ``accumulate``, average for ``momentum``), per layer
        self._signal: list[torch.Tensor] | None = None
        self._pending: list[torch.Tensor] | None = None

    def check_schedule(self, update_interval: int, end_fraction: float) -> None:
        if self.uses_gradient and self.grow_batches > update_interval:
            raise ValueError(f"grow_batches ({self.grow_batches}) cannot exceed update_interval ({update_interval})")

    def needs_dense_grad(self, step: int, update_interval: int) -> bool:
        if not self.uses_gradient:
            return False
        if self.grow_signal == "momentum":
            return True
        until_update = -step % update_interval  # 0 on update steps
        return until_update < (self.grow_batches if self.grow_signal == "accumulate" else 1)

    @torch.no_grad()
    def observe(self, step, update_interval, grads, due):
        if self.grow_signal == "momentum":
            if self._signal is None:
                self._signal = [torch.zeros_like(g) for g in grads]
            torch._foreach_lerp_(self._signal, list(grads), 1.0 - self.grow_momentum)
        elif self.grow_signal == "accumulate":
            until_update = -step % update_interval  # 0 on update steps
            if until_update < self.grow_batches:
                if self._signal is None or until_update == self.grow_batches - 1:
                    self._signal = [torch.zeros_like(g) for g in grads]
                torch._foreach_add_(self._signal, list(grads))
        if due:
            if self.grow_signal == "batch":
                self._pending = [g.detach().clone() for g in grads]
            elif self.grow_signal == "accumulate":
                assert self._signal is not None
                self._pending = [t / self.grow_batches for t in self._signal]
                self._signal = None
            else:
                self._pending = [t.clone() for t in self._signal or []]

    def grow_gradients(self):
        grads, self._pending = self._pending, None
        return grads

    def grow_score(self, weight, grad, generator):
        assert grad is not None  # checked in update_layer()
        return grad.abs()

    def state_dict(self) -> dict[str, Any]:
        return {"grow_signal": None if self._signal is None else [t.clone() for t in self._signal]}

    def load_state_dict(self, state, device="cpu"):
        signal = state.get("grow_signal")
        self._signal = None if signal is None else [t.to(device).clone() for t in signal]


@dataclass
class RegrowthOptions:
    """RigL's options, for a method that regrows through a RigL of its own (GraNet, SNIP/GraSP with
    ``then="rigl"``): composition, with the options spelled as RigL spells them.

    :param grow_signal: see :class:`RigL`.
    :param grow_batches: see :class:`RigL`.
    :param grow_momentum: see :class:`RigL`.
    """

    grow_signal: str = "batch"
    grow_batches: int = 1
    grow_momentum: float = 0.9

    def make_regrowth(self) -> RigL:
        """The RigL that carries the regrowth (its options checked there, with RigL's messages)."""
        return RigL(grow_signal=self.grow_signal, grow_batches=self.grow_batches, grow_momentum=self.grow_momentum)


@register_method("set")
@dataclass
class SET(RigL):
    """Sparse Evolutionary Training (Mocanu et al. 2018): RigL with a random grow score.

    Drops the smallest positive and the largest negative weights (``drop_fraction`` of each sign
    separately; exact zeros count as positive) and grows at uniformly random free positions. The
    gradient options of RigL do not apply.
    """

    uses_gradient = False

    def __post_init__(self) -> None:
        super().__post_init__()
        changed = [f for f in ("grow_signal", "grow_batches", "grow_momentum") if getattr(self, f) != getattr(RigL, f)]
        if changed:
            raise ValueError(f"{', '.join(changed)} do not apply to topology 'set' (it grows at random)")

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in super().options().items() if k not in ("grow_signal", "grow_batches", "grow_momentum")}

    def drop_groups(self, weight, mask):
        return [mask & (weight >= 0), mask & (weight < 0)]

    def grow_score(self, weight, grad, generator):
        return uniform_scores(weight, generator)



@register_method("snfs")
@dataclass
class SNFS(RigL):
    """Sparse Networks From Scratch (Dettmers & Zettlemoyer 2019): momentum growth with redistribution.

    At each update every layer drops the drop schedule's fraction of its active weights by magnitude;
    the total dropped is then regrown across layers in proportion to each layer's mean momentum magnitude
    over its active weights (largest remainders; a layer with no room passes its share on), and within a
    layer where the momentum (exponential average of the dense gradients, factor ``grow_momentum``) is
    largest. Layers' densities drift; the network's number of nonzeros stays exact. Fully dense layers
    take no part.
    """

    grow_signal: str = "momentum"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.grow_signal != "momentum":
            raise ValueError(f"snfs grows by gradient momentum: grow_signal must be 'momentum', got {self.grow_signal!r}")

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in super().options().items() if k not in ("grow_signal", "grow_batches")}

    def shares(self, masks: Sequence[torch.Tensor], momentum: Sequence[torch.Tensor]) -> list[float]:
        """Each layer's mean momentum magnitude over its active weights (its share of the regrowth)."""
        return [float(g.abs()[m].mean()) if bool(m.any()) else 0.0 for g, m in zip(momentum, masks)]

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        momentum = self.grow_gradients()
        if momentum is None:
            raise ValueError("snfs needs the momentum of the dense gradients")
        evolving = [i for i, m in enumerate(masks) if not bool(m.all())]
        dropped = {i: drop_smallest(weights[i], masks[i], int(fraction * int(masks[i].sum()))) for i in evolving}
        kept = {i: masks[i] & ~dropped[i] for i in evolving}
        total = sum(int(d.sum()) for d in dropped.values())
        shares = self.shares([masks[i] for i in evolving], [momentum[i] for i in evolving])
        capacity = [int(kept[i].numel() - kept[i].sum()) for i in evolving]
        counts = dict(zip(evolving, apportion(total, shares, capacity)))
        results: list[MaskUpdate | None] = [None] * len(masks)
        for i in evolving:
            grown = grow_top(momentum[i].abs(), ~kept[i], counts[i], generator)
            results[i] = MaskUpdate(kept[i] | grown, dropped[i], grown)
        return results


@register_method("dsr")
@dataclass
class DSR(Method):
    """Dynamic Sparse Reparameterization (Mostafa & Wang 2019): one adaptive global magnitude threshold.

    At each update every active weight of magnitude below the threshold ``H`` is pruned, in all sparse
    layers at once; ``H`` then adapts to the number pruned ``K`` against the target ``N_p`` (the drop
    schedule's fraction of the network's nonzeros): doubled when ``K < (1 - tolerance) N_p``, halved when
    ``K > (1 + tolerance) N_p``. The ``K`` pruned weights are regrown at random free positions, spread over
    the layers in proportion to their surviving weights. The network's number of nonzeros stays exact.

    :param threshold: the initial ``H`` (> 0).
    :param tolerance: the band around ``N_p`` in which ``H`` is kept, in [0, 1).
    """

    threshold: float = 1e-3
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not self.threshold > 0:
            raise ValueError(f"threshold must be a number > 0, got {self.threshold!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance!r}")
        self._h = float(self.threshold)

    @property
    def current_threshold(self) -> float:
        return self._h

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        evolving = [i for i, m in enumerate(masks) if not bool(m.all())]
        pruned = {i: masks[i] & (weights[i].abs() < self._h) for i in evolving}
        kept = {i: masks[i] & ~pruned[i] for i in evolving}
        k = sum(int(p.sum()) for p in pruned.values())
        target = fraction * sum(int(masks[i].sum()) for i in evolving)
        if k < (1 - self.tolerance) * target:
            self._h *= 2.0
        elif k > (1 + self.tolerance) * target:
            self._h /= 2.0
        survivors = [int(kept[i].sum()) for i in evolving]
        capacity = [int(kept[i].numel()) - s for i, s in zip(evolving, survivors)]
        counts = dict(zip(evolving, apportion(k, survivors, capacity)))
        results: list[MaskUpdate | None] = [None] * len(masks)
        for i in evolving:
            grown = grow_top(uniform_scores(weights[i], generator), ~kept[i], counts[i], generator)
            results[i] = MaskUpdate(kept[i] | grown, pruned[i], grown)
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self._h}

    def load_state_dict(self, state, device="cpu"):
        self._h = float(state.get("threshold", self.threshold))

