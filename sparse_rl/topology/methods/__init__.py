"""Sparse training methods: each one class, registered by name, with its hyperparameters as dataclass
fields (validated once, in the class) and its own state.

A method decides, at each topology update, the new mask of every layer of a network. The shared
machinery (:class:`~sparse_rl.topology.TopologyController`) does the rest for every method: it masks
gradients, zeroes new weights and every optimizer slot at changed positions, re-masks target networks,
counts steps, schedules updates and logs. A new method is one small class in one module (plus its tests)::

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

The modules, one family each: :mod:`.base` (the contract, :class:`DropGrow`, the registry),
:mod:`.dst` (static, SET, RigL, SNFS, DSR), :mod:`.pruning` (GMP, GraNet), :mod:`.init_pruning` (SNIP,
GraSP), :mod:`.deepr`, :mod:`.topkast`, and :mod:`.selection` (the top-k helpers they share). A method that
prunes and then follows RigL holds a RigL of its own (:class:`~.dst.RegrowthOptions`).

Options common to every method: ``rewire_dormant`` / ``dormant_tau`` (ReDo-style neuron regrowth at each
update, carried out by the controller).
"""

from sparse_rl.topology.methods.base import (
    LEGACY_OPTIONS,
    DropGrow,
    MaskUpdate,
    Method,
    available_methods,
    make_method,
    method_options,
    migrate_legacy_options,
    register_method,
)
from sparse_rl.topology.methods.deepr import DeepR
from sparse_rl.topology.methods.dst import DSR, GROW_SIGNALS, SET, SNFS, RegrowthOptions, RigL, Static
from sparse_rl.topology.methods.init_pruning import SNIP, GraSP
from sparse_rl.topology.methods.pruning import GMP, GraNet
from sparse_rl.topology.methods.topkast import TopKAST

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
    "RegrowthOptions",
    "RigL",
    "Static",
    "TopKAST",
    "available_methods",
    "make_method",
    "method_options",
    "migrate_legacy_options",
    "register_method",
]
