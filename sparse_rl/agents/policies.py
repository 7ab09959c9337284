"""Drop-in sparse SB3 policies for SAC and TD3.

``SAC(SparseSACPolicy, env, policy_kwargs=dict(sparsity=0.9, topology="rigl"))`` is all it takes: the
policy replaces the linear layers of its actor, critic and target networks by
:class:`~sparse_rl.sparse.MaskedLinear`, and attaches a :class:`~sparse_rl.topology.TopologyController`
to the optimizers SB3 builds, so stock ``SAC.train``/``TD3.train`` drive topology evolution through
``optimizer.step()``. No algorithm subclass is needed.

Two things the policy needs from the algorithm are found on the first topology update: the training
progress (``1 - model._current_progress_remaining``, the same quantity SB3's learning-rate schedules
use, so ``end_fraction`` and the drop schedule follow ``total_timesteps`` also after a load and
``learn(..., reset_num_timesteps=False)``), and the logger. The policy finds the algorithm that is
training it on the call stack of ``optimizer.step()`` (the ``self`` of ``SAC.train``/``TD3.train``
whose ``policy`` is this policy); :meth:`SparsePolicyMixin.bind` makes the link explicit for custom
loops.
"""

from __future__ import annotations

import difflib
import inspect
import weakref
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from sparse_rl.agents.owner import find_owner
from sparse_rl.agents.tickets import load_into, read_ticket
from sparse_rl.sparse import (
    MaskedLinear,
    check_backend,
    check_distribution,
    masked_layers,
    replace_linears,
    sparsify,
    use_sparse_storage,
    use_sparse_storage_for,
)
from sparse_rl.sparse.layers import MaskedConv2d, follow_loaded_mask
from sparse_rl.sparse.networks import masked_class
from sparse_rl.sparse.structure import parse_structure
from sparse_rl.topology import TopologyConfig, TopologyController, sparse_seed
from sparse_rl.topology.methods import migrate_legacy_options

DEFAULT_SPARSITY = 0.9
#: the methods that keep an N:M structure (drop and grow inside each group)
STRUCTURED_METHODS = ("static", "set", "rigl")


@dataclass
class SparsityConfig(TopologyConfig):
    """The sparse part of ``policy_kwargs`` (everything else goes to SB3's policy). The topology fields
    (``topology``, ``topology_kwargs`` and the schedule) are :class:`TopologyConfig`'s, shared by actor and
    critic; each network gets its own instance of the method.

    :param sparsity: fraction of zero weights in actor *and* critic, in [0, 1); default 0.9.
    :param actor_sparsity: overrides ``sparsity`` for the actor (and its target).
    :param critic_sparsity: overrides ``sparsity`` for the critic (and its target).
    :param distribution: per-layer density distribution: ``uniform``, ``er`` or ``erk``.
    :param dense_first_layer: keep the input layer(s) dense.
    :param dense_last_layer: keep the output layer(s) dense.
    :param sparse_init: rescale each neuron's initial weights by ``sqrt(dense fan-in / actual fan-in)``.
    :param init_from: path of a lottery ticket (:mod:`sparse_rl.agents.tickets`, written by
        ``python -m sparse_rl.lottery``): start from its masks and weights instead of random ones.
    :param input_layer_sparsity: make only the input layer(s) of actor and critic sparse, at exactly this
        sparsity in [0, 1), and every other layer dense (Automatic Noise Filtering, Grooten et al. 2023:
        ``--preset anf``); then ``sparsity``, ``actor_sparsity`` and ``critic_sparsity`` stay unset and
        ``distribution`` does not apply.
    :param structure: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``): at most N nonzeros in every M
        consecutive weights of a row; each sparse layer's density (from ``sparsity`` and ``distribution``)
        is rounded to its nearest ``n:M`` with ``1 <= n <= N`` (``sparse_rl.sparse.structure``). Works with
        ``static``, ``set`` and ``rigl``, whose drops and growth then stay inside each group.
    :param backend: how masked layers compute: ``"sparse"`` (CSR kernels; the trained parameters, their
        optimizer state and target copies hold the nonzeros only), ``"dense"`` (dense kernels on weights
        with exact zeros) or ``"auto"`` (per layer: sparse below the break-even density measured on this
        machine, see :mod:`sparse_rl.sparse.backend`). Results agree to float precision.

    ``update_interval`` is counted in each network's own optimizer steps (TD3 steps its actor every
    ``policy_delay`` critic steps) and ``end_fraction`` in fractions of the algorithm's ``total_timesteps``.
    """

    sparsity: float | None = None
    actor_sparsity: float | None = None
    critic_sparsity: float | None = None
    distribution: str = "erk"
    drop_fraction: float = 0.5  # Graesser et al. 2022's SAC setting (TopologyConfig's generic default: 0.3)
    dense_first_layer: bool = False
    dense_last_layer: bool = False
    sparse_init: bool = False
    backend: str = "auto"
    init_from: str | None = None
    structure: str = "unstructured"
    input_layer_sparsity: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # topology, schedule, interval, fractions, grow signal
        check_backend(self.backend)
        for name in ("sparsity", "actor_sparsity", "critic_sparsity"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        check_distribution(self.distribution)
        nm = parse_structure(self.structure)
        if nm is not None and self.topology not in STRUCTURED_METHODS:
            raise ValueError(
                f"structure {self.structure!r} works with topology {', '.join(STRUCTURED_METHODS)}, not {self.topology!r}"
            )
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise ValueError(f"init_from={self.init_from!r}: no such ticket file")
        for name in ("dense_first_layer", "dense_last_layer", "sparse_init"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.input_layer_sparsity is not None:
            value = self.input_layer_sparsity
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"input_layer_sparsity must be a number in [0, 1), got {value!r}")
            both = [n for n in ("sparsity", "actor_sparsity", "critic_sparsity") if getattr(self, n) is not None]
            if both or self.dense_first_layer:
                given = ", ".join(both) or "dense_first_layer"
                raise ValueError(f"input_layer_sparsity makes the input layers alone sparse; it cannot be combined "
                                 f"with {given}: leave that unset")

    def network_sparsity(self, network: str) -> float:
        own = getattr(self, f"{network}_sparsity", None)
        if own is not None:
            return float(own)
        return float(self.sparsity) if self.sparsity is not None else DEFAULT_SPARSITY

    def topology_config(self) -> TopologyConfig:
        return TopologyConfig(**{f.name: getattr(self, f.name) for f in fields(TopologyConfig)})


SPARSE_KWARGS = frozenset(f.name for f in fields(SparsityConfig))


def replay_method_problem(config: TopologyConfig, where: str) -> str | None:
    """Why ``config``'s method cannot run in ``where`` (a policy without SAC/TD3's replay losses), or ``None``."""
    method = config.make_method()
    needs = [what for what, used in (("scores connections with the algorithm's loss", hasattr(method, "loss_fn")),
                                     ("rewires dormant units from replay batches", method.rewire_dormant)) if used]
    if not needs:
        return None
    return (f"topology {config.topology!r} {' and '.join(needs)}, which {where} does not support; it works with "
            "SAC, TD3 and DDPG")


def _check_parent_kwargs(policy_name: str, parent: type, kwargs: dict[str, Any]) -> None:
    allowed = set(inspect.signature(parent.__init__).parameters) - {"self", "observation_space", "action_space", "lr_schedule"}
    allowed |= SPARSE_KWARGS
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; known: {', '.join(sorted(allowed))}"
            raise TypeError(f"{policy_name} got an unknown policy kwarg {key!r}{hint}")


class SparsePolicyMixin:
    """Sparsity for an SB3 actor-critic policy; see the module docstring.

    Subclasses define :meth:`_networks` (online network, its target copies) and :meth:`_first_last`.
    """

    sparse_config: SparsityConfig
    actor: nn.Module
    critic: nn.Module

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Box, lr_schedule: Schedule, **kwargs: Any):
        parent = next(
            c for c in type(self).__mro__ if c not in (type(self), SparsePolicyMixin) and not issubclass(c, SparsePolicyMixin)
        )
        kwargs = migrate_legacy_options(kwargs)  # models saved before methods were objects
        _check_parent_kwargs(type(self).__name__, parent, kwargs)
        sparse_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in SPARSE_KWARGS}
        config = SparsityConfig(**sparse_kwargs)
        self._sparse_kwargs = sparse_kwargs
        self._model_ref: weakref.ReferenceType | None = None
        # nn.Module.__init__ has not run yet; plain attributes are fine, modules are not.
        self.sparse_config = config
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)  # type: ignore[call-arg]

    # ------------------------------------------------------------- building
    def _networks(self) -> dict[str, tuple[nn.Module, list[nn.Module]]]:
        raise NotImplementedError

    def _first_last(self, name: str, network: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
        raise NotImplementedError

    def _prepare_networks(self) -> None:
        """Called after SB3 built the networks and optimizers, before their linears become masked: a policy whose
        network includes a bare ``nn.Linear`` attribute (PPO's ``action_net``) wraps it here."""
        self._check_method_support()

    def _check_method_support(self) -> None:
        if not self.replay_scores:
            problem = replay_method_problem(self.sparse_config.topology_config(), type(self).__name__)
            if problem:
                raise ValueError(problem)

    #: whether the method hooks that read the algorithm's replay batches and losses work here (SAC, TD3, DDPG)
    replay_scores: bool = True

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self._prepare_networks()
        generator = torch.Generator().manual_seed(sparse_seed())
        config = self.sparse_config
        tickets = read_ticket(config.init_from) if config.init_from is not None else {}
        nm = parse_structure(config.structure)
        for name, (network, targets) in self._networks().items():
            layers = [layer for module in _as_list(network) for layer in replace_linears(module)]
            target_layers = [replace_linears(target) for target in targets]
            first, last = self._first_last(name, network)
            dense = [
                (config.dense_first_layer and any(layer is f for f in first))
                or (config.dense_last_layer and any(layer is l for l in last))
                for layer in layers
            ]
            method = config.topology_config().make_method()  # one per network: it owns its state
            if nm is not None and hasattr(method, "group_size"):
                method.group_size = nm[1]  # drops and growth stay inside each group of M
            sizes = [l.weight.numel() for l in layers]
            density, distribution = 1.0 - config.network_sparsity(name), config.distribution
            if config.input_layer_sparsity is not None:  # ANF: the input layers alone, at exactly that sparsity
                dense = [not any(layer is f for f in first) for layer in layers]
                kept = sum(n for n, d in zip(sizes, dense) if d)
                inputs = sum(n for n, d in zip(sizes, dense) if not d)
                density = (kept + (1.0 - config.input_layer_sparsity) * inputs) / sum(sizes)
                distribution = "uniform"
            try:
                sparsify(
                    layers,
                    density,
                    distribution,
                    generator,
                    dense,
                    config.sparse_init,
                    start_counts=lambda targets, m=method, n=sizes: m.start_nonzeros(targets, n),
                    structure=nm,
                    what=f"{type(self).__name__} {name}",
                )
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
            if config.init_from is not None:  # a lottery ticket: its masks and weights, whatever sparsity says
                load_into(layers, tickets[name], name, config.init_from)
            for target in targets:
                target.load_state_dict(network.state_dict())  # type: ignore[union-attr]  # targets: one module
            controller = TopologyController(
                layers,
                config.topology_config(),
                seed=sparse_seed(generator),
                targets=target_layers,
                progress_fn=self._training_progress,
                method=method,
                name=name,
            )
            controller.attach(self._optimizer_of(name))
            controller.listeners.append(partial(self._record_update, name))
            if controller.method.rewire_dormant:
                controller.dormant_fn = partial(self._dormant_rows, name)
            if hasattr(controller.method, "loss_fn"):  # scores from the network's loss (GraSP)
                controller.method.loss_fn = partial(self._replay_losses, name)
            self.add_module(f"{name}_topology", controller)  # type: ignore[attr-defined]
        self._fit_storage()  # the controllers were built on dense storage: one place chooses it
        for network, targets in self._networks().values():  # network.save()/type(network).load() stay sparse
            for module in [*_as_list(network), *targets]:
                if not isinstance(module, MaskedLinear) and type(module).load_state_dict is nn.Module.load_state_dict:
                    module.__class__ = masked_class(type(module))

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """``nn.Module.to``, then (``backend="auto"``) the storage that is fastest on the new device.

        SB3 builds a policy on the CPU and moves it to the algorithm's device next, so the storage chosen
        while building (CSR where it beats dense kernels on this CPU) is revised here: off the CPU, ``auto``
        keeps dense kernels. A network whose optimizer has stepped keeps its storage (CSR runs anywhere).
        """
        module = super().to(*args, **kwargs)  # type: ignore[misc]
        self._fit_storage()
        return module

    def _fit_storage(self, device: torch.device | None = None) -> None:
        """Give every layer the storage ``backend`` chooses on ``device`` (default: the policy's own).

        Called once the controllers exist (they start on dense storage) and after every move; only
        ``"auto"`` chooses differently by device, and a network whose optimizer has stepped keeps its storage.
        """
        backend = self.sparse_config.backend
        for name, (_network, targets) in self._networks().items():
            controller: TopologyController = getattr(self, f"{name}_topology")
            layers = controller.layers
            optimizer = self._optimizer_of(name)
            if optimizer.state or not layers:
                continue
            where = device if device is not None else layers[0].mask.device
            chosen = [not isinstance(l, MaskedConv2d)  # convolutions keep dense storage
                      and use_sparse_storage(backend, l.out_features, l.in_features, l.nnz, where) for l in layers]
            if chosen == [l.storage == "sparse" for l in layers]:
                continue
            pairs = [(target, masked_layers(target)) for target in targets]
            layers = use_sparse_storage_for(self, layers, chosen, pairs, optimizer)  # type: ignore[arg-type]
            controller.set_layers(layers, [masked_layers(target) for target in targets])

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; where it changes a mask, the optimizer's slots of that layer follow
        (kept connections keep theirs, the rest restart at zero), and target networks take the online network's
        masks before the next optimizer step (Polyak averaging needs them; until then the loaded state stays as
        loaded), so training goes on from any loaded state."""
        controllers = self.topology_controllers()
        before = {name: [l.mask.clone() for l in ctrl.layers] for name, ctrl in controllers.items()}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]
        for name, ctrl in controllers.items():
            optimizer = self._optimizer_of(name)
            for layer, old in zip(ctrl.layers, before[name]):
                follow_loaded_mask(layer, old, optimizer)
            ctrl.targets_stale = True  # a target's topology is its network's: aligned before the next step
        return result

    def _optimizer_of(self, name: str) -> torch.optim.Optimizer:
        """The optimizer that trains network ``name`` (SAC/TD3: the network's own ``optimizer``; PPO and DQN
        have one for the whole policy)."""
        network = self._networks()[name][0]
        if isinstance(network, nn.Module) and hasattr(network, "optimizer"):
            return network.optimizer
        return self.optimizer  # type: ignore[attr-defined]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        # a saved model holds its masks and weights: it must load without the ticket it started from
        data.update({k: v for k, v in self._sparse_kwargs.items() if k != "init_from"})
        return data

    # ------------------------------------------------- link to the algorithm
    def bind(self, model: Any) -> None:
        """Take training progress and the logger from ``model`` (an SB3 algorithm using this policy)."""
        if getattr(model, "policy", None) is not self:
            raise ValueError("bind() expects the SB3 algorithm whose .policy is this policy")
        self._model_ref = weakref.ref(model)

    def _model(self) -> Any:
        model, self._model_ref = find_owner(self, "policy", self._model_ref)
        if model is None:
            raise RuntimeError(
                f"{type(self).__name__} cannot find the SB3 algorithm training it; call policy.bind(model) "
                "or set the controllers' progress_fn when training with a custom loop"
            )
        return model

    def _training_progress(self) -> float:
        return 1.0 - float(self._model()._current_progress_remaining)

    def _record_update(self, name: str, controller: TopologyController) -> None:
        logger = self._model().logger
        for key, value in controller.stats().items():
            logger.record(f"sparsity/{name}_{key}", value)
        for key, value in self.unconnected(name).items():  # a method that cut a unit off says so here
            logger.record(f"sparsity/{name}_{key}", value)

    def unconnected(self, name: str) -> dict[str, int]:
        """Units of network ``name`` with no path to its output: ``unconnected_inputs`` (network inputs that no
        connection reads) and ``unconnected_units`` (hidden units that no connection reads). Both are 0 at
        initialisation; topology updates (drops, pruning) may cut units off, and the TensorBoard keys
        ``sparsity/<network>_unconnected_*`` say so at every update."""
        layers = getattr(self, f"{name}_topology").layers
        inputs = 0
        read: dict[int, torch.Tensor] = {}
        for layer, source in zip(layers, self.layer_inputs(name)):
            used = layer.mask.reshape(layer.mask.shape[0], layer.mask.shape[1], -1).any(dim=2).any(dim=0)
            if source is None:
                inputs += int((~used).sum())
            else:
                read[source] = read[source] | used if source in read else used
        units = sum(int((~r).sum()) for r in read.values())
        return {"unconnected_inputs": inputs, "unconnected_units": units}

    def _dormant_rows(self, name: str, batch_size: int = 256) -> dict[int, tuple[torch.Tensor, list[int]]]:
        """Dormant rows of ``name``'s layers on a replay batch, keyed by controller layer index."""
        from sparse_rl.agents.model_diagnostics import preserved_rng
        from sparse_rl.topology.layer_diagnostics import dormant_units

        buffer = getattr(self._model(), "replay_buffer", None)
        if buffer is None or buffer.size() == 0:
            return {}
        network = getattr(self, name)
        tau = getattr(self, f"{name}_topology").method.dormant_tau
        with preserved_rng():
            data = buffer.sample(batch_size)
            if name == "actor":
                units = dormant_units(network, lambda: self._predict(data.observations, deterministic=True), tau)
            else:
                units = dormant_units(network, lambda: network(data.observations, data.actions), tau)
        index = {id(layer): i for i, layer in enumerate(getattr(self, f"{name}_topology").layers)}
        return {
            index[id(producer)]: (rows, [index[id(c)] for c in consumers if id(c) in index])
            for producer, rows, consumers in units
            if id(producer) in index
        }

    def _replay_losses(self, name: str, n: int) -> list[torch.Tensor]:
        """Network ``name``'s SB3 loss on ``n`` fresh replay batches, with graphs; random generators kept."""
        from sparse_rl.agents.model_diagnostics import actor_loss, critic_loss, preserved_rng

        model = self._model()
        buffer = getattr(model, "replay_buffer", None)
        if buffer is None or buffer.size() == 0:
            raise RuntimeError(f"{name}: the replay buffer is empty, no batch to score connections on")
        loss = critic_loss if name == "critic" else actor_loss
        with preserved_rng():
            return [loss(model, buffer.sample(model.batch_size)) for _ in range(n)]

    def layer_inputs(self, name: str) -> list[int | None]:
        """Wiring of network ``name``'s masked layers (in the controller's order): per layer, the index of
        the layer whose output it reads, ``None`` for the network's input."""
        raise NotImplementedError

    def topology_distance(self) -> dict[str, dict[str, Any]]:
        """NNSTD of each network's topology from the one training started with (per layer and total)."""
        controllers = self.topology_controllers()
        return {name: ctrl.distance_from_initial(self.layer_inputs(name)) for name, ctrl in controllers.items()}

    def topology_controllers(self) -> dict[str, TopologyController]:
        """The controller of each network, by network name (``actor``, ``critic``)."""
        return {name: getattr(self, f"{name}_topology") for name in self._networks()}


def _chain_first_last(layers: list[MaskedLinear]) -> tuple[list[nn.Module], list[nn.Module]]:
    return ([layers[0]], [layers[-1]]) if layers else ([], [])


def _critic_first_last(critic: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    first: list[nn.Module] = []
    last: list[nn.Module] = []
    for q_net in critic.q_networks:  # type: ignore[attr-defined]
        f, l = _chain_first_last(masked_layers(q_net))
        first += f
        last += l
    return first, last


def _chain_inputs(n: int, offset: int = 0) -> list[int | None]:
    return [None] + [offset + k for k in range(n - 1)] if n else []


def _critic_inputs(critic: nn.Module) -> list[int | None]:
    inputs: list[int | None] = []
    for q_net in critic.q_networks:  # type: ignore[attr-defined]
        inputs += _chain_inputs(len(masked_layers(q_net)), len(inputs))
    return inputs


def _actor_heads(actor: nn.Module) -> list[nn.Module]:
    """The linear layers of a SAC-style actor's heads, ``mu`` then ``log_std``, both reading ``latent_pi``
    (with gSDE ``mu`` may be ``Sequential(Linear, Hardtanh)`` and ``log_std`` a Parameter, not a layer)."""
    heads: list[nn.Module] = []
    for head in (actor.mu, actor.log_std):
        if isinstance(head, nn.Module):
            heads += [m for m in head.modules() if isinstance(m, nn.Linear)]
    return heads


class SACLikeActorMixin(SparsePolicyMixin):
    """Wiring of SAC-style policies (SAC, TQC, CrossQ): actor ``latent_pi`` then its heads; critics in
    ``critic.q_networks``."""

    def layer_inputs(self, name: str) -> list[int | None]:
        if name == "critic":
            return _critic_inputs(self.critic)
        n = len(masked_layers(self.actor.latent_pi))  # then the mean and log-std heads, both reading its output
        last = n - 1 if n else None
        return _chain_inputs(n) + [last] * len(_actor_heads(self.actor))

    def _first_last(self, name: str, network: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
        if name == "critic":
            return _critic_first_last(network)
        heads = _actor_heads(network)
        chain = masked_layers(network.latent_pi)  # type: ignore[arg-type]
        return ([chain[0]] if chain else heads), heads


class SparseSACPolicy(SACLikeActorMixin, SACPolicy):
    """SB3 :class:`SACPolicy` with sparse, evolving actor and critic. Sparse kwargs: :class:`SparsityConfig`.
    ``use_sde=True`` (gSDE) works: the state-dependent noise reads the sparse latent."""

    def _networks(self) -> dict[str, tuple[nn.Module, list[nn.Module]]]:
        return {"actor": (self.actor, []), "critic": (self.critic, [self.critic_target])}


class SparseTD3Policy(SparsePolicyMixin, TD3Policy):
    """SB3 :class:`TD3Policy` with sparse, evolving actor and critic. Sparse kwargs: :class:`SparsityConfig`."""

    def layer_inputs(self, name: str) -> list[int | None]:
        if name == "critic":
            return _critic_inputs(self.critic)
        return _chain_inputs(len(masked_layers(self.actor.mu)))

    def _networks(self) -> dict[str, tuple[nn.Module, list[nn.Module]]]:
        return {"actor": (self.actor, [self.actor_target]), "critic": (self.critic, [self.critic_target])}

    def _first_last(self, name: str, network: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
        if name == "critic":
            return _critic_first_last(network)
        return _chain_first_last(masked_layers(network.mu))


def _as_list(network: nn.Module | list[nn.Module]) -> list[nn.Module]:
    return network if isinstance(network, list) else [network]


def _linear_layers(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


def sparsity_report(model_or_policy: Any, per_layer: bool = False) -> dict[str, Any]:
    """Density, ITOP rate, FLOPs per forward pass and last drop/grow counts of actor and critic.

    Works for every sparse policy (networks ``actor`` and ``critic``; DQN's ``q_net``) and, as a baseline, for
    SB3's dense policies of the same algorithms (density 1).

    :param model_or_policy: an SB3 algorithm or its policy.
    :param per_layer: add a ``layers`` list per network.
    :return: ``{"actor": {...}, "critic": {...}}`` (DQN: ``{"q_net": {...}}``).
    """
    policy = getattr(model_or_policy, "policy", model_or_policy)
    if isinstance(policy, SparsePolicyMixin):
        return {name: ctrl.stats(per_layer=per_layer) for name, ctrl in policy.topology_controllers().items()}
    from sparse_rl.topology import network_stats

    if hasattr(policy, "actor") and hasattr(policy, "critic"):  # SAC, TD3, DDPG, TQC, CrossQ
        networks = {name: [getattr(policy, name)] for name in ("actor", "critic")}
    elif hasattr(policy, "mlp_extractor"):  # PPO, A2C
        networks = {"actor": [policy.mlp_extractor.policy_net, policy.action_net],
                    "critic": [policy.mlp_extractor.value_net, policy.value_net]}
    elif hasattr(policy, "q_net"):  # DQN
        networks = {"q_net": [policy.q_net]}
    else:
        raise TypeError(f"sparsity_report expects an SB3 model or policy of SAC, TD3, DDPG, TQC, CrossQ, PPO, A2C or "
                        f"DQN, got {type(model_or_policy).__name__}")
    return {name: network_stats([l for m in modules for l in _linear_layers(m)], per_layer)
            for name, modules in networks.items()}


__all__ = ["SparsePolicyMixin", "SparseSACPolicy", "SparseTD3Policy", "SparsityConfig", "sparsity_report"]
