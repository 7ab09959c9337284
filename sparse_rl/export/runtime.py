"""Numpy-only runtime for the compact sparse policy file (``--format sparse``); never imports torch.

File format (``.npz``, loaded with ``allow_pickle=False``): a ``meta`` member holding UTF-8 JSON, and
per layer ``i``: ``l{i}_indptr`` (row pointers), ``l{i}_indices`` (column of each nonzero), each of the
smallest unsigned type that fits (uint8/uint16/uint32), ``l{i}_values`` (float32, or int8 with
one scale per output row: ``w = q * scale``), and ``l{i}_bias`` (float32); int8 files hold instead
``l{i}_scale_bias``, float16 of shape ``(2, out)``: row scales, then biases.
``meta`` holds the format name and version, dims, per-layer activations, the output squashing and the
action bounds.

    from sparse_rl.export.runtime import SparsePolicy
    policy = SparsePolicy.load("cheetah.npz")
    action = policy.act(obs)        # raw observation -> action within the env's bounds
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "sparse_rl.policy"
FORMAT_VERSION = 1
ACTIVATIONS = ("relu", "tanh", "identity")


def index_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"index {max_value} does not fit in uint32")


def _activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, np.float32(0))
    if name == "tanh":
        return np.tanh(x)
    return x


@dataclass
class SparsePolicy:
    """A loaded policy; layers are expanded to dense float32 matrices for numpy's matmul."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[str]
    squash: str
    action_low: np.ndarray
    action_high: np.ndarray
    meta: dict

    @classmethod
    def load(cls, path: str | Path) -> SparsePolicy:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        if "meta" not in data:
            raise ValueError(f"{str(path)!r} is not a sparse_rl policy file (no meta)")
        meta = json.loads(bytes(data["meta"]).decode())
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{str(path)!r}: unsupported format {meta.get('format')!r} v{meta.get('version')!r}")
        weights, biases = [], []
        for i, layer in enumerate(meta["layers"]):
            w = np.zeros((layer["out"], layer["in"]), dtype=np.float32)
            indptr = data[f"l{i}_indptr"].astype(np.int64)
            rows = np.repeat(np.arange(layer["out"]), np.diff(indptr))
            values = data[f"l{i}_values"].astype(np.float32)
            if meta["dtype"] == "int8":
                scale, bias = data[f"l{i}_scale_bias"].astype(np.float32)
                values = values * scale[rows]
            else:
                bias = data[f"l{i}_bias"].astype(np.float32)
            w[rows, data[f"l{i}_indices"].astype(np.int64)] = values
            weights.append(w)
            biases.append(bias)
        return cls(
            weights,
            biases,
            [layer["activation"] for layer in meta["layers"]],
            meta["squash"],
            np.asarray(meta["action_low"], dtype=np.float32),
            np.asarray(meta["action_high"], dtype=np.float32),
            meta,
        )

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Actions for one observation ``(obs_dim,)`` or a batch ``(n, obs_dim)``; float32."""
        x = np.asarray(obs, dtype=np.float32)
        for w, b, act in zip(self.weights, self.biases, self.activations):
            x = _activate(x @ w.T + b, act)
        if self.squash == "tanh":
            x = np.tanh(x)
        return self.action_low + (x + np.float32(1)) * (np.float32(0.5) * (self.action_high - self.action_low))
