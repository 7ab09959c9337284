"""Non-stationarity diagnostics for any torch network (no SB3): dormant neurons and gradient SNR.

Dormant neurons (ReDo, Sokar et al. 2023): for a hidden layer with activations ``h`` on a batch, the
score of neuron ``i`` is ``mean_batch |h_i| / mean_j mean_batch |h_j|``; a neuron is dormant when its
score is ``<= tau``. Hidden layers are the outputs of the activation modules (``nn.ReLU``, ``nn.Tanh``,
...) inside the network.

Gradient signal-to-noise ratio: over ``B`` minibatch gradients ``g_b`` of the same loss,
``SNR = ||mean_b g_b||^2 / mean_b ||g_b - mean g||^2`` (power of the mean gradient over the power of its
fluctuation); high when minibatches agree, low when the gradient is mostly noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid)


@torch.no_grad()
def dormant_neurons(network: nn.Module, forward: Callable[[], Any], tau: float = 0.1) -> dict[str, Any]:
    """Run ``forward()`` (which calls ``network`` on a batch) and score its hidden neurons.

    :param network: module whose activation modules mark the hidden layers.
    :param forward: calls the network on a batch of inputs.
    :param tau: dormancy threshold, >= 0 (0: only completely inactive neurons).
    :return: ``{"fraction": dormant / hidden neurons, "layers": [fraction per hidden layer],
        "masks": [bool tensor per layer, True = dormant]}``.
    """
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau!r}")
    outputs: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
        for m in network.modules()
        if isinstance(m, ACTIVATIONS)
    ]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    masks = []
    for out in outputs:
        activity = out.abs().reshape(-1, out.shape[-1]).mean(dim=0)
        score = activity / activity.mean().clamp(min=1e-12)
        masks.append(score <= tau)
    total = sum(m.numel() for m in masks)
    return {
        "fraction": sum(int(m.sum()) for m in masks) / total if total else 0.0,
        "layers": [float(m.float().mean()) for m in masks],
        "masks": masks,
    }


def gradient_snr(params: Iterable[torch.Tensor], losses: Iterable[Callable[[], torch.Tensor]]) -> float:
    """SNR of the gradients of ``params`` over the minibatch losses (each a closure returning a loss)."""
    params = [p for p in params if p.requires_grad]
    flat = []
    for loss_fn in losses:
        grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        flat.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))
    if len(flat) < 2:
        raise ValueError("gradient_snr needs at least 2 minibatches")
    g = torch.stack(flat)
    mean = g.mean(dim=0)
    noise = ((g - mean) ** 2).sum(dim=1).mean()
    return float((mean**2).sum() / noise.clamp(min=1e-30))


@torch.no_grad()
def dormant_units(
    network: nn.Module, forward: Callable[[], Any], tau: float = 0.1
) -> list[tuple[nn.Linear, torch.Tensor, list[nn.Linear]]]:
    """Dormant neurons with their place in the network, from the order modules are called in.

    :return: per hidden layer ``(producer, dormant rows, consumers)``: the linear layer whose outputs the
        activation applies to, a bool tensor over its outputs, and the linear layers called next that
        take those outputs as input (e.g. SAC's ``mu`` and ``log_std`` heads).
    """
    calls: list[tuple[nn.Module, torch.Tensor | None]] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, _i, out: calls.append((mod, out.detach() if isinstance(mod, ACTIVATIONS) else None))
        )
        for m in network.modules()
        if isinstance(m, (nn.Linear, *ACTIVATIONS))
    ]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    units = []
    for pos, (_, out) in enumerate(calls):
        if out is None:
            continue
        producer = next((m for m, _ in reversed(calls[:pos]) if isinstance(m, nn.Linear)), None)
        if producer is None:
            continue
        consumers = []
        for m, o in calls[pos + 1 :]:
            if o is not None:
                break
            if isinstance(m, nn.Linear) and m.in_features == producer.out_features:
                consumers.append(m)
        if not consumers:  # an output squashing (TD3's final tanh), not a hidden layer
            continue
        activity = out.abs().reshape(-1, out.shape[-1]).mean(dim=0)
        units.append((producer, activity / activity.mean().clamp(min=1e-12) <= tau, consumers))
    return units
