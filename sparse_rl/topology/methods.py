"""Sparse training methods: each one class, registered by name, with its hyperparameters as dataclass
fields (validated once, in the class) and its own state.

A method decides, at each topology update, the new mask of every layer of a network. The shared
machinery (:class:`~sparse_rl.topology.TopologyController`) does the rest for every method: it masks
gradients, zeroes new weights and every optimizer slot at changed positions, re-masks target networks,
counts steps, schedules updates and logs. A new method is one small class::

    @register_method("my_method")
    @dataclass
    class MyMethod(RigL):
        temperature: float = 1.0            # an option: --set topology_kwargs.temperature=0.5

        def grow_score(self, weight, grad, generator):
            return grad.abs() * weight.new_empty(weight.shape).uniform_(generator=generator)

For dynamic sparse training (:class:`DropGrow` and its subclasses) scores follow one convention: the
*lowest* :meth:`~DropGrow.drop_score` among active weights is dropped first, the *highest*
:meth:`~DropGrow.grow_score` among the weights that were not kept is grown first; grown connections may
include some just dropped (as in RigL), kept and grown never overlap, and a layer's number of active
connections never changes. A method may also change a layer's density (pruning): :meth:`Method.update`
returns any new masks.

Options common to every method: ``rewire_dormant`` / ``dormant_tau`` (ReDo-style neuron regrowth at each
update, carried out by the controller).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


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
            grown = _grow_top(self.grow_score(weight, grad, generator), ~kept, n_grow, generator).flatten()
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


def _uniform_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator).to(weight.device)


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
        return _uniform_scores(weight, generator)


@register_method("gmp")
@dataclass
class GMP(Method):
    """Gradual magnitude pruning (Zhu & Gupta 2018) from dense to the configured sparsity.

    Training starts dense; from ``start_fraction`` of training, every ``update_interval`` optimizer steps
    the smallest-magnitude active weights are pruned so that the sparsity follows the cubic schedule
    ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3`` with ``s_i = 0``, ``t_0 =
    start_fraction`` and ``t_1 = end_fraction``; the first update at or after ``end_fraction`` reaches the
    target nonzero counts exactly, and the topology is frozen after it. Nothing regrows.

    :param start_fraction: fraction of training at which pruning starts, in [0, end_fraction).
    :param scope: ``layer``: each layer follows the schedule towards its own target (the ``distribution``'s
        per-layer densities); ``global``: one magnitude threshold over all the network's layers, with only
        the total number of nonzeros scheduled.

    Defaults follow Graesser et al. (2022)'s SAC pruning configuration (rigl/rl/tfagents): pruning from
    20% to 80% of training, every 1000 steps, towards ERK per-layer targets.
    """

    start_fraction: float = 0.2
    scope: str = "layer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.start_fraction, bool) or not isinstance(self.start_fraction, (int, float)):
            raise ValueError(f"start_fraction must be a number in [0, 1), got {self.start_fraction!r}")
        if not 0 <= self.start_fraction < 1:
            raise ValueError(f"start_fraction must be in [0, 1), got {self.start_fraction!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        self._targets: list[int] | None = None
        self._end: float | None = None
        self._done = False

    def check_schedule(self, update_interval, end_fraction):
        if self.start_fraction >= end_fraction:
            raise ValueError(f"gmp: start_fraction ({self.start_fraction}) must be below end_fraction ({end_fraction})")
        self._end = end_fraction

    def start_nonzeros(self, targets, sizes):
        self._targets = list(targets)
        return list(sizes)  # dense

    def active(self, progress, end_fraction):
        return not self._done

    def _remaining(self, progress: float) -> float:
        """``(1 - (t - t_0) / (t_1 - t_0))^3``, clipped to [0, 1]: 1 before pruning, 0 at its end."""
        assert self._end is not None, "check_schedule() sets the end of pruning"
        span = (progress - self.start_fraction) / (self._end - self.start_fraction)
        return (1.0 - min(max(span, 0.0), 1.0)) ** 3

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._targets is None:
            raise RuntimeError(
                "gmp needs its target nonzeros: build the network through SparseSACPolicy/SparseTD3Policy, "
                "or call method.start_nonzeros(targets, sizes) first"
            )
        if progress < self.start_fraction:
            return [None] * len(masks)
        remaining = self._remaining(progress)
        sizes = [m.numel() for m in masks]
        if self.scope == "layer":
            keep = _scheduled_counts(self._targets, sizes, remaining)
            new_masks = [_keep_largest(w, m, k) for w, m, k in zip(weights, masks, keep)]
        else:
            total_target, total = sum(self._targets), sum(sizes)
            k = total_target + round((total - total_target) * remaining)
            new_masks = _keep_largest_global(weights, masks, k)
        self._done = remaining == 0.0
        results: list[MaskUpdate | None] = []
        for mask, new in zip(masks, new_masks):
            dropped = mask & ~new
            results.append(MaskUpdate(new, dropped, torch.zeros_like(mask)) if bool(dropped.any()) else None)
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"done": self._done}

    def load_state_dict(self, state, device="cpu"):
        self._done = bool(state.get("done", False))


@register_method("granet")
@dataclass
class GraNet(RigL):
    """GraNet (Liu et al. 2021): gradual magnitude pruning with neuroregeneration.

    At each update, first prune along GMP's cubic schedule (per layer, from the starting density to the
    target, between ``start_fraction`` and ``end_fraction``), then, on the pruned masks, drop the
    drop schedule's fraction of the smallest weights and regrow as many where the dense gradient is
    largest (RigL, with RigL's ``grow_signal`` options). Before ``start_fraction`` only the regeneration
    runs (on layers that are not dense). The first update at or after ``end_fraction`` reaches the
    targets exactly and freezes the topology.

    :param start_fraction: fraction of training at which pruning starts, in [0, end_fraction).
    :param initial_sparsity: where each layer starts between dense (0) and its target (the configured
        sparsity): its starting nonzeros are ``target + round((size - target) * (1 - initial_sparsity /
        sparsity))``, a random mask; 0 starts dense.
    """

    start_fraction: float = 0.2
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._gmp = GMP(start_fraction=self.start_fraction)  # the pruning half, and its checks
        if isinstance(self.initial_sparsity, bool) or not isinstance(self.initial_sparsity, (int, float)):
            raise ValueError(f"initial_sparsity must be a number in [0, 1), got {self.initial_sparsity!r}")
        if not 0 <= self.initial_sparsity < 1:
            raise ValueError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity!r}")

    def check_schedule(self, update_interval, end_fraction):
        super().check_schedule(update_interval, end_fraction)
        self._gmp.check_schedule(update_interval, end_fraction)

    def start_nonzeros(self, targets, sizes):
        final_sparsity = [1 - t / n for t, n in zip(targets, sizes)]
        start = [
            t if s_f == 0 else t + round((n - t) * (1 - min(self.initial_sparsity / s_f, 1.0)))
            for t, n, s_f in zip(targets, sizes, final_sparsity)
        ]
        self._gmp._targets = list(targets)
        self._start = start
        return start

    def active(self, progress, end_fraction):
        return self._gmp.active(progress, end_fraction)

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        gmp = self._gmp
        if gmp._targets is None:
            raise RuntimeError("granet needs its target nonzeros: build the network through the sparse policies")
        pruned = list(masks)
        if progress >= gmp.start_fraction:
            remaining = gmp._remaining(progress)
            keep = _scheduled_counts(gmp._targets, self._start, remaining)
            pruned = [_keep_largest(w, m, k) for w, m, k in zip(weights, masks, keep)]
            gmp._done = remaining == 0.0
        grads = self.grow_gradients()
        if grads is None:
            raise ValueError("method 'granet' needs the dense gradient of the weights")
        results: list[MaskUpdate | None] = []
        for w, old, new, grad in zip(weights, masks, pruned, grads):
            lost = old & ~new
            regrow = None if bool(new.all()) or fraction <= 0 else self.update_layer(w * new, new, fraction, grad, generator)
            if regrow is None and not bool(lost.any()):
                results.append(None)
                continue
            mask = new if regrow is None else regrow.mask
            dropped = lost if regrow is None else lost | regrow.dropped
            grown = torch.zeros_like(old) if regrow is None else regrow.grown
            results.append(MaskUpdate(mask, dropped, grown))
        return results

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "done": self._gmp._done}

    def load_state_dict(self, state, device="cpu"):
        super().load_state_dict(state, device)
        self._gmp._done = bool(state.get("done", False))


@register_method("snip")
@dataclass
class SNIP(RigL):
    """SNIP (Lee et al. 2019): one-shot pruning by connection sensitivity ``|g ⊙ w|``, adapted to RL.

    A supervised network is pruned at initialisation from a batch of data; an RL agent has no data
    before it acts, so here the network starts dense, collects ``learning_starts`` random steps as SB3
    does, and the sensitivity is computed from the dense gradients of its first ``score_batches``
    optimizer steps (SB3's own losses on replay batches: the critic's TD loss for the critic, the policy
    loss for the actor), summed, times the weights after those steps. Right after step
    ``score_batches`` each layer keeps its target number of most sensitive connections (``scope=layer``,
    the ``distribution``'s targets) or the network keeps its total (``scope=global``, SNIP's original).
    Then the topology is static, or with ``then="rigl"`` evolves by RigL (RigL's options apply) every
    ``update_interval`` steps until ``end_fraction``.
    """

    score_batches: int = 1
    scope: str = "layer"
    then: str = "static"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.score_batches, bool) or not isinstance(self.score_batches, int) or self.score_batches < 1:
            raise ValueError(f"score_batches must be an int >= 1, got {self.score_batches!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        if self.then not in ("static", "rigl"):
            raise ValueError(f"then must be 'static' or 'rigl', got {self.then!r}")
        self._targets: list[int] | None = None
        self._scores: list[torch.Tensor] | None = None
        self._pruned = False

    def start_nonzeros(self, targets, sizes):
        self._targets = list(targets)
        return list(sizes)  # dense until the sensitivities are known

    def is_update_step(self, step, update_interval, progress, end_fraction):
        if not self._pruned:
            return step == self.score_batches
        return self.then == "rigl" and super().is_update_step(step, update_interval, progress, end_fraction)

    def needs_dense_grad(self, step, update_interval):
        if not self._pruned:
            return step <= self.score_batches
        return self.then == "rigl" and super().needs_dense_grad(step, update_interval)

    @torch.no_grad()
    def observe(self, step, update_interval, grads, due):
        if self._pruned:
            super().observe(step, update_interval, grads, due)
        elif self._scores is None:
            self._scores = [g.detach().clone() for g in grads]
        else:
            torch._foreach_add_(self._scores, list(grads))

    @torch.no_grad()
    def update(self, weights, masks, fraction, generator, progress=0.0):
        if self._pruned:
            return super().update(weights, masks, fraction, generator, progress)
        if self._targets is None or self._scores is None:
            raise RuntimeError("snip needs its target nonzeros and the gradients of its first steps")
        sensitivity = [(g * w).abs() for g, w in zip(self._scores, weights)]
        if self.scope == "layer":
            new_masks = [_keep_largest(s, m, k) for s, m, k in zip(sensitivity, masks, self._targets)]
        else:
            new_masks = _keep_largest_global(sensitivity, masks, sum(self._targets))
        self._scores, self._pruned = None, True
        return [MaskUpdate(new, m & ~new, torch.zeros_like(m)) for m, new in zip(masks, new_masks)]

    def state_dict(self) -> dict[str, Any]:
        scores = None if self._scores is None else [t.clone() for t in self._scores]
        return {**super().state_dict(), "pruned": self._pruned, "scores": scores}

    def load_state_dict(self, state, device="cpu"):
        super().load_state_dict(state, device)
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
            new_masks = [_keep_top(s, m, k) for s, m, k in zip(lowest, masks, self._targets)]
        else:
            new_masks = _keep_top_global(lowest, masks, sum(self._targets))
        self._pruned = True
        return [MaskUpdate(new, m & ~new, torch.zeros_like(m)) for m, new in zip(masks, new_masks)]


def _apportion(total: int, shares: Sequence[float], capacity: Sequence[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` (largest remainders), none above its
    ``capacity``; what a full layer cannot take goes to the others by their shares."""
    counts = [0] * len(shares)
    left = min(total, sum(capacity))
    open_ = [i for i, c in enumerate(capacity) if c > 0]
    while left > 0 and open_:
        weight = [max(float(shares[i]), 0.0) for i in open_]
        if sum(weight) <= 0:
            weight = [1.0] * len(open_)
        exact = [left * w / sum(weight) for w in weight]
        give = [int(e) for e in exact]
        for j in sorted(range(len(open_)), key=lambda j: exact[j] - give[j], reverse=True)[: left - sum(give)]:
            give[j] += 1
        for j, i in enumerate(open_):
            take = min(give[j], capacity[i] - counts[i])
            counts[i] += take
            left -= take
        open_ = [i for i in open_ if counts[i] < capacity[i]]
    return counts


def _drop_smallest(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of smallest magnitude (boolean, the shape of ``mask``)."""
    dropped = torch.zeros_like(mask.flatten())
    if k > 0:
        scores = weight.abs().flatten().float().masked_fill(~mask.flatten(), float("inf"))
        dropped[torch.topk(scores, k, largest=False).indices] = True
    return dropped.view(mask.shape)


def _grow_top(scores: torch.Tensor, free: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` positions among ``free`` of highest score, ties broken at random."""
    grown = torch.zeros_like(free.flatten())
    if k > 0:
        flat = scores.flatten().float().masked_fill(~free.flatten(), float("-inf"))
        perm = torch.randperm(flat.numel(), generator=generator).to(flat.device)
        grown[perm[torch.topk(flat[perm], k).indices]] = True
    return grown.view(free.shape)


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
        dropped = {i: _drop_smallest(weights[i], masks[i], int(fraction * int(masks[i].sum()))) for i in evolving}
        kept = {i: masks[i] & ~dropped[i] for i in evolving}
        total = sum(int(d.sum()) for d in dropped.values())
        shares = self.shares([masks[i] for i in evolving], [momentum[i] for i in evolving])
        capacity = [int(kept[i].numel() - kept[i].sum()) for i in evolving]
        counts = dict(zip(evolving, _apportion(total, shares, capacity)))
        results: list[MaskUpdate | None] = [None] * len(masks)
        for i in evolving:
            grown = _grow_top(momentum[i].abs(), ~kept[i], counts[i], generator)
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
        counts = dict(zip(evolving, _apportion(k, survivors, capacity)))
        results: list[MaskUpdate | None] = [None] * len(masks)
        for i in evolving:
            grown = _grow_top(_uniform_scores(weights[i], generator), ~kept[i], counts[i], generator)
            results[i] = MaskUpdate(kept[i] | grown, pruned[i], grown)
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self._h}

    def load_state_dict(self, state, device="cpu"):
        self._h = float(state.get("threshold", self.threshold))


def _number(value: Any, name: str, low: float, high: float = float("inf"), low_open: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}{f' and <= {high}' if high != float('inf') else ''}, got {value!r}")


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
        _number(self.temperature, "temperature", 0.0)
        _number(self.l1, "l1", 0.0)
        _number(self.step_size, "step_size", 0.0, low_open=True)
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
            grown = _grow_top(_uniform_scores(w, generator), ~m, count, generator)  # never one just made dormant
            results.append(MaskUpdate(kept | grown, dormant, grown))
        return results

    def state_dict(self) -> dict[str, Any]:
        return {"signs": None if self._signs is None else [t.clone() for t in self._signs]}

    def load_state_dict(self, state, device="cpu"):
        signs = state.get("signs")
        self._signs = None if signs is None else [t.to(device).clone() for t in signs]


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
        _number(self.backward_ratio, "backward_ratio", 1.0, low_open=True)
        _number(self.penalty, "penalty", 0.0)
        _number(self.reserve_lr, "reserve_lr", 0.0, low_open=True)
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
            chosen = _grow_top(_uniform_scores(w, generator), ~m, extra, generator)
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
            new = _grow_top(scores, backward, int(m.sum()), generator)
            entering, leaving = new & ~m, m & ~new
            # the reserve: what left A (with its weights), what stayed, minus its smallest, plus random new ones
            left_in = (backward & ~new)
            values = torch.where(leaving, w, reserve) * left_in
            n_explore = int(fraction * int(left_in.sum()))
            if n_explore:
                smallest = _drop_smallest(values.masked_fill(~left_in, float("inf")), left_in, n_explore)
                left_in = left_in & ~smallest
                values = values * left_in
                left_in = left_in | _grow_top(_uniform_scores(w, generator), ~(new | left_in | smallest), n_explore, generator)
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


def _scheduled_counts(targets: Sequence[int], starts: Sequence[int], remaining: float) -> list[int]:
    """Nonzeros on the pruning schedule: ``starts`` when ``remaining`` is 1, ``targets`` when it is 0."""
    return [t + round((n - t) * remaining) for t, n in zip(targets, starts)]


def _keep_largest(weight: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of largest magnitude (all of them if fewer are active)."""
    return _keep_top(weight.abs(), mask, k)


def _keep_top(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` active positions of highest score (all of them if fewer are active)."""
    if k >= int(mask.sum()):
        return mask.clone()
    flat = scores.flatten().float().masked_fill(~mask.flatten(), float("-inf"))
    new = torch.zeros_like(mask.flatten())
    new[torch.topk(flat, k).indices] = True
    return new.view(mask.shape)


def _keep_largest_global(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The ``k`` active positions of largest magnitude over all layers together."""
    return _keep_top_global([w.abs() for w in weights], masks, k)


def _keep_top_global(scores: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """The ``k`` active positions of highest score over all layers together."""
    flat = torch.cat([s.flatten().float().masked_fill(~m.flatten(), float("-inf")) for s, m in zip(scores, masks)])
    if k >= int(sum(int(m.sum()) for m in masks)):
        return [m.clone() for m in masks]
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, k).indices] = True
    out, offset = [], 0
    for m in masks:
        out.append(keep[offset : offset + m.numel()].view(m.shape))
        offset += m.numel()
    return out


#: options that were flat config keys before methods were objects, with their old defaults
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


__all__ = [
    "DSR",
    "GMP",
    "GROW_SIGNALS",
    "LEGACY_OPTIONS",
    "SET",
    "SNFS",
    "SNIP",
    "DeepR",
    "DropGrow",
    "GraNet",
    "GraSP",
    "MaskUpdate",
    "Method",
    "RigL",
    "Static",
    "TopKAST",
    "available_methods",
    "make_method",
    "method_options",
    "migrate_legacy_options",
    "register_method",
]
