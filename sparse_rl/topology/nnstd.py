"""NNSTD: the neural network sparse topology distance of Liu et al. (2020, "Topological insights into
sparse neural networks"), robust to permutations of hidden neurons.

Layer by layer from the input, each neuron is described by the set of its input connections. Two
neurons' distance is the normalised edit distance of those sets, ``1 - |A ∩ B| / |A ∪ B|`` (0 for two
empty sets). Hidden neurons of the second network are matched one-to-one to the first's by the
assignment of least total distance (Hungarian algorithm), and that matching re-indexes the inputs of
the next layer; input features and output neurons keep their order. A layer's distance is the mean
distance of its matched neurons, a network's the mean over its layers: 0 for identical or permuted
topologies, 1 for topologies that share no connection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def linear_assignment(cost: np.ndarray) -> np.ndarray:
    """For a square cost matrix, the column assigned to each row with the least total cost.

    The shortest-augmenting-path form of the Hungarian algorithm, O(n³), with the inner scan vectorised.
    """
    cost = np.asarray(cost, dtype=np.float64)
    n = cost.shape[0]
    if cost.shape != (n, n):
        raise ValueError(f"linear_assignment needs a square matrix, got shape {cost.shape}")
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    owner = np.zeros(n + 1, dtype=np.int64)  # owner[j]: row (1-based) assigned to column j; column 0 is a sentinel
    way = np.zeros(n + 1, dtype=np.int64)
    # start from row minima: feasible duals, and each row whose cheapest column is still free takes it
    # (a tight edge); topologies compared with their own past mostly match this way, leaving few rows to
    # augment
    assigned = np.zeros(n + 1, dtype=bool)
    if n:
        u[1:] = cost.min(axis=1)
        for i, j in enumerate(np.argmin(cost, axis=1), start=1):
            if owner[j + 1] == 0:
                owner[j + 1] = i
                assigned[i] = True
    for i in range(1, n + 1):
        if assigned[i]:
            continue
        owner[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    assignment = np.empty(n, dtype=np.int64)
    assignment[owner[1:] - 1] = np.arange(n)
    return assignment


def neuron_distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """``[i, j]``: normalised edit distance between row ``i`` of mask ``a`` and row ``j`` of mask ``b``."""
    a64, b64 = a.double(), b.double()
    inter = a64 @ b64.T
    union = a64.sum(1, keepdim=True) + b64.sum(1)[None, :] - inter
    dist = torch.where(union > 0, 1 - inter / union.clamp(min=1), torch.zeros_like(inter))
    return dist.cpu().numpy()


def nnstd(
    masks_a: Sequence[torch.Tensor], masks_b: Sequence[torch.Tensor], inputs: Sequence[int | None]
) -> dict[str, float | list[float]]:
    """NNSTD between two topologies of the same architecture.

    :param masks_a: boolean ``(out, in)`` masks of the first network's layers, in forward order.
    :param masks_b: the second network's, same shapes.
    :param inputs: per layer, the index of the layer whose output it reads (``None``: the network input).
        A layer that no later layer reads is an output layer: its neurons are not permuted.
    :return: ``{"layers": [distance per layer], "total": mean over layers}``.
    """
    if len(masks_a) != len(masks_b) or len(masks_a) != len(inputs):
        raise ValueError("nnstd needs as many masks in each network as entries in inputs")
    consumed = {k for k in inputs if k is not None}
    perms: dict[int, np.ndarray] = {}  # layer -> for each neuron of b, the neuron of a it is matched to
    layers = []
    for k, (a, b) in enumerate(zip(masks_a, masks_b)):
        if a.shape != b.shape:
            raise ValueError(f"layer {k}: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")
        source = inputs[k]
        if source is not None:  # express b's inputs in a's neuron order
            aligned = torch.zeros_like(b)
            aligned[:, torch.as_tensor(perms[source], device=b.device)] = b
            b = aligned
        dist = neuron_distances(a, b)
        if k in consumed:  # hidden layer: match b's neurons to a's
            assignment = linear_assignment(dist)  # row i of a -> column assignment[i] of b
            layers.append(float(dist[np.arange(len(dist)), assignment].mean()))
            perm = np.empty_like(assignment)
            perm[assignment] = np.arange(len(assignment))
            perms[k] = perm
        else:
            layers.append(float(np.diag(dist).mean()))
    return {"layers": layers, "total": float(np.mean(layers)) if layers else 0.0}


__all__ = ["linear_assignment", "neuron_distances", "nnstd"]
