"""The deterministic action of an SB3 model as a plain graph of dense numpy layers.

Every export format is written from this one :class:`ActorGraph`: the policy's observation (flat) ->
convolutions and linear layers with activations -> either optional tanh squashing and rescaling to the env's
action bounds (SB3's ``unscale_action``; continuous actions) or the argmax of the last layer (discrete actions:
DQN's Q-values, PPO/A2C's logits). Policies this cannot express (other feature extractors, gSDE, other
activations, padded convolutions) are refused with :class:`ExportError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse_rl.export.runtime import (
    concatenate_parts,
    conv_apply,
    conv_bases,
    conv_output_hw,
    conv_taps,
    index_dtype,
)


class ExportError(ValueError):
    """The model cannot be exported; the message says why."""


_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh"}


@dataclass(frozen=True)
class Conv:
    """Where a convolution (no padding, no dilation, one group) reads its input: the input's
    ``(channels, height, width)``, its layout in the flat array (``chw`` or ``hwc``), kernel and stride."""

    in_shape: tuple[int, int, int]
    layout: str
    kernel: tuple[int, int]
    stride: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        return conv_output_hw(self.in_shape, self.kernel, self.stride)

    @property
    def positions(self) -> int:
        oh, ow = self.out_hw
        return oh * ow

    def taps(self) -> np.ndarray:
        """Flat-input offset of each weight column, relative to the window (see :func:`runtime.conv_taps`)."""
        return conv_taps(self.in_shape, self.layout, self.kernel)

    def bases(self) -> np.ndarray:
        return conv_bases(self.in_shape, self.layout, self.kernel, self.stride)


@dataclass
class Layer:
    weight: np.ndarray  # (out, in) float32, zeros at absent connections; a convolution's (out_channels, fan-in)
    bias: np.ndarray  # (out,) float32
    activation: str  # relu | tanh | identity
    group: int | None = None  # M of an N:M structure the layer follows (None: unstructured, stored as CSR)
    conv: Conv | None = None  # set for a convolution: its weight's rows are output channels, columns kernel taps

    @property
    def n_in(self) -> int:
        """Values the layer reads (a convolution: its whole input)."""
        return int(np.prod(self.conv.in_shape)) if self.conv is not None else self.shape[1]

    @property
    def n_out(self) -> int:
        """Values the layer writes (a convolution: channels x positions, channels first)."""
        return self.shape[0] * (self.conv.positions if self.conv is not None else 1)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The layer and its activation on a batch ``(batch, n_in)``, in ``x``'s dtype."""
        if self.conv is not None:
            c = self.conv
            x = conv_apply(x, self.weight, self.bias, c.in_shape, c.layout, c.kernel, c.stride)
        else:
            x = x @ self.weight.T.astype(x.dtype) + self.bias.astype(x.dtype)
        return np.maximum(x, 0) if self.activation == "relu" else np.tanh(x) if self.activation == "tanh" else x

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
    #: "tanh" (SAC), "none" (TD3 ends in a Tanh layer), "clip" (PPO/A2C: the mean, clipped to the bounds) or
    #: "argmax" (discrete actions: the index of the last layer's largest output; the bounds are then empty)
    squash: str
    action_low: np.ndarray
    action_high: np.ndarray
    algo: str
    #: the positions of the env's observation the first layer reads, increasing (None: all of them); set by
    #: :func:`drop_unused_inputs` when some input has no connection left
    input_index: np.ndarray | None = None
    env_obs_dim_: int | None = None
    #: ``(mean, std, clip)`` over the inputs the policy reads: a run trained with ``normalize`` (VecNormalize)
    #: sees ``clip((obs - mean) / std, -clip, clip)``; None: the raw observation
    obs_norm: tuple[np.ndarray, np.ndarray, float] | None = None
    #: dict observations: ``(key, size)`` of each part, in the order the flat input concatenates them
    obs_keys: list[tuple[str, int]] | None = None

    def flatten(self, obs: Any) -> np.ndarray:
        """A dict observation (or batch) as the flat input, its parts concatenated in ``obs_keys`` order; other
        observations pass through."""
        return concatenate_parts(obs, self.obs_keys or [], np.float64) if isinstance(obs, dict) else obs

    @property
    def obs_dim(self) -> int:
        """The inputs the exported policy takes: the observation features it reads."""
        return self.layers[0].n_in

    @property
    def discrete(self) -> bool:
        """Whether the action is an index (the argmax of the last layer) rather than a vector."""
        return self.squash == "argmax"

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
        """Outputs of the last layer: the action's size, or the number of discrete actions."""
        return self.layers[-1].n_out

    def scores(self, obs: np.ndarray) -> np.ndarray:
        """The last layer's outputs in float64 (before squashing, rescaling or the argmax), ``(batch, act_dim)``."""
        x = np.asarray(self.select_inputs(self.flatten(obs)), dtype=np.float64)
        if self.obs_norm is not None:
            mean, std, clip = self.obs_norm
            x = np.clip((x - mean) / std, -clip, clip)
        squeeze = x.ndim == 1
        x = np.atleast_2d(x).reshape(-1, x.shape[-1])
        for layer in self.layers:
            x = layer.apply(x)
        return x[0] if squeeze else x

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """Reference forward pass in float64, from an env observation (or the reduced one); discrete policies
        give action indices (int64)."""
        x = self.scores(obs)
        if self.squash == "argmax":
            return np.argmax(x, axis=-1)
        if self.squash == "tanh":
            x = np.tanh(x)
        elif self.squash == "clip":
            x = np.clip(x, -1.0, 1.0)
        return self.action_low + (x + 1) * 0.5 * (self.action_high - self.action_low)

    def stats(self) -> dict[str, Any]:
        nnz = sum(layer.nnz for layer in self.layers)
        dense = sum(layer.weight.size for layer in self.layers)
        positions = [layer.conv.positions if layer.conv is not None else 1 for layer in self.layers]
        macs = sum(layer.nnz * p for layer, p in zip(self.layers, positions))
        dense_macs = sum(layer.weight.size * p for layer, p in zip(self.layers, positions))
        return {"nonzeros": nnz, "weights": dense, "density": nnz / dense, "macs": macs, "dense_macs": dense_macs}


def _sequential_layers(modules: list[nn.Module], what: str, in_shape: tuple[int, int, int] | None = None,
                       layout: str = "chw") -> list[Layer]:
    """The layers of ``modules`` (linear layers, convolutions, activations, flattening). ``in_shape``: the
    ``(channels, height, width)`` of the input where it starts with convolutions, lying in the flat input as
    ``layout`` says (``None``: a flat input)."""
    from sparse_rl.sparse.layers import MaskedConv2d

    layers: list[Layer] = []
    shape = in_shape  # the current tensor's (channels, height, width); None once it is flat
    for m in modules:
        if isinstance(m, (nn.Conv2d, MaskedConv2d)):
            if shape is None:
                raise ExportError(f"{what}: a convolution reads a flattened input")
            if tuple(m.padding) not in ((0, 0),) or tuple(m.dilation) != (1, 1) or m.groups != 1:
                raise ExportError(f"{what}: only convolutions without padding or dilation, in one group, can be "
                                  f"exported, got {m}")
            if m.in_channels != shape[0]:
                raise ExportError(f"{what}: a convolution takes {m.in_channels} channels but receives {shape[0]}")
            conv = Conv(tuple(int(v) for v in shape), layout, tuple(m.kernel_size), tuple(m.stride))  # type: ignore[arg-type]
            weight = m.weight.detach().cpu().numpy().astype(np.float32).reshape(m.out_channels, -1)
            bias = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros(m.out_channels)
            layers.append(Layer(weight, bias.astype(np.float32), "identity", conv=conv))
            shape, layout = (m.out_channels, *conv.out_hw), "chw"
        elif isinstance(m, nn.Linear):
            if shape is not None:
                raise ExportError(f"{what}: a linear layer reads a {len(shape)}-D input (no nn.Flatten before it)")
            bias = m.bias.detach().cpu().numpy() if m.bias is not None else np.zeros(m.out_features)
            layers.append(Layer(m.weight.detach().cpu().numpy().astype(np.float32), bias.astype(np.float32), "identity"))
        elif type(m) in _ACTIVATIONS:
            if not layers or layers[-1].activation != "identity":
                raise ExportError(f"{what}: activation {type(m).__name__} does not follow a linear layer")
            layers[-1].activation = _ACTIVATIONS[type(m)]
        elif isinstance(m, nn.Flatten):
            shape = None
        elif not isinstance(m, nn.Identity):
            raise ExportError(
                f"{what}: unsupported module {type(m).__name__}; exportable policies are Linear layers and "
                f"convolutions with {', '.join(t.__name__ for t in _ACTIVATIONS)} activations"
            )
    return layers


def _extractor_modules(extractor: nn.Module, space: Any) -> tuple[list[nn.Module], tuple[int, int, int] | None, str]:
    """The modules of a features extractor, the ``(channels, height, width)`` of the observation where they
    start with convolutions, and how the observation lies (``chw``/``hwc``)."""
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor, NatureCNN

    from sparse_rl.agents.extractors import MinAtarCNN

    if isinstance(extractor, FlattenExtractor):
        return [], None, "chw"
    if isinstance(extractor, CombinedExtractor):  # dict observations: parts flattened and concatenated
        if all(isinstance(e, nn.Flatten) for e in extractor.extractors.values()):
            return [], None, "chw"
        raise ExportError("unsupported policy: a dict observation with an image part (only dicts of vectors)")
    shape = tuple(int(v) for v in space.shape)
    if isinstance(extractor, NatureCNN):
        return [*extractor.cnn, *extractor.linear], shape, "chw"  # type: ignore[return-value]
    if isinstance(extractor, MinAtarCNN):  # it permutes channels-last observations itself
        if extractor.channels_last:
            return list(extractor.cnn), (shape[2], shape[0], shape[1]), "hwc"
        return list(extractor.cnn), shape, "chw"  # type: ignore[return-value]
    raise ExportError(
        f"unsupported policy: features extractor {type(extractor).__name__} (only FlattenExtractor, i.e. "
        "MlpPolicy-style vector observations, NatureCNN and MinAtarCNN can be exported)"
    )


def _policy_layers(modules: list[nn.Module], extractor: nn.Module, policy: Any, what: str) -> list[Layer]:
    """The layers from the policy's observation to its output: the extractor's, then ``modules``; SB3's image
    normalisation (``obs / 255``) is folded into the first layer's weights."""
    from stable_baselines3.common.preprocessing import is_image_space

    head, in_shape, layout = _extractor_modules(extractor, policy.observation_space)
    layers = _sequential_layers([*head, *modules], what, in_shape, layout)
    if getattr(policy, "normalize_images", False) and is_image_space(policy.observation_space):
        first = layers[0]
        first.weight = (first.weight.astype(np.float64) / 255.0).astype(np.float32)
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


def extract_actor(model: Any, obs_norm: tuple[np.ndarray, np.ndarray, float] | None = None) -> ActorGraph:
    """The deterministic action of an SB3 model, sparse or dense: the actor of SAC, TD3, DDPG, TQC, CrossQ
    (batch renormalisation folded), the mean of continuous-action PPO/A2C (clipped to the action bounds as
    SB3's ``predict`` does), the argmax of DQN's Q-values or of discrete PPO/A2C's logits. Vector observations
    and the NatureCNN/MinAtarCNN convolutions are supported. The layers of a policy trained with
    ``structure="N:M"`` that follow it are marked for the N:M layout, and observation features the first
    linear layer no longer reads are dropped (:func:`drop_unused_inputs`). ``obs_norm``: ``(mean, std, clip)`` of
    a run trained under VecNormalize (:func:`sparse_rl.envs.normalize.obs_normalization`), applied first."""
    from gymnasium import spaces
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy
    from stable_baselines3.td3.policies import TD3Policy

    policy = getattr(model, "policy", model)
    space = policy.action_space
    if not isinstance(space, (spaces.Box, spaces.Discrete)):
        raise ExportError(f"only Box (continuous) and Discrete action spaces can be exported, got {space} "
                          f"({type(policy).__name__})")
    obs_space = policy.observation_space
    dict_of_vectors = isinstance(obs_space, spaces.Dict) and all(
        isinstance(s, spaces.Box) and len(s.shape) == 1 for s in obs_space.spaces.values())
    if not isinstance(obs_space, spaces.Box) and not dict_of_vectors:
        raise ExportError(f"only Box observations and dicts of vectors can be exported, got {obs_space} "
                          f"({type(policy).__name__})")
    discrete = isinstance(space, spaces.Discrete)
    actor = getattr(policy, "actor", None)
    if isinstance(policy, DQNPolicy):
        q_net = policy.q_net
        layers = _policy_layers(list(q_net.q_net), q_net.features_extractor, policy, "DQN Q-network")
        squash, algo = "argmax", "dqn"
    elif isinstance(policy, ActorCriticPolicy):
        if getattr(policy, "use_sde", False):
            raise ExportError("unsupported policy: PPO/A2C with gSDE (use_sde=True)")
        if getattr(policy, "squash_output", False):
            raise ExportError("unsupported policy: PPO/A2C with squash_output=True")
        layers = _policy_layers([*policy.mlp_extractor.policy_net, policy.action_net], policy.pi_features_extractor,
                                policy, "PPO/A2C policy network")
        if discrete:  # the most likely action: the largest logit
            squash, algo = "argmax", "ppo"
        else:  # SB3 clips the mean to the bounds; in the graph's [-1, 1] units: rescale the last layer, then clip
            low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
            last = layers[-1]
            factor = 2.0 / (high - low)
            last.weight = (last.weight.astype(np.float64) * factor[:, None]).astype(np.float32)
            last.bias = ((last.bias.astype(np.float64) - low) * factor - 1.0).astype(np.float32)
            squash, algo = "clip", "ppo"
    elif isinstance(policy, TD3Policy):
        layers = _policy_layers(list(actor.mu), actor.features_extractor, policy, "TD3 actor")
        squash, algo = "none", "td3"
    elif actor is not None and hasattr(actor, "latent_pi"):  # SAC, TQC, CrossQ
        if getattr(actor, "use_sde", False):
            raise ExportError("unsupported policy: SAC with gSDE (use_sde=True)")
        modules = _fold_batch_renorm([*actor.latent_pi, actor.mu], "SAC actor")
        layers = _policy_layers(modules, actor.features_extractor, policy, "SAC actor")
        squash, algo = "tanh", "sac"
    else:
        raise ExportError(f"only SB3 SAC, TD3, DDPG, TQC, CrossQ, PPO, A2C and DQN policies can be exported, "
                          f"got {type(policy).__name__}")
    if discrete and squash != "argmax":
        raise ExportError(f"{type(policy).__name__} with a discrete action space cannot be exported")
    structure = getattr(getattr(policy, "sparse_config", None), "structure", "unstructured")
    if structure != "unstructured":
        from sparse_rl.sparse.structure import parse_structure

        nm = parse_structure(structure)
        for layer in layers:
            layer.group = nm[1] if nm and layer.conv is None else None
    if discrete:
        bounds = (np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))
    else:
        bounds = (np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32))
    if obs_norm is not None:
        mean, std, clip = obs_norm
        size = layers[0].n_in
        if np.size(mean) != size or np.size(std) != size:
            raise ExportError(f"the observation statistics have {np.size(mean)} features, the policy reads {size}")
        obs_norm = (np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1), float(clip))
    keys = [(k, int(s.shape[0])) for k, s in obs_space.spaces.items()] if dict_of_vectors else None
    graph = ActorGraph(layers, squash, *bounds, algo, obs_norm=obs_norm, obs_keys=keys)
    return drop_unused_inputs(graph)


def drop_unused_inputs(graph: ActorGraph) -> ActorGraph:
    """``graph`` reading only the observation features its first layer still has a connection from (an actor
    whose sparse input layer left some features, e.g. noise features, without any): fewer inputs, fewer
    sensors on a device. Unchanged when every feature is read."""
    first = graph.layers[0]
    if first.conv is not None:  # a convolution reads every input through some window
        return graph
    used = np.flatnonzero(np.any(first.weight != 0, axis=0))
    if graph.input_index is not None or len(used) == first.shape[1] or len(used) == 0:
        return graph
    layer = Layer(first.weight[:, used].copy(), first.bias, first.activation, first.group)
    norm = graph.obs_norm
    if norm is not None:
        norm = (norm[0][used], norm[1][used], norm[2])
    return ActorGraph([layer, *graph.layers[1:]], graph.squash, graph.action_low, graph.action_high, graph.algo,
                      input_index=used.astype(np.int64), env_obs_dim_=first.shape[1], obs_norm=norm,
                      obs_keys=graph.obs_keys)


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
