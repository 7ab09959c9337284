"""Lottery tickets: a sparse network's masks with the weights to start from, as a data-only ``.npz``.

A ticket holds, for each network (``actor``, ``critic``) and each of its masked layers ``i``, the arrays
``{network}.{i}.mask`` (bool), ``{network}.{i}.weight`` and ``{network}.{i}.bias`` (float32), and a
``meta`` JSON member. ``SparsityConfig(init_from=PATH)`` (``--set init_from=PATH``) starts a run from it:
the layers take its masks and weights (target networks too), whatever ``sparsity`` says.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

TICKET_FORMAT = "sparse_rl.ticket"


def layer_arrays(layers: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    """Mask, dense weight and bias of each masked layer, as numpy arrays."""
    return [
        {
            "mask": layer.mask.detach().cpu().numpy().astype(bool),
            "weight": layer.weight.detach().cpu().numpy().astype(np.float32),
            "bias": layer.bias.detach().cpu().numpy().astype(np.float32),
        }
        for layer in layers
    ]


def ticket_bytes(networks: dict[str, list[dict[str, np.ndarray]]], meta: dict[str, Any]) -> bytes:
    """The ``.npz`` of a ticket (absent weights are stored as zeros)."""
    arrays: dict[str, np.ndarray] = {}
    for name, layers in networks.items():
        for i, layer in enumerate(layers):
            arrays[f"{name}.{i}.mask"] = layer["mask"]
            arrays[f"{name}.{i}.weight"] = np.where(layer["mask"], layer["weight"], 0).astype(np.float32)
            arrays[f"{name}.{i}.bias"] = layer["bias"]
    arrays["meta"] = np.frombuffer(json.dumps({"format": TICKET_FORMAT, **meta}).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_ticket(path: str | Path) -> dict[str, list[dict[str, np.ndarray]]]:
    """``{network: [per layer {mask, weight, bias}]}``; :raises ValueError: naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        meta = json.loads(bytes(data.pop("meta")).decode())
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"init_from={str(path)!r} is not a readable ticket: {err}") from None
    if meta.get("format") != TICKET_FORMAT:
        raise ValueError(f"init_from={str(path)!r} is not a sparse_rl ticket (format {meta.get('format')!r})")
    networks: dict[str, list[dict[str, np.ndarray]]] = {}
    for key in sorted(data, key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
        name, index, part = key.split(".")
        layers = networks.setdefault(name, [])
        while len(layers) <= int(index):
            layers.append({})
        layers[int(index)][part] = data[key]
    return networks


@torch.no_grad()
def load_into(layers: Sequence[Any], arrays: list[dict[str, np.ndarray]], name: str, path: str | Path) -> None:
    """Give ``layers`` (masked layers with dense storage) the ticket's masks and weights."""
    if len(arrays) != len(layers):
        raise ValueError(f"init_from={str(path)!r}: the {name} has {len(layers)} masked layers, the ticket {len(arrays)}")
    for i, (layer, a) in enumerate(zip(layers, arrays)):
        if tuple(a["mask"].shape) != tuple(layer.weight.shape) or tuple(a["bias"].shape) != tuple(layer.bias.shape):
            raise ValueError(
                f"init_from={str(path)!r}: {name} layer {i} is {tuple(layer.weight.shape)}, "
                f"the ticket's {tuple(a['mask'].shape)}"
            )
        layer.explored.zero_()
        layer.set_mask(torch.as_tensor(a["mask"], device=layer.weight.device))
        layer.weight.copy_(torch.as_tensor(a["weight"], device=layer.weight.device))
        layer.bias.copy_(torch.as_tensor(a["bias"], device=layer.bias.device))


__all__ = ["TICKET_FORMAT", "layer_arrays", "load_into", "read_ticket", "ticket_bytes"]
