"""The deterministic actor of an SB3 SAC/TD3 model as a plain graph of dense numpy layers.

Every export format is written from this one :class:`ActorGraph`: raw observation -> linear layers with
activations -> optional tanh squashing -> rescaling to the env's action bounds (SB3's
``unscale_action``). Policies this cannot express (image/feature extractors, gSDE, other activations)
are refused with :class:`ExportError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse_rl.export.runtime import index_dtype


class ExportError(ValueError):
    """The model cannot be exported; the message says why."""


_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh"}


@dataclass
class Layer:
    weight: np.ndarray  # (out, in) float32, zeros at absent connections
    bias: np.ndarray  # (out,) float32
    activation: str  # relu | tanh | identity
    group: int | None = None  # M of an N:M structure the layer follows (None: unstructured, stored as CSR)

    def nm(self) -> tuple[int, int] | None:
        """``(n, M)``: the layer's nonzeros fit ``n`` slots in every group of M consecutive inputs of a row,
        with ``n < M`` (otherwise, or without a structure, ``None``: CSR)."""
        if self.group is None:
            return None
        m = self.group
        out, inp = self.shape
        groups = -(-inp // m)
        padded = np.zeros((out, groups * m), dtype=bool)
        padded[:, :inp] = self.weight != 0
        n = int(padded.reshape(out, groups, m).sum(-1).max()) if out and inp else 0
        return (max(n, 1), m) if n < m else None

    def nm_arrays(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        """``(values [out*G*n], offsets [out*G*n], n, M)``: each group's nonzeros in column order, padded
        with zero values at offset 0."""
        nm = self.nm()
        assert nm is not None
        n, m = nm
        out, inp = self.shape
        groups = -(-inp // m)
        w = np.zeros((out, groups * m), dtype=np.float32)
        w[:, :inp] = self.weight
        w = w.reshape(out, groups, m)
        # stable: nonzeros first, each in column order
        order = np.argsort(w == 0, axis=-1, kind="stable")[..., :n]
        values = np.take_along_axis(w, order, axis=-1)
        offsets = np.where(values != 0, order, 0)
        return values.reshape(-1).astype(np.float32), offsets.reshape(-1).astype(np.int64), n, m

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape  # type: ignore[return-value]

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weight))

    def csr(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, values)`` with the smallest index types that fit."""
        rows, cols = np.nonzero(self.weight)
        counts = np.bincount(rows, minlength=self.shape[0])
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return (
            indptr.astype(index_dtype(int(indptr[-1]))),
            cols.astype(index_dtype(max(self.shape[1] - 1, 0))),
            self.weight[rows, cols].astype(np.float32),
        )


@dataclass
class ActorGraph:
    layers: list[Layer]
    squash: str  # "tanh" (SAC), "none" (TD3 ends in a Tanh layer) or "clip" (PPO/A2C: the mean, clipped to the bounds)
    action_low: np.ndarray
    action_high: np.ndarray
    algo: str
    #: the positions of the env's observation the first layer reads, increasing (None: all of them); set by
    #: :func:`drop_unused_inputs` when some input has no connection left
    input_index: np.ndarray | None = None
    env_obs_dim_: int | None = None

    @property
    def obs_dim(self) -> int:
        """The inputs the exported policy takes: the observation features it reads."""
        return self.layers[0].shape[1]

    @property
    def env_obs_dim(self) -> int:
        """The env's observation size (``obs_dim`` unless unused inputs were dropped)."""
        return self.env_obs_dim_ if self.env_obs_dim_ is not None else self.obs_dim

    def select_inputs(self, obs: np.ndarray) -> np.ndarray:
        """The features the policy reads, from an env observation (or batch); a reduced one passes through."""
        obs = np.asarray(obs)
        if self.input_index is not None and obs.shape[-1] == self.env_obs_dim:
            return obs[..., self.input_index]
        return obs

    @property
    def act_dim(self) -> int:
        return self.layers[-1].shape[0]

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """Reference forward pass in float64, from an env observation (or the reduced one)."""
        x = np.asarray(self.select_inputs(obs), dtype=np.float64)
        for layer in self.layers:
            x = x @ layer.weight.T.astype(np.float64) + layer.bias
            x = np.maximum(x, 0) if layer.activation == "relu" else np.tanh(x) if layer.activation == "tanh" else x
        if self.squash == "tanh":
            x = np.tanh(x)
        elif self.squash == "clip":
            x = np.clip(x, -1.0, 1.0)
        return self.action_low + (x + 1) * 0.5 * (self.action_high - self.action_low)

    def stats(self) -> dict[str, Any]:
        nnz = sum(layer.nnz for layer in self.layers)
        dense = sum(layer.weight.size for layer in self.layers)
        return {"nonzeros": nnz, "weights": dense, "density": nnz / dense, "macs": nnz, "dense_macs": dense}


def _sequential_layers(modules: list[nn.Module], what: str) -> list[Layer]:
    layers: list[Layer] = []
    for m in modules:
        if isinstance(m, nn.Linear):
            bias = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros(m.out_features)
            layers.append(Layer(m.weight.detach().cpu().numpy().astype(np.float32), bias.astype(np.float32), "identity"))
        elif type(m) in _ACTIVATIONS:
            if not layers or layers[-1].activation != "identity":
                raise ExportError(f"{what}: activation {type(m).__name__} does not follow a linear layer")
            layers[-1].activation = _ACTIVATIONS[type(m)]
        elif not isinstance(m, (nn.Flatten, nn.Identity)):
            raise ExportError(
                f"{what}: unsupported module {type(m).__name__}; exportable actors are MLPs of Linear layers "
                f"with {', '.join(t.__name__ for t in _ACTIVATIONS)} activations"
            )
    return layers


def _fold_batch_renorm(modules: list[nn.Module], what: str) -> list[nn.Module]:
    """CrossQ's ``BatchRenorm1d`` in evaluation mode is an affine map of its input, folded here into the linear
    layer after it (its columns scaled, its bias shifted): the same sparsity, the same function."""
    out: list[nn.Module] = []
    pending: tuple[np.ndarray, np.ndarray] | None = None
    for m in modules:
        if type(m).__name__ in ("BatchRenorm1d", "BatchNorm1d"):
            renorm = hasattr(m, "ra_mean")  # sb3-contrib's BatchRenorm1d names its statistics and scale so
            mean = (m.ra_mean if renorm else m.running_mean).detach().cpu().double().numpy()
            var = (m.ra_var if renorm else m.running_var).detach().cpu().double().numpy()
            scale = 1.0 / np.sqrt(var + m.eps)
            shift = -mean * scale
            gamma = m.scale if renorm else m.weight
            if getattr(m, "affine", True) and gamma is not None:
                w, b = gamma.detach().cpu().double().numpy(), m.bias.detach().cpu().double().numpy()
                scale, shift = scale * w, shift * w + b
            pending = (scale.astype(np.float64), shift.astype(np.float64))
            continue
        if pending is not None:
            if not isinstance(m, nn.Linear):
                raise ExportError(f"{what}: a batch normalisation is followed by {type(m).__name__}, not a linear layer")
            folded = nn.Linear(m.in_features, m.out_features)
            weight = m.weight.detach().cpu().double().numpy()
            bias = m.bias.detach().cpu().double().numpy() if m.bias is not None else np.zeros(m.out_features)
            folded.weight.data = torch.as_tensor(weight * pending[0][None, :], dtype=torch.float32)
            folded.bias.data = torch.as_tensor(bias + weight @ pending[1], dtype=torch.float32)
            m, pending = folded, None
        out.append(m)
    return out


def extract_actor(model: Any) -> ActorGraph:
    """The deterministic actor of an SB3 SAC, TD3, DDPG, TQC, CrossQ (batch renormalisation folded), or
    continuous-action PPO/A2C model (its Gaussian's mean, clipped to the action bounds as SB3's ``predict``
    does), sparse or dense; the layers of a policy trained with ``structure="N:M"`` that follow it are marked
    for the N:M layout, and observation features the first layer no longer reads are dropped
    (:func:`drop_unused_inputs`). DQN and discrete-action policies (an argmax) are refused."""
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.torch_layers import FlattenExtractor
    from stable_baselines3.td3.policies import TD3Policy

    policy = getattr(model, "policy", model)
    space = policy.action_space
    if not isinstance(space, spaces.Box):
        raise ExportError(f"only continuous-action policies can be exported (an argmax over {space} is not supported "
                          f"yet), got {type(policy).__name__}")
    actor = getattr(policy, "actor", None)
    extractor = actor.features_extractor if actor is not None else policy.pi_features_extractor
    if not isinstance(extractor, FlattenExtractor):
        raise ExportError(
            f"unsupported policy: features extractor {type(extractor).__name__} (only FlattenExtractor, "
            "i.e. MlpPolicy-style vector observations, can be exported)"
        )
    if isinstance(policy, ActorCriticPolicy):
        if getattr(policy, "use_sde", False):
            raise ExportError("unsupported policy: PPO/A2C with gSDE (use_sde=True)")
        if getattr(policy, "squash_output", False):
            raise ExportError("unsupported policy: PPO/A2C with squash_output=True")
        layers = _sequential_layers([*policy.mlp_extractor.policy_net, policy.action_net], "PPO/A2C policy network")
        # SB3 clips the mean to the bounds; in the graph's [-1, 1] units: rescale the last layer, then clip
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        last = layers[-1]
        factor = 2.0 / (high - low)
        last.weight = (last.weight.astype(np.float64) * factor[:, None]).astype(np.float32)
        last.bias = ((last.bias.astype(np.float64) - low) * factor - 1.0).astype(np.float32)
        squash, algo = "clip", "ppo"
    elif isinstance(policy, TD3Policy):
        layers = _sequential_layers(list(actor.mu), "TD3 actor")
        squash, algo = "none", "td3"
    elif actor is not None and hasattr(actor, "latent_pi"):  # SAC, TQC, CrossQ
        if getattr(actor, "use_sde", False):
            raise ExportError("unsupported policy: SAC with gSDE (use_sde=True)")
        modules = _fold_batch_renorm([*actor.latent_pi, actor.mu], "SAC actor")
        layers = _sequential_layers(modules, "SAC actor")
        squash, algo = "tanh", "sac"
    else:
        raise ExportError(f"only SB3 SAC, TD3, DDPG, TQC, CrossQ, PPO and A2C policies can be exported, "
                          f"got {type(policy).__name__}")
    structure = getattr(getattr(policy, "sparse_config", None), "structure", "unstructured")
    if structure != "unstructured":
        from sparse_rl.sparse.structure import parse_structure

        nm = parse_structure(structure)
        for layer in layers:
            layer.group = nm[1] if nm else None
    graph = ActorGraph(layers, squash, np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32),
                       algo)
    return drop_unused_inputs(graph)


def drop_unused_inputs(graph: ActorGraph) -> ActorGraph:
    """``graph`` reading only the observation features its first layer still has a connection from (an actor
    whose sparse input layer left some features, e.g. noise features, without any): fewer inputs, fewer
    sensors on a device. Unchanged when every feature is read."""
    first = graph.layers[0]
    used = np.flatnonzero(np.any(first.weight != 0, axis=0))
    if graph.input_index is not None or len(used) == first.shape[1] or len(used) == 0:
        return graph
    layer = Layer(first.weight[:, used].copy(), first.bias, first.activation, first.group)
    return ActorGraph([layer, *graph.layers[1:]], graph.squash, graph.action_low, graph.action_high, graph.algo,
                      input_index=used.astype(np.int64), env_obs_dim_=first.shape[1])


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (each < 2**bits, bits <= 8) as a little-endian bit stream, plus one spare byte (so a
    16-bit read at the last offset stays inside the array)."""
    stream = ((values.astype(np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    packed = np.packbits(stream, bitorder="little")
    return np.concatenate([packed, np.zeros(1, dtype=np.uint8)])


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: ``scale_r = max|w_r| / 127`` (rounded to float16, how it is stored),
    ``q = round(w / scale_r)`` clipped to [-127, 127]. Absent weights stay exactly 0."""
    amax = np.abs(weight).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float16).astype(np.float32)
    q = np.clip(np.round(weight / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def int8_bias(bias: np.ndarray) -> np.ndarray:
    """Biases of int8 exports are stored as float16 (they are 4 KB of a 256-wide float32 net)."""
    return bias.astype(np.float16).astype(np.float32)
