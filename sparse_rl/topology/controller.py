"""The topology controller: drives mask updates of one network from its optimizer's step hooks.

Per optimizer step (``optimizer.step()`` of the network, so actor and critic count separately):

1. *pre-step hook*: count the step; hand the dense gradients to the method on the steps it reads them
   (RigL's growth signal); mask the gradients, so the optimizer's moments never accumulate at absent
   connections;
2. the optimizer steps;
3. *post-step hook*: on an update step let the method (:mod:`sparse_rl.topology.methods`) choose the new
   masks (drop and grow, or prune); zero the weights **and every optimizer
   slot shaped like the weight** (Adam's ``exp_avg``/``exp_avg_sq``, SGD's momentum) at dropped and grown
   positions; copy the new mask into the target networks and zero them there too (so under Polyak
   averaging a target is never denser than its online network); finally re-zero absent weights.

Every change goes through the layers' own interface (``change_mask``, ``set_weights``, ``dense_grad``),
so the same controller drives layers with dense storage (:class:`~sparse_rl.sparse.MaskedLinear`: the
masking in steps 1 and 3 applies) and with sparse storage (:class:`~sparse_rl.sparse.SparseLinear`:
nothing to mask; values and optimizer slots are re-laid out for the new structure). Before each backward
pass the controller tells sparse layers whether growth will read this step's dense gradient
(:meth:`TopologyController.needs_dense_grad`), so they compute it only then.

The controller's counters, its random-generator state and its method's state are *training state*, like
Adam's moments: they travel in the ``state_dict`` of the optimizer the controller is attached to (under
:data:`STATE_KEY`, one entry per controller name), so SB3's ``save``/``load``, ``get_parameters`` and
checkpoints keep them, while the policy's own ``state_dict`` holds tensors only (weights and masks). Models
saved before kept them as the controller module's extra state in the policy's ``state_dict``; those still load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from sparse_rl.sparse.layers import MaskedLinear
from sparse_rl.topology.methods import Method, make_method
from sparse_rl.topology.schedules import get_schedule

#: the key of the controllers' training state in an optimizer's ``state_dict``
STATE_KEY = "sparse_rl_topology"
#: where models saved before this layout kept it: the controller module's extra state
_LEGACY_EXTRA_STATE = "_extra_state"


@dataclass
class TopologyConfig:
    """Which method changes a network's topology, and when and how much (the schedule).

    :param topology: method name (``static``, ``set``, ``rigl`` or any registered one).
    :param topology_kwargs: the method's options, e.g. ``{"grow_signal": "momentum"}`` for ``rigl`` (see
        :mod:`sparse_rl.topology.methods`); from the CLI ``--set topology_kwargs.grow_signal=momentum``.
    :param update_interval: optimizer steps of this network between updates, > 0.
    :param drop_fraction: fraction of each layer's active weights dropped at an update, in (0, 1].
    :param drop_schedule: decay of the drop fraction over training (``constant``, ``cosine``).
    :param end_fraction: fraction of training after which the topology is frozen, in (0, 1].
    """

    topology: str = "rigl"
    topology_kwargs: dict[str, Any] = field(default_factory=dict)
    update_interval: int = 1000
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    end_fraction: float = 0.8

    def __post_init__(self) -> None:
        if not isinstance(self.topology_kwargs, dict):
            raise TypeError(f"topology_kwargs must be a mapping of option names to values, got {self.topology_kwargs!r}")
        # before anything compared with it (the method's options), so a bad interval is named as such
        if isinstance(self.update_interval, bool) or not isinstance(self.update_interval, int):
            raise TypeError(f"update_interval must be a positive int, got {self.update_interval!r}")
        if self.update_interval <= 0:
            raise ValueError(f"update_interval must be a positive int, got {self.update_interval!r}")
        self.make_method()
        get_schedule(self.drop_schedule)
        for name in ("drop_fraction", "end_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")

    def make_method(self) -> Method:
        """A new instance of the configured method (options checked, also against ``update_interval``)."""
        method = make_method(self.topology, **self.topology_kwargs)
        method.check_schedule(self.update_interval, self.end_fraction)
        return method

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_flops(layer: nn.Linear, nnz: int | None = None) -> int:
    """FLOPs of one forward pass of a linear layer on one sample: a multiply and an add per connection,
    plus the bias additions. With ``nnz=None``, the dense layer's count."""
    n = layer.in_features * layer.out_features if nnz is None else nnz
    return 2 * n + (layer.out_features if layer.bias is not None else 0)


def _numel(layer: nn.Linear) -> int:
    return layer.in_features * layer.out_features


def _nnz(layer: nn.Linear) -> int:
    return layer.nnz if isinstance(layer, MaskedLinear) else _numel(layer)


def _explored(layer: nn.Linear) -> int:
    return int(layer.explored.sum()) if isinstance(layer, MaskedLinear) else _numel(layer)


def network_stats(layers: Sequence[nn.Linear], per_layer: bool = False) -> dict[str, Any]:
    """Density, ITOP rate and FLOPs of a network made of ``layers`` (plain ``nn.Linear`` counts as dense)."""
    nnz = [_nnz(layer) for layer in layers]
    total = sum(_numel(layer) for layer in layers)
    explored = sum(_explored(layer) for layer in layers)
    stats: dict[str, Any] = {
        "density": sum(nnz) / total if total else 1.0,
        "nonzeros": sum(nnz),
        "weights": total,
        "itop_rate": explored / total if total else 1.0,
        "flops": sum(layer_flops(layer, n) for layer, n in zip(layers, nnz)),
        "dense_flops": sum(layer_flops(layer) for layer in layers),
    }
    if per_layer:
        stats["layers"] = [
            {
                "shape": [layer.out_features, layer.in_features],
                "nonzeros": n,
                "density": n / _numel(layer),
                "itop_rate": _explored(layer) / _numel(layer),
                "storage": getattr(layer, "storage", "dense"),
                "flops": layer_flops(layer, n),
                "dense_flops": layer_flops(layer),
            }
            for layer, n in zip(layers, nnz)
        ]
    return stats


class TopologyController(nn.Module):
    """Evolves the masks of ``layers`` from the step hooks of the optimizer that trains them.

    :param layers: the network's masked layers (they are *not* registered as submodules here).
    :param config: method and schedule.
    :param seed: seed of the controller's own generator (used by random growth and tie-breaks).
    :param targets: target copies of the network, each a list of layers aligned with ``layers``.
    :param progress_fn: returns the fraction of training done, in [0, 1]; may be set later.
    :param method: the method instance (default: a new one from ``config``); pass the one whose
        :meth:`~sparse_rl.topology.Method.start_nonzeros` chose the layers' starting masks.
    :param name: the controller's entry in its optimizer's ``state_dict`` (controllers sharing one optimizer,
        as PPO's policy and value networks do, need different names).
    """

    def __init__(
        self,
        layers: Sequence[MaskedLinear],
        config: TopologyConfig,
        seed: int,
        targets: Sequence[Sequence[MaskedLinear]] = (),
        progress_fn: Callable[[], float] | None = None,
        method: Method | None = None,
        name: str = "network",
    ) -> None:
        super().__init__()
        #: this controller's entry in its optimizer's ``state_dict`` (unique among the controllers sharing one)
        self.name = name
        self.config = config
        self.method: Method = method if method is not None else config.make_method()
        self.method.check_schedule(config.update_interval, config.end_fraction)
        self._schedule = get_schedule(config.drop_schedule)
        # Plain lists: the layers belong to the network, registering them here would duplicate state.
        self._layers: list[MaskedLinear] = list(layers)
        self._targets: list[list[MaskedLinear]] = [list(t) for t in targets]
        for target in self._targets:
            if len(target) != len(self._layers):
                raise ValueError("each target network must have as many masked layers as the online one")
        self.progress_fn = progress_fn
        #: called with this controller after every topology update (for logging)
        self.listeners: list[Callable[[TopologyController], None]] = []
        #: for ``rewire_dormant``: returns ``{layer index: (dormant rows bool (out,), consumer layer indices)}``
        self.dormant_fn: Callable[[], dict[int, tuple[torch.Tensor, list[int]]]] | None = None
        self.last_rewired = 0
        #: set when a loaded state_dict may have given targets other masks: aligned at the next step
        self.targets_stale = False
        self.step = 0
        self.n_updates = 0
        self.last_dropped = 0
        self.last_grown = 0
        self.last_fraction = 0.0
        generator = torch.Generator()
        generator.manual_seed(seed)
        self._rng_state = generator.get_state()
        self._due = False
        self._handles: list[Any] = []
        self._dense_storage = [l for l in self._layers if l.storage == "dense"]
        #: the masks training started from, for the topology distance travelled (NNSTD)
        self.initial_masks: list[torch.Tensor] = [l.mask.detach().clone() for l in self._layers]
        self._arm_dense_grads()

    # ----------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        """Counters, random-generator state, method state and initial masks (saved with the optimizer)."""
        return {
            "step": self.step,
            "n_updates": self.n_updates,
            "last_dropped": self.last_dropped,
            "last_grown": self.last_grown,
            "last_fraction": self.last_fraction,
            "last_rewired": self.last_rewired,
            "rng_state": self._rng_state.clone(),
            "method": self.method.state_dict(),
            "initial_masks": [m.clone() for m in self.initial_masks],
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` returned (also the extra state of models saved before)."""
        self.step = int(state["step"])
        self.n_updates = int(state["n_updates"])
        self.last_dropped = int(state["last_dropped"])
        self.last_grown = int(state["last_grown"])
        self.last_fraction = float(state["last_fraction"])
        self.last_rewired = int(state.get("last_rewired", 0))
        self._rng_state = state["rng_state"].detach().to("cpu", torch.uint8).clone()
        device = self._layers[0].mask.device if self._layers else "cpu"
        # saved before methods were objects, the gradient signal sat at the top level
        method_state = state.get("method", {"grow_signal": state.get("grow_signal")})
        self.method.load_state_dict(method_state, device)
        if "initial_masks" in state:  # saved before it was kept: the distance starts from the loaded masks
            self.initial_masks = [m.to(device, torch.bool).clone() for m in state["initial_masks"]]
        self._arm_dense_grads()

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
        legacy = state_dict.pop(prefix + _LEGACY_EXTRA_STATE, None)
        if isinstance(legacy, dict):  # a model saved when this state sat in the policy's state_dict
            self.load_training_state(legacy)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def _save_to_optimizer(self, optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
        entries = dict(state_dict.get(STATE_KEY, {}))
        entries[self.name] = self.training_state()
        return {**state_dict, STATE_KEY: entries}

    def _load_from_optimizer(self, optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
        entries = state_dict.get(STATE_KEY)
        if isinstance(entries, dict) and self.name in entries:
            self.load_training_state(entries[self.name])
        return state_dict  # the entry stays for the other controllers of this optimizer; torch ignores it

    @property
    def layers(self) -> list[MaskedLinear]:
        return list(self._layers)

    @torch.no_grad()
    def align_targets(self) -> int:
        """Give every target layer its online layer's mask where they differ (a ``state_dict`` loaded with
        other target masks); connections new to a target start at zero there. Returns how many layers changed."""
        changed_layers = 0
        for target in self._targets:
            for layer, copy in zip(self._layers, target):
                if not torch.equal(layer.mask, copy.mask):
                    copy.change_mask(layer.mask, copy.mask != layer.mask)
                    changed_layers += 1
        return changed_layers

    def set_layers(self, layers: Sequence[MaskedLinear], targets: Sequence[Sequence[MaskedLinear]] = ()) -> None:
        """Drive ``layers`` (and ``targets``) in place of the current ones: the same connections after a
        change of storage (:func:`~sparse_rl.sparse.use_sparse_storage_for`)."""
        if len(layers) != len(self._layers) or len(targets) != len(self._targets):
            raise ValueError("set_layers takes as many layers and targets as the controller has")
        self._layers = list(layers)
        self._targets = [list(t) for t in targets]
        self._dense_storage = [l for l in self._layers if l.storage == "dense"]
        self._arm_dense_grads()

    # ----------------------------------------------------------------- hooks
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Drive this controller from ``optimizer``'s steps (call once per optimizer), and keep its training
        state in the optimizer's ``state_dict``."""
        self._handles.append(optimizer.register_step_pre_hook(self._pre_step))
        self._handles.append(optimizer.register_step_post_hook(self._post_step))
        self._handles.append(optimizer.register_state_dict_post_hook(self._save_to_optimizer))
        self._handles.append(optimizer.register_load_state_dict_pre_hook(self._load_from_optimizer))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def progress(self) -> float:
        if self.progress_fn is None:
            raise RuntimeError(
                "the topology controller does not know the training progress: train through an SB3 "
                "algorithm, call policy.bind(model), or set controller.progress_fn"
            )
        return float(self.progress_fn())

    def is_update_step(self, step: int) -> bool:
        if not self.method.changes_topology:
            return False
        return self.method.is_update_step(step, self.config.update_interval, self.progress, self.config.end_fraction)

    def needs_dense_grad(self, step: int) -> bool:
        """Whether the method reads the dense weight gradients of optimizer step ``step`` (RigL: on update
        steps, or the ``grow_batches`` steps up to one, or every step with ``momentum``). Layers with sparse
        storage compute that gradient (one dense ``gᵀx``) only on these steps."""
        return self.method.changes_topology and self.method.needs_dense_grad(step, self.config.update_interval)

    def _arm_dense_grads(self) -> None:
        """Tell sparse-storage layers whether the next backward pass must keep the dense gradient."""
        want = self.needs_dense_grad(self.step + 1)
        for layer in self._layers:
            if layer.capture_dense_grad != want:  # nn.Module.__setattr__ is slow: set on change only
                layer.capture_dense_grad = want

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.progress_fn is None or self.step == 0:
            self.progress()  # fail at the first step, not at the first update, when progress is unknown
        if self.targets_stale:
            self.align_targets()
            self.targets_stale = False
        self.step += 1
        self._due = self.is_update_step(self.step)
        if self.needs_dense_grad(self.step):
            grads = [l.dense_grad() for l in self._layers]  # before the gradients are masked
            if all(g is not None for g in grads):
                self.method.observe(self.step, self.config.update_interval, grads, self._due)  # type: ignore[arg-type]
        for layer in self._layers:
            layer.clear_dense_grad()
        with torch.no_grad():  # sparse storage has no gradient at absent connections to mask
            pairs = [(l.weight.grad, l.mask) for l in self._dense_storage if l.weight.grad is not None]
            if pairs:
                grads, masks = zip(*pairs)
                torch._foreach_mul_(list(grads), list(masks))

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.method.wants_after_step and self.method.active(self.progress(), self.config.end_fraction):
            self._after_step()
        if self._due:
            self._due = False
            self.update_topology(optimizer)
        if self._dense_storage:
            with torch.no_grad():
                torch._foreach_mul_([l.weight for l in self._dense_storage], [l.mask for l in self._dense_storage])
        self._arm_dense_grads()

    @torch.no_grad()
    def _after_step(self) -> None:
        generator = torch.Generator()
        generator.set_state(self._rng_state)
        layers = self._layers
        new = self.method.after_step([l.weight for l in layers], [l.mask for l in layers], generator)
        self._rng_state = generator.get_state()
        for layer, weight in zip(layers, new or []):
            if weight is not None:
                layer.set_weights(layer.mask, weight)

    # ---------------------------------------------------------------- update
    @torch.no_grad()
    def update_topology(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Let the method change the masks of every evolving layer now.

        :param optimizer: its per-parameter state is zeroed at changed positions.
        """
        progress = self.progress()
        fraction = self._schedule(progress, self.config.drop_fraction, self.config.end_fraction)
        generator = torch.Generator()
        generator.set_state(self._rng_state)
        layers = self._layers
        weights, masks = [l.weight for l in layers], [l.mask for l in layers]
        results = self.method.update(weights, masks, fraction, generator, progress=progress)
        dropped = grown = 0
        for i, (layer, result) in enumerate(zip(layers, results)):
            if result is None:
                continue
            changed = result.changed
            layer.change_mask(result.mask, changed, optimizer)
            if result.values is not None:  # grown connections that start from the method's values
                layer.set_weights(result.grown, result.values)
            for target in self._targets:
                target[i].change_mask(result.mask, changed)
            dropped += int(result.dropped.sum())
            grown += int(result.grown.sum())
        if self.method.rewire_dormant and self.dormant_fn is not None:
            self.last_rewired = self._rewire(self.dormant_fn(), optimizer, generator)
        self._rng_state = generator.get_state()
        self.n_updates += 1
        self.last_dropped, self.last_grown, self.last_fraction = dropped, grown, fraction
        for listener in self.listeners:
            listener(self)

    def _rewire(
        self,
        dormant: dict[int, tuple[torch.Tensor, list[int]]],
        optimizer: torch.optim.Optimizer | None,
        generator: torch.Generator,
    ) -> int:
        """Neuron-level regrowth of the dormant rows; returns how many neurons were rewired."""
        rewired = 0
        for i, (rows, consumers) in dormant.items():
            layer = self._layers[i]
            rows_idx = rows.nonzero().flatten().tolist()
            if not rows_idx or layer.nnz == layer.mask.numel():
                continue
            bound = 1.0 / layer.in_features**0.5
            changed = torch.zeros_like(layer.mask)
            mask = layer.mask.clone()
            weight = torch.zeros(layer.dense_shape, dtype=layer.trained_weight.dtype, device=mask.device)
            for r in rows_idx:
                k = int(mask[r].sum())
                new_row = torch.zeros(layer.in_features, dtype=torch.bool)
                new_row[torch.randperm(layer.in_features, generator=generator)[:k]] = True
                init = (torch.rand(layer.in_features, generator=generator) * 2 - 1) * bound
                mask[r] = new_row.to(mask.device)
                weight[r] = (init * new_row).to(weight)
                changed[r] = True
            for net, opt in [(layer, optimizer)] + [(target[i], None) for target in self._targets]:
                net.change_mask(mask, changed, opt)
                net.set_weights(changed, weight)
            for j in consumers:  # outgoing weights restart at zero (ReDo)
                consumer = self._layers[j]
                cols = torch.zeros_like(consumer.mask)
                cols[:, rows_idx] = True
                for net, opt in [(consumer, optimizer)] + [(target[j], None) for target in self._targets]:
                    net.change_mask(consumer.mask, cols, opt)
            rewired += len(rows_idx)
        return rewired

    def distance_from_initial(self, inputs: Sequence[int | None]) -> dict[str, Any]:
        """NNSTD between the current topology and the initial one (:func:`sparse_rl.topology.nnstd.nnstd`);
        ``inputs`` describes the wiring (per layer, the layer it reads, ``None`` for the network input)."""
        from sparse_rl.topology.nnstd import nnstd

        flat = [m.reshape(m.shape[0], -1) for m in self.initial_masks]  # a conv's rows: its output channels
        now = [l.mask.reshape(l.mask.shape[0], -1) for l in self._layers]
        # a layer reading a conv's flattened output (channels x positions) matches its inputs as raw inputs
        wiring = [src if src is None or flat[src].shape[0] == flat[k].shape[1] else None for k, src in enumerate(inputs)]
        return nnstd(flat, now, wiring)

    def stats(self, per_layer: bool = False) -> dict[str, Any]:
        """Density, ITOP rate, FLOPs and the last update's counts."""
        stats = network_stats(self._layers, per_layer=per_layer)
        stats.update(
            optimizer_steps=self.step,
            topology_updates=self.n_updates,
            last_dropped=self.last_dropped,
            last_grown=self.last_grown,
            last_drop_fraction=self.last_fraction,
            last_rewired=self.last_rewired,
        )
        stats.update(self.method.extra_stats([l.mask for l in self._layers]))
        return stats


def sparse_seed(generator: torch.Generator | None = None) -> int:
    """A seed drawn from torch's (seeded) global generator, for reproducible masks under SB3's seeding."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


__all__ = ["TopologyConfig", "TopologyController", "layer_flops", "network_stats", "sparse_seed"]
