"""Numpy-only runtime for the compact sparse policy file (``--format sparse``); never imports torch.

File format (``.npz``, loaded with ``allow_pickle=False``): a ``meta`` member holding UTF-8 JSON, and
per layer ``i``: ``l{i}_indptr`` (row pointers), ``l{i}_indices`` (column of each nonzero), each of the
smallest unsigned type that fits (uint8/uint16/uint32), ``l{i}_values`` (float32, or int8 with
one scale per output row: ``w = q * scale``), and ``l{i}_bias`` (float32); int8 files hold instead
``l{i}_scale_bias``, float16 of shape ``(2, out)``: row scales, then biases. A ``"dtype": "mixed"`` file
(version 2) names each layer's own ``dtype``: int8 layers, and a float32 input layer.

A layer whose meta says ``"layout": "nm"`` (with ``n`` and ``m``; a policy trained with an N:M
structure) holds instead of the row pointers and indices ``n`` value slots for every group of ``m``
consecutive inputs of each row (``l{i}_values``, ``out * ceil(in / m) * n``, row-major, unused slots 0) and
``l{i}_offsets``: each slot's position inside its group, ``ceil(log2 m)`` bits per slot as a
little-endian bit stream (uint8, one spare byte at the end). Input column = group * m + offset.
``meta`` holds the format name and version, dims, per-layer activations, the output squashing and the
action bounds.

Version 2 adds two things. A layer whose meta says ``"kind": "conv"`` is a convolution without padding:
its rows are output channels and its columns the kernel taps ``(in_channel, ky, kx)`` in that order; meta
gives ``in_shape`` ``[channels, height, width]``, ``layout`` (``chw`` or ``hwc``: how that input lies in the
flat array), ``kernel`` and ``stride``; it writes ``out * out_height * out_width`` values, channels first.
``"squash": "argmax"`` marks a discrete policy: the action is the index of the last layer's largest output
(DQN's Q-values, PPO's logits), and there are no action bounds. A policy trained under VecNormalize holds
``obs_mean`` and ``obs_std`` (float32, one per input read) and meta ``obs_clip``: its first layer reads
``clip((obs - obs_mean) / obs_std, -obs_clip, obs_clip)``. A policy of dict observations lists in meta
``obs_keys`` each part's ``[key, size]`` in the order the flat input concatenates them.

    from sparse_rl.export.runtime import SparsePolicy
    policy = SparsePolicy.load("cheetah.npz")
    action = policy.act(obs)        # raw observation -> action within the env's bounds
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "sparse_rl.policy"
#: version 1: linear layers and continuous actions; version 2 adds convolutions and discrete (argmax) actions,
#: and is written only where a policy has them (so files version 1 can express are still written as version 1)
FORMAT_VERSION = 2
FORMAT_VERSIONS = (1, 2)
ACTIVATIONS = ("relu", "tanh", "identity")
SQUASHES = ("tanh", "clip", "none", "argmax")
#: how a convolution's input lies in the flat array it reads: channels first (SB3's image layout) or last
#: (MinAtar's observations, which the MinAtar network permutes itself)
CONV_LAYOUTS = ("chw", "hwc")


#: how each ``quantize`` value names the weights it stores, for messages
WEIGHT_NAMES = {"none": "float32", "int8": "int8", "mixed": "int8 (float32 input layer)"}


def concatenate_parts(obs: dict, keys: list, dtype: type = np.float32) -> np.ndarray:
    """A dict observation (or a batch of them) as one flat input: the parts named by ``keys`` (``[key, size]``
    pairs, or keys), each flattened, concatenated in that order."""
    parts = [np.asarray(obs[k[0] if isinstance(k, (list, tuple)) else k], dtype=dtype) for k in keys]
    batch = parts[0].shape[:-1] if parts and parts[0].ndim > 1 else ()
    return np.concatenate([part.reshape(*batch, -1) for part in parts], axis=-1)


def layer_quantize(quantize: str, i: int) -> str:
    """How layer ``i`` stores its weights under an export's ``quantize``: ``int8`` or ``none`` (float32).
    ``none``: float32 everywhere; ``int8``: int8 everywhere; ``mixed``: int8 but the input layer, kept float32
    (where large raw observations meet the first layer, its int8 rounding costs most: docs/embedded.md)."""
    return "none" if quantize == "none" or (quantize == "mixed" and i == 0) else "int8"


def conv_output_hw(in_shape: tuple[int, int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Output height and width of a convolution without padding."""
    _, h, w = in_shape
    return (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1


def _element_strides(in_shape: tuple[int, int, int], layout: str) -> tuple[int, int, int]:
    c, h, w = in_shape
    return (h * w, w, 1) if layout == "chw" else (1, w * c, c)


def conv_taps(in_shape: tuple[int, int, int], layout: str, kernel: tuple[int, int]) -> np.ndarray:
    """The flat-input offset of every kernel tap ``(in_channel, ky, kx)``, in the order of the weight's columns
    (``weight.reshape(out_channels, -1)``), relative to the top-left of the window."""
    sc, sy, sx = _element_strides(in_shape, layout)
    ic, ky, kx = np.meshgrid(np.arange(in_shape[0]), np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
    return (ic * sc + ky * sy + kx * sx).reshape(-1).astype(np.int64)


def conv_bases(in_shape: tuple[int, int, int], layout: str, kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """The flat-input offset of every output position's window (row-major over the output)."""
    _, sy, sx = _element_strides(in_shape, layout)
    oh, ow = conv_output_hw(in_shape, kernel, stride)
    oy, ox = np.meshgrid(np.arange(oh), np.arange(ow), indexing="ij")
    return (oy * stride[0] * sy + ox * stride[1] * sx).reshape(-1).astype(np.int64)


def conv_apply(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, in_shape: tuple[int, int, int], layout: str,
               kernel: tuple[int, int], stride: tuple[int, int]) -> np.ndarray:
    """A convolution without padding of a batch of flat inputs ``(batch, c*h*w)`` (``layout``) with ``weight``
    ``(out_channels, c*kh*kw)``: ``(batch, out_channels*oh*ow)``, channels first, in ``x``'s dtype."""
    taps, bases = conv_taps(in_shape, layout, kernel), conv_bases(in_shape, layout, kernel, stride)
    w = weight.astype(x.dtype)
    out = np.empty((len(x), w.shape[0], len(bases)), dtype=x.dtype)
    chunk = max(1, (1 << 23) // max(len(bases) * len(taps), 1))
    for s in range(0, len(x), chunk):
        cols = x[s:s + chunk][:, bases[:, None] + taps[None, :]]  # (batch, positions, taps)
        out[s:s + chunk] = (cols @ w.T).transpose(0, 2, 1)
    out += bias.astype(x.dtype)[None, :, None]
    return out.reshape(len(x), -1)


def index_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer type that holds ``max_value``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"index {max_value} does not fit in uint32")


def offset_bits(m: int) -> int:
    """Bits of one in-group offset of an N:M layer: ``ceil(log2(m))``."""
    return max((m - 1).bit_length(), 1)


def _activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(x, np.float32(0))
    if name == "tanh":
        return np.tanh(x)
    return x


class PolicyFileError(ValueError):
    """A policy file is missing a member or holds a malformed one; the message names it and its layer."""


class _Checker:
    """Checks of a loaded file's members, each failing with a message that names the member."""

    def __init__(self, path: str, data: dict[str, np.ndarray]):
        self.path, self.data = path, data

    def fail(self, message: str) -> PolicyFileError:
        return PolicyFileError(f"{self.path!r}: {message}")

    def array(self, key: str, kind: str, shape: tuple[int, ...], where: str) -> np.ndarray:
        kinds = {"u": "unsigned integer", "i": "signed integer", "f": "floating point"}
        if key not in self.data:
            raise self.fail(f"{where}: member {key} is missing")
        value = self.data[key]
        if value.dtype.kind != kind:
            raise self.fail(f"{where}: {key} has dtype {value.dtype}, expected {kinds[kind]}")
        if value.shape != shape:
            raise self.fail(f"{where}: {key} has shape {value.shape}, expected {shape}")
        if kind == "f" and not np.all(np.isfinite(value)):
            raise self.fail(f"{where}: {key} holds NaN or infinite values")
        return value

    def positive_int(self, mapping: dict, key: str, where: str) -> int:
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise self.fail(f"{where}: {key} must be a positive int, got {value!r}")
        return value

    def choice(self, mapping: dict, key: str, allowed: tuple[str, ...], where: str = "meta") -> str:
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if value not in allowed:
            raise self.fail(f"{where}: {key} must be one of {', '.join(allowed)}, got {value!r}")
        return value

    def meta_list(self, meta: dict, key: str) -> list:
        value = meta.get(key)
        if not isinstance(value, list) or not value:
            raise self.fail(f"meta: {key} must be a non-empty list, got {value!r}")
        return value


def _nm_layer(
    check: _Checker, layer: dict, i: int, out: int, inp: int, quantized: bool, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The dense weight and the bias of an N:M layer (see the module docstring), checked."""
    n, m = check.positive_int(layer, "n", where), check.positive_int(layer, "m", where)
    if not (2 <= m <= 256 and n < m):
        raise check.fail(f"{where}: n={n}, m={m}: need 1 <= n < m <= 256")
    bits = offset_bits(m)
    groups = -(-inp // m)
    slots = out * groups * n
    values = check.array(f"l{i}_values", "i" if quantized else "f", (slots,), where).astype(np.float32)
    packed = check.array(f"l{i}_offsets", "u", (-(-slots * bits // 8) + 1,), where)
    stream = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: slots * bits].reshape(slots, bits)
    offsets = (stream.astype(np.int64) << np.arange(bits)).sum(axis=1)
    columns = (np.arange(slots) // n) % groups * m + offsets
    if np.any(offsets >= m) or np.any(columns >= inp):
        raise check.fail(f"{where}: l{i}_offsets points beyond its group or its {inp} inputs")
    rows = np.arange(slots) // (groups * n)
    values, bias = _scaled_values_and_bias(check, i, out, rows, values, quantized, where)
    w = np.zeros((out, inp), dtype=np.float32)
    np.add.at(w, (rows, columns), values)  # padding slots add 0
    return w, bias


def _scaled_values_and_bias(
    check: _Checker, i: int, out: int, rows: np.ndarray, values: np.ndarray, quantized: bool, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Float weights (int8 ones times their row's scale) and the layer's bias, checked."""
    if quantized:
        scale, bias = check.array(f"l{i}_scale_bias", "f", (2, out), where).astype(np.float32)
        return values * scale[rows], bias
    return values, check.array(f"l{i}_bias", "f", (out,), where).astype(np.float32)


def _conv_meta(check: _Checker, layer: dict, fan_in: int, where: str) -> tuple:
    """A convolution's ``(in_shape, layout, kernel, stride)`` from its meta, checked against its fan-in."""
    check.choice(layer, "kind", ("linear", "conv"), where)
    ints = {}
    for key, n in (("in_shape", 3), ("kernel", 2), ("stride", 2)):
        value = layer.get(key)
        if not (isinstance(value, list) and len(value) == n and all(isinstance(v, int) and v > 0 for v in value)):
            raise check.fail(f"{where}: {key} must be a list of {n} positive ints, got {value!r}")
        ints[key] = tuple(value)
    layout = check.choice(layer, "layout", CONV_LAYOUTS, where)
    (c, h, w), (kh, kw) = ints["in_shape"], ints["kernel"]
    if kh > h or kw > w or c * kh * kw != fan_in:
        raise check.fail(f"{where}: a {kh}x{kw} kernel on a {c}x{h}x{w} input does not have {fan_in} taps or "
                         "does not fit")
    return ints["in_shape"], layout, ints["kernel"], ints["stride"]


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
    #: per layer, a convolution's ``(in_shape, layout, kernel, stride)`` (``None``: a linear layer)
    convs: list | None = None
    #: ``(mean, std, clip)`` of a policy trained under VecNormalize (``None``: it reads the raw observation)
    obs_norm: tuple[np.ndarray, np.ndarray, float] | None = None

    @classmethod
    def load(cls, path: str | Path) -> SparsePolicy:
        """Load and validate a policy file.

        :raises PolicyFileError: naming the member (and layer) that is missing or malformed: wrong dtype
            or shape, row pointers not starting at 0 or decreasing, column indices out of range, lengths
            that disagree, layers whose sizes do not chain, bounds of the wrong length.
        """
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError) as err:
            raise PolicyFileError(f"{str(path)!r} is not a readable .npz file: {err}") from None
        if "meta" not in data:
            raise PolicyFileError(f"{str(path)!r} is not a sparse_rl policy file (no meta)")
        try:
            meta = json.loads(bytes(data["meta"]).decode())
        except (UnicodeDecodeError, ValueError) as err:
            raise PolicyFileError(f"{str(path)!r}: meta is not JSON: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or meta.get("version") not in FORMAT_VERSIONS:
            got = meta.get("format") if isinstance(meta, dict) else meta
            version = meta.get("version") if isinstance(meta, dict) else None
            raise PolicyFileError(f"{str(path)!r}: unsupported format {got!r} v{version!r}")
        check = _Checker(str(path), data)
        layers = check.meta_list(meta, "layers")
        dtype = check.choice(meta, "dtype", ("float32", "int8", "mixed"))
        weights, biases, activations, convs = [], [], [], []
        width = check.positive_int(meta, "obs_dim", "meta")
        for i, layer in enumerate(layers):
            where = f"layer {i}"
            # a "mixed" file names each layer's weight type (int8, or float32 for the input layer)
            quantized = (check.choice(layer, "dtype", ("float32", "int8"), where) if dtype == "mixed" else dtype) == "int8"
            out, inp = check.positive_int(layer, "out", where), check.positive_int(layer, "in", where)
            conv = _conv_meta(check, layer, inp, where) if layer.get("kind", "linear") != "linear" else None
            reads = int(np.prod(conv[0])) if conv else inp
            if reads != width:
                raise PolicyFileError(f"{str(path)!r}: {where} takes {reads} inputs but receives {width}")
            activations.append(check.choice(layer, "activation", ACTIVATIONS, where))
            convs.append(conv)
            writes = out * int(np.prod(conv_output_hw(conv[0], conv[2], conv[3]))) if conv else out
            if layer.get("layout", "csr") == "nm":
                w, bias = _nm_layer(check, layer, i, out, inp, quantized, where)
                weights.append(w)
                biases.append(bias)
                width = writes
                continue
            if "layout" in layer and not conv:
                check.choice(layer, "layout", ("csr", "nm"), where)
            indptr = check.array(f"l{i}_indptr", "u", (out + 1,), where)
            nnz = int(indptr[-1]) if len(indptr) else 0
            if indptr[0] != 0 or np.any(np.diff(indptr.astype(np.int64)) < 0):
                raise PolicyFileError(f"{str(path)!r}: {where}: l{i}_indptr must start at 0 and never decrease")
            indices = check.array(f"l{i}_indices", "u", (nnz,), where)
            if nnz and int(indices.max()) >= inp:
                column = int(indices.max())
                raise PolicyFileError(f"{str(path)!r}: {where}: l{i}_indices holds column {column}, beyond its {inp} inputs")
            values = check.array(f"l{i}_values", "i" if quantized else "f", (nnz,), where)
            rows = np.repeat(np.arange(out), np.diff(indptr.astype(np.int64)))
            values, bias = _scaled_values_and_bias(check, i, out, rows, values.astype(np.float32), quantized, where)
            w = np.zeros((out, inp), dtype=np.float32)
            w[rows, indices.astype(np.int64)] = values
            weights.append(w)
            biases.append(bias)
            width = writes
        act_dim = check.positive_int(meta, "act_dim", "meta")
        if width != act_dim:
            raise PolicyFileError(f"{str(path)!r}: the last layer has {width} outputs but act_dim is {act_dim}")
        squash = check.choice(meta, "squash", SQUASHES)
        bounds = [np.zeros(0, np.float32), np.zeros(0, np.float32)] if squash == "argmax" else []
        for key in ("action_low", "action_high") if squash != "argmax" else ():
            bound = np.asarray(meta.get(key), dtype=np.float32) if isinstance(meta.get(key), list) else None
            if bound is None or bound.shape != (act_dim,):
                raise PolicyFileError(f"{str(path)!r}: meta {key} must be a list of {act_dim} numbers, got {meta.get(key)!r}")
            bounds.append(bound)
        if "input_index" in meta:  # the features of the env's observation the policy reads
            env_dim, index = meta.get("env_obs_dim"), meta.get("input_index")
            n_in = weights[0].shape[1] if weights else 0
            ok = isinstance(env_dim, int) and isinstance(index, list) and len(index) == n_in
            ok = ok and all(isinstance(i, int) for i in index) and all(a < b for a, b in itertools.pairwise(index))
            ok = ok and (not index or (index[0] >= 0 and index[-1] < env_dim))
            if not ok:
                raise PolicyFileError(f"{str(path)!r}: meta input_index must list {n_in} increasing positions below "
                                      f"env_obs_dim, got {index!r} (env_obs_dim {env_dim!r})")
        obs_norm = None
        if "obs_clip" in meta:
            n_in = int(meta["obs_dim"])
            clip = meta["obs_clip"]
            if not isinstance(clip, (int, float)) or isinstance(clip, bool) or not clip > 0:
                raise check.fail(f"meta: obs_clip must be a positive number, got {clip!r}")
            std = check.array("obs_std", "f", (n_in,), "observation normalisation")
            if not np.all(std > 0):
                raise check.fail("observation normalisation: obs_std must be positive")
            obs_norm = (check.array("obs_mean", "f", (n_in,), "observation normalisation"), std, float(clip))
        return cls(weights, biases, activations, squash, bounds[0], bounds[1], meta, convs, obs_norm)

    def act(self, obs: np.ndarray | dict) -> np.ndarray:
        """Actions for one observation or a batch: the env's whole observation ``(env_obs_dim,)`` (an image
        flattened), or, where the export dropped unused inputs, the features it reads ``(obs_dim,)``
        (``meta["input_index"]``); float32 actions, or int64 action indices for a discrete policy."""
        if isinstance(obs, dict):  # a dict observation: its parts concatenated in the order meta obs_keys gives
            obs = concatenate_parts(obs, self.meta.get("obs_keys", []))
        x = np.asarray(obs, dtype=np.float32)
        index = self.meta.get("input_index")
        if index is not None and x.shape[-1] == self.meta["env_obs_dim"]:
            x = x[..., np.asarray(index)]
        if self.obs_norm is not None:
            mean, std, clip = self.obs_norm
            x = np.clip((x - mean) / std, np.float32(-clip), np.float32(clip))
        batch_shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        for w, b, act, conv in zip(self.weights, self.biases, self.activations, self.convs or itertools.repeat(None)):
            x = _activate(conv_apply(x, w, b, *conv) if conv else x @ w.T + b, act)
        x = x.reshape(*batch_shape, x.shape[-1])
        if self.squash == "argmax":
            return np.argmax(x, axis=-1)
        if self.squash == "tanh":
            x = np.tanh(x)
        elif self.squash == "clip":
            x = np.clip(x, np.float32(-1), np.float32(1))
        return self.action_low + (x + np.float32(1)) * (np.float32(0.5) * (self.action_high - self.action_low))
