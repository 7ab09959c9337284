"""Writers for the export formats: compact sparse ``.npz``, ONNX, and dependency-free C99.

All writers produce bytes/strings; :func:`sparse_rl.export.cli` places them atomically.
"""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np

from sparse_rl.export.graph import ActorGraph, ExportError, Layer, int8_bias, pack_bits, quantize_rows
from sparse_rl.export.runtime import FORMAT_NAME, FORMAT_VERSION, index_dtype, layer_quantize, offset_bits

QUANTIZE = ("none", "int8", "mixed")  # see runtime.layer_quantize



# ----------------------------------------------------------------------------- sparse file
def sparse_file_bytes(graph: ActorGraph, quantize: str = "none") -> bytes:
    """The compact ``.npz`` (see :mod:`sparse_rl.export.runtime` for the layout)."""
    _check_quantize(quantize)
    arrays: dict[str, np.ndarray] = {}
    layers_meta = []
    for i, layer in enumerate(graph.layers):
        lq = layer_quantize(quantize, i)
        out, inp = layer.shape
        entry: dict = {"in": inp, "out": out, "nnz": layer.nnz, "activation": layer.activation}
        if layer.conv is not None:  # rows: output channels; columns: kernel taps (see the runtime's docstring)
            c = layer.conv
            entry.update(kind="conv", in_shape=list(c.in_shape), layout=c.layout, kernel=list(c.kernel),
                         stride=list(c.stride))
        if quantize == "mixed":
            entry["dtype"] = "int8" if lq == "int8" else "float32"
        if layer.nm() is not None:  # N:M: n values per group of M, each with a log2(M)-bit offset
            values, offsets, n, m = layer.nm_arrays()
            arrays[f"l{i}_offsets"] = pack_bits(offsets, offset_bits(m))
            entry.update(layout="nm", n=n, m=m)
            if lq == "int8":
                q, scale = quantize_rows(layer.weight)
                arrays[f"l{i}_values"] = _quantized_slots(values, layer.weight, scale)
                arrays[f"l{i}_scale_bias"] = np.stack([scale, layer.bias]).astype(np.float16)
            else:
                arrays[f"l{i}_values"] = values
                arrays[f"l{i}_bias"] = layer.bias.astype(np.float32)
            layers_meta.append(entry)
            continue
        indptr, indices, values = layer.csr()
        arrays[f"l{i}_indptr"], arrays[f"l{i}_indices"] = indptr, indices
        if lq == "int8":
            q, scale = quantize_rows(layer.weight)
            rows, cols = np.nonzero(layer.weight)
            arrays[f"l{i}_values"] = q[rows, cols]
            arrays[f"l{i}_scale_bias"] = np.stack([scale, layer.bias]).astype(np.float16)
        else:
            arrays[f"l{i}_values"] = values
            arrays[f"l{i}_bias"] = layer.bias.astype(np.float32)
        layers_meta.append(entry)
    if graph.obs_norm is not None:  # VecNormalize's statistics over the inputs read: (x - mean) / std, clipped
        arrays["obs_mean"] = graph.obs_norm[0].astype(np.float32)
        arrays["obs_std"] = graph.obs_norm[1].astype(np.float32)
    needs_v2 = (quantize == "mixed" or graph.discrete or graph.obs_norm is not None
                or any(layer.conv is not None for layer in graph.layers))
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION if needs_v2 else 1,
        "algo": graph.algo,
        "obs_dim": graph.obs_dim,
        "act_dim": graph.act_dim,
        **({"env_obs_dim": graph.env_obs_dim, "input_index": graph.input_index.tolist()}
           if graph.input_index is not None else {}),
        "dtype": {"none": "float32"}.get(quantize, quantize),
        "squash": graph.squash,
        **({"obs_clip": graph.obs_norm[2]} if graph.obs_norm is not None else {}),
        **({"obs_keys": [[k, n] for k, n in graph.obs_keys]} if graph.obs_keys is not None else {}),
        **({} if graph.discrete else {"action_low": graph.action_low.tolist(), "action_high": graph.action_high.tolist()}),
        "layers": layers_meta,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _quantized_slots(values: np.ndarray, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The N:M value slots as int8 with ``weight``'s per-row scales (padding slots stay 0)."""
    out = weight.shape[0]
    per_row = values.reshape(out, -1)
    return np.clip(np.round(per_row / scale[:, None]), -127, 127).astype(np.int8).reshape(-1)


def layer_payload_bytes(layer: Layer, quantize: str = "none") -> int:
    """One layer's weights as stored: slots x value bytes + packed offsets (N:M), or nonzeros x (value +
    index bytes) + row pointers (CSR)."""
    value = 1 if quantize == "int8" else 4
    if layer.nm() is not None:
        values, offsets, _, m = layer.nm_arrays()
        return values.size * value + pack_bits(offsets, offset_bits(m)).nbytes
    indptr, indices, _ = layer.csr()
    return layer.nnz * (value + indices.itemsize) + indptr.nbytes


def sparse_payload_bytes(graph: ActorGraph, quantize: str = "none") -> int:
    """The layers' stored weights (:func:`layer_payload_bytes`): what a sparse file must stay close to."""
    return sum(layer_payload_bytes(layer, layer_quantize(quantize, i)) for i, layer in enumerate(graph.layers))


# ----------------------------------------------------------------------------------- ONNX
def onnx_bytes(graph: ActorGraph, opset: int = 17) -> bytes:
    """A single-file ONNX model ``obs (batch, env_obs_dim) float32 -> action (batch, act_dim)`` float32, or for
    a discrete policy ``-> action (batch,)`` int64 (the index): it takes the env's whole observation, flat (an
    image flattened in the layout the policy reads it), also where unused inputs were dropped (a Gather
    picks the used ones).

    Weights are stored as dense initializers (ONNX Runtime has no fast sparse GEMM on CPU).
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "obs"
    if graph.input_index is not None:  # the model takes the env's whole observation and reads its used features
        inits.append(numpy_helper.from_array(graph.input_index.astype(np.int64), "input_index"))
        nodes.append(helper.make_node("Gather", ["obs", "input_index"], ["obs_used"], axis=1))
        x = "obs_used"
    if graph.obs_norm is not None:  # VecNormalize: (x - mean) / std, clipped
        mean, std, clip = graph.obs_norm
        inits += [numpy_helper.from_array(mean.astype(np.float32), "obs_mean"),
                  numpy_helper.from_array(std.astype(np.float32), "obs_std"),
                  numpy_helper.from_array(np.array(-clip, np.float32), "obs_low"),
                  numpy_helper.from_array(np.array(clip, np.float32), "obs_high")]
        nodes += [helper.make_node("Sub", [x, "obs_mean"], ["obs_centred"]),
                  helper.make_node("Div", ["obs_centred", "obs_std"], ["obs_scaled"]),
                  helper.make_node("Clip", ["obs_scaled", "obs_low", "obs_high"], ["obs_normed"])]
        x = "obs_normed"
    for i, layer in enumerate(graph.layers):
        if layer.conv is not None:  # flat -> (batch, c, h, w) -> Conv -> flat, channels first
            c = layer.conv
            ch, h, w = c.in_shape
            nhwc = c.layout == "hwc"
            inits.append(numpy_helper.from_array(np.array([-1, *((h, w, ch) if nhwc else (ch, h, w))], np.int64),
                                                 f"shape{i}"))
            nodes.append(helper.make_node("Reshape", [x, f"shape{i}"], [f"img{i}"]))
            x = f"img{i}"
            if nhwc:
                nodes.append(helper.make_node("Transpose", [x], [f"nchw{i}"], perm=[0, 3, 1, 2]))
                x = f"nchw{i}"
            kernel = layer.weight.reshape(layer.shape[0], ch, *c.kernel)
            inits += [numpy_helper.from_array(kernel.copy(), f"W{i}"), numpy_helper.from_array(layer.bias, f"b{i}")]
            nodes.append(helper.make_node("Conv", [x, f"W{i}", f"b{i}"], [f"conv{i}"], kernel_shape=list(c.kernel),
                                          strides=list(c.stride)))
            nodes.append(helper.make_node("Flatten", [f"conv{i}"], [f"z{i}"], axis=1))
        else:
            inits += [numpy_helper.from_array(layer.weight.T.copy(), f"W{i}"), numpy_helper.from_array(layer.bias, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"]))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]))
        x = f"z{i}"
        if layer.activation != "identity":
            nodes.append(helper.make_node({"relu": "Relu", "tanh": "Tanh"}[layer.activation], [x], [f"a{i}"]))
            x = f"a{i}"
    if graph.discrete:
        nodes.append(helper.make_node("ArgMax", [x], ["action"], axis=1, keepdims=0))
        return _onnx_model(nodes, inits, graph, TensorProto.INT64, ["batch"], opset)
    if graph.squash == "tanh":
        nodes.append(helper.make_node("Tanh", [x], ["squashed"]))
        x = "squashed"
    elif graph.squash == "clip":
        inits += [numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"),
                  numpy_helper.from_array(np.array(1.0, np.float32), "plus_one")]
        nodes.append(helper.make_node("Clip", [x, "minus_one", "plus_one"], ["squashed"]))
        x = "squashed"
    half = (0.5 * (graph.action_high - graph.action_low)).astype(np.float32)
    inits += [
        numpy_helper.from_array(np.ones_like(half), "one"),
        numpy_helper.from_array(half, "half_range"),
        numpy_helper.from_array(graph.action_low.astype(np.float32), "low"),
    ]
    nodes += [
        helper.make_node("Add", [x, "one"], ["shifted"]),
        helper.make_node("Mul", ["shifted", "half_range"], ["scaled"]),
        helper.make_node("Add", ["scaled", "low"], ["action"]),
    ]
    return _onnx_model(nodes, inits, graph, TensorProto.FLOAT, ["batch", graph.act_dim], opset)


def _onnx_model(nodes: list, inits: list, graph: ActorGraph, action_type: int, action_shape: list, opset: int) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        nodes,
        "sparse_rl_actor",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", graph.env_obs_dim])],
        [helper.make_tensor_value_info("action", action_type, action_shape)],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="sparse_rl")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


# -------------------------------------------------------------------------------------- C
_C_INDEX = {1: "unsigned char", 2: "unsigned short", 4: "unsigned long"}


def _c_floats(values: np.ndarray) -> str:
    out = []
    for v in np.asarray(values, dtype=np.float32).ravel():
        s = f"{float(v):.9g}"
        if not any(c in s for c in ".en"):
            s += ".0"
        out.append(s + "f")
    return _wrap(out)


def _c_ints(values: np.ndarray) -> str:
    return _wrap([str(int(v)) for v in np.asarray(values).ravel()])


def _wrap(items: list[str], width: int = 100) -> str:
    if not items:
        return "0"  # C99 forbids empty arrays; a dummy entry is never read
    lines, line = [], ""
    for item in items:
        if len(line) + len(item) + 2 > width:
            lines.append(line.rstrip())
            line = ""
        line += item + ", "
    lines.append(line.rstrip().rstrip(","))
    return "\n    " + "\n    ".join(lines) + "\n"


def check_prefix(prefix: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", prefix):
        raise ExportError(f"C prefix {prefix!r} is not a C identifier")
    return prefix


def c_sources(
    graph: ActorGraph, prefix: str = "sparse_rl_policy", quantize: str = "none", dense: bool = False
) -> dict[str, str]:
    """``{"policy.h": ..., "policy.c": ...}``: C99, no malloc, only ``<math.h>``.

    Weights are ``static const`` CSR arrays (dense arrays with ``dense=True``, for comparison); the two
    scratch buffers are static and sized at export. ``quantize="int8"`` (``"mixed"``: all but the input layer)
    stores int8 weights with one
    float scale per output row and accumulates in float.
    """
    _check_quantize(quantize)
    prefix = check_prefix(prefix)
    up = prefix.upper()
    if graph.layers[-1].conv is not None:
        raise ExportError("a policy whose last layer is a convolution cannot be exported to C")
    scratch_layers = graph.layers if graph.discrete else graph.layers[:-1]  # an argmax reads the last layer's outputs
    width = max((layer.n_out for layer in scratch_layers), default=1)
    decl: list[str] = []
    body: list[str] = []
    if not graph.discrete:
        half = 0.5 * (graph.action_high - graph.action_low)
        decl.append(f"static const float action_low[{graph.act_dim}] = {{{_c_floats(graph.action_low)}}};")
        decl.append(f"static const float action_half_range[{graph.act_dim}] = {{{_c_floats(half)}}};")
    decl.append(f"static float scratch[2][{width}];")
    nm_loops: set[str] = set()  # the kinds of N:M loop written ("chunk", "stream"), for the variables they need
    convs = any(layer.conv is not None for layer in graph.layers)
    if graph.obs_norm is not None:  # VecNormalize's statistics: the layers read the normalised observation
        mean, std, clip = graph.obs_norm
        decl.append(f"\n/* observation normalisation (VecNormalize): (obs - mean) / std, clipped to +-{clip:g} */")
        decl.append(f"static const float obs_mean[{graph.obs_dim}] = {{{_c_floats(mean)}}};")
        decl.append(f"static const float obs_std[{graph.obs_dim}] = {{{_c_floats(std)}}};")
        decl.append(f"static float normed[{graph.obs_dim}];")
        c = f"{float(np.float32(clip))!r}f"
        body += ["    /* normalise the observation */",
                 f"    for (k = 0; k < {graph.obs_dim}; ++k) {{",
                 "        acc = (obs[k] - obs_mean[k]) / obs_std[k];",
                 f"        normed[k] = acc < -{c} ? -{c} : (acc > {c} ? {c} : acc);",
                 "    }"]
    for i, layer in enumerate(graph.layers):
        lq = layer_quantize(quantize, i)
        out, inp = layer.shape
        src = ("obs" if graph.obs_norm is None else "normed") if i == 0 else f"scratch[{(i - 1) % 2}]"
        last = i == len(graph.layers) - 1
        dst = "action" if last and not graph.discrete else f"scratch[{i % 2}]"
        conv = layer.conv
        what = "" if conv is None else (f"conv {conv.kernel[0]}x{conv.kernel[1]} stride {conv.stride[0]}x{conv.stride[1]} "
                                         f"on {'x'.join(map(str, conv.in_shape))} ({conv.layout}), ")
        decl.append(f"\n/* layer {i}: {layer.n_in} -> {layer.n_out}, {what}{layer.activation}, {layer.nnz} of {inp * out} "
                    "weights */")
        bias = int8_bias(layer.bias) if lq == "int8" else layer.bias
        decl.append(f"static const float l{i}_bias[{out}] = {{{_c_floats(bias)}}};")
        if lq == "int8":
            q, scale = quantize_rows(layer.weight)
            decl.append(f"static const float l{i}_scale[{out}] = {{{_c_floats(scale)}}};")
        pre = ""
        x = src if conv is None else "in"  # a convolution reads its window through ``in``
        if dense:
            w = q if lq == "int8" else layer.weight
            ctype = "signed char" if lq == "int8" else "float"
            decl.append(f"static const {ctype} l{i}_w[{inp * out}] = {{{(_c_ints if lq == 'int8' else _c_floats)(w)}}};")
            read = f"{x}[k]"
            if conv is not None:
                taps = conv.taps()
                decl.append(f"static const {_C_INDEX[index_dtype(int(taps.max())).itemsize]} l{i}_tap[{inp}] = "
                            f"{{{_c_ints(taps)}}};")
                read = f"in[l{i}_tap[k]]"
            term = f"l{i}_w[r * {inp} + k] * {read}"
            if lq == "int8":
                term = f"(float)l{i}_w[r * {inp} + k] * {read}"
            loop = f"for (k = 0; k < {inp}; ++k) acc += {term};"
        elif layer.nm() is not None:
            values, offsets, n, m = layer.nm_arrays()
            bits = offset_bits(m)
            groups = -(-inp // m)
            packed = pack_bits(offsets, bits)
            decl.append(f"/* N:M layout: {n} slots per group of {m} inputs, {bits}-bit offsets, little-endian bit stream */")
            decl.append(f"static const unsigned char l{i}_off[{packed.size}] = {{{_c_ints(packed)}}};")
            if lq == "int8":
                slots = _quantized_slots(values, layer.weight, quantize_rows(layer.weight)[1])
                decl.append(f"static const signed char l{i}_val[{slots.size}] = {{{_c_ints(slots)}}};")
            else:
                decl.append(f"static const float l{i}_val[{values.size}] = {{{_c_floats(values)}}};")
            pre, loop, kind = _nm_loop(i, src, n, m, groups, bits, lq == "int8")
            nm_loops.add(kind)
        else:
            indptr, indices, values = layer.csr()
            if conv is not None:  # a convolution's column indices become offsets into the input from its window
                indices = conv.taps()[indices.astype(np.int64)]
                indices = indices.astype(index_dtype(int(indices.max()) if len(indices) else 0))
            decl.append(f"static const {_C_INDEX[indptr.itemsize]} l{i}_ptr[{out + 1}] = {{{_c_ints(indptr)}}};")
            decl.append(
                f"static const {_C_INDEX[indices.itemsize]} l{i}_idx[{max(len(indices), 1)}] = {{{_c_ints(indices)}}};"
            )
            if lq == "int8":
                rows, cols = np.nonzero(layer.weight)
                decl.append(f"static const signed char l{i}_val[{max(len(values), 1)}] = {{{_c_ints(q[rows, cols])}}};")
                term = f"(float)l{i}_val[k] * {x}[l{i}_idx[k]]"
            else:
                decl.append(f"static const float l{i}_val[{max(len(values), 1)}] = {{{_c_floats(values)}}};")
                term = f"l{i}_val[k] * {x}[l{i}_idx[k]]"
            loop = f"for (k = (long)l{i}_ptr[r]; k < (long)l{i}_ptr[r + 1]; ++k) acc += {term};"
        if lq == "int8":
            init, finish = "0.0f", f"acc = acc * l{i}_scale[r] + l{i}_bias[r];"
        else:
            init, finish = f"l{i}_bias[r]", ""
        act = {"relu": "acc = acc > 0.0f ? acc : 0.0f;", "tanh": "acc = tanhf(acc);", "identity": ""}[layer.activation]
        if last and not graph.discrete:
            squash = {"tanh": "acc = tanhf(acc);", "clip": "acc = acc < -1.0f ? -1.0f : (acc > 1.0f ? 1.0f : acc);",
                      "none": ""}[graph.squash]
            store = f"{dst}[r] = action_low[r] + (acc + 1.0f) * action_half_range[r];"
        else:
            squash, store = "", f"{dst}[r] = acc;"
        body.append(f"    /* layer {i} */")
        if conv is not None:
            oh, ow = conv.out_hw
            c, _, w_ = conv.in_shape
            row, col = (w_ * c, c) if conv.layout == "hwc" else (w_, 1)  # elements between rows, columns
            store = f"{dst}[r * {oh * ow} + oy * {ow} + ox] = acc;"
            stmts = " ".join(s for s in (finish, act, store) if s)
            body += [f"    for (r = 0; r < {out}; ++r) for (oy = 0; oy < {oh}; ++oy) for (ox = 0; ox < {ow}; ++ox) {{",
                     f"        in = {src} + oy * {conv.stride[0] * row} + ox * {conv.stride[1] * col};",
                     f"        acc = {init};",
                     f"        {loop}",
                     f"        {stmts}",
                     "    }"]
            continue
        stmts = " ".join(s for s in (finish, act, squash, store) if s)
        if pre:
            body.append(f"    {pre}")
        body.append(f"    for (r = 0; r < {out}; ++r) {{")
        body.append(f"        acc = {init};")
        body.append(f"        {loop}")
        body.append(f"        {stmts}")
        body.append("    }")
    if graph.discrete:
        scores = f"scratch[{(len(graph.layers) - 1) % 2}]"
        body += ["    /* the action: the index of the largest output (the first one on a tie, as torch's argmax) */",
                 "    best = 0;",
                 f"    for (r = 1; r < {graph.act_dim}; ++r) if ({scores}[r] > {scores}[best]) best = r;",
                 "    return (int)best;"]
    layout = "dense" if dense else "sparse N:M and CSR" if nm_loops else "sparse CSR"
    kind = layout + {"int8": ", int8 weights", "mixed": ", int8 weights but the input layer's (float32)"}.get(
        quantize, ", float32")
    inputs = ""
    if graph.input_index is not None:
        index = ", ".join(str(int(i)) for i in graph.input_index)
        inputs = (f"\n/* The policy reads {graph.obs_dim} of the env's {graph.env_obs_dim} observation features: obs[j] is "
                  f"the env's\n   observation feature {up}_INPUT_INDEX[j]; the others had no connection left. */\n"
                  f"#define {up}_ENV_OBS_DIM {graph.env_obs_dim}\n#define {up}_INPUT_INDEX {{{index}}}\n")
    if graph.discrete:
        dims = f"#define {up}_OBS_DIM {graph.obs_dim}\n#define {up}_N_ACTIONS {graph.act_dim}"
        signature = f"int {prefix}_act(const float *obs)"
        doc = (f"/* Deterministic action for one raw observation (obs[{up}_OBS_DIM], unnormalised, as the policy receives "
               f"it{', images flattened' if convs else ''}):\n   the index of the action, 0 to {up}_N_ACTIONS - 1. "
               "Not reentrant (static scratch). */")
    else:
        dims = f"#define {up}_OBS_DIM {graph.obs_dim}\n#define {up}_ACT_DIM {graph.act_dim}"
        signature = f"void {prefix}_act(const float *obs, float *action)"
        doc = (f"/* Deterministic action for one raw observation (obs[{up}_OBS_DIM], unnormalised, as the env returns it);\n"
               f"   writes action[{up}_ACT_DIM], already within the env's action bounds. Not reentrant (static scratch). */")
    what = "Q-network" if graph.algo == "dqn" else "policy" if graph.discrete else "actor"
    if graph.obs_keys is not None:  # where each part of a dict observation sits in obs[]
        offsets, at = [], 0
        for key, size in graph.obs_keys:
            name = re.sub(r"[^A-Za-z0-9]", "_", key).upper()
            offsets.append(f"#define {up}_OBS_{name}_OFFSET {at} /* {key!r}: {size} values */")
            at += size
        inputs += ("\n/* A dict observation: its parts concatenated in this order (offsets in the env's observation). */\n"
                   + "\n".join(offsets) + "\n")
    header = f"""/* Generated by sparse_rl.export ({graph.algo.upper()} {what}, {kind}). Do not edit. */
#ifndef {up}_H
#define {up}_H

{dims}
{inputs}
#ifdef __cplusplus
extern "C" {{
#endif

{doc}
{signature};

#ifdef __cplusplus
}}
#endif

#endif /* {up}_H */
"""
    source = "\n".join(
        [
            f"/* Generated by sparse_rl.export ({kind}). Do not edit. */",
            '#include "policy.h"',
            "#include <math.h>",
            "",
            *decl,
            "",
            signature,
            "{",
            "    long r, k;",
            *(["    long g;", "    const unsigned char *p;"] if nm_loops else []),
            *(["    const float *in;"] if nm_loops or convs else []),
            *(["    long oy, ox;"] if convs else []),
            *(["    long best;"] if graph.discrete else []),
            *(["    unsigned long w;"] if "chunk" in nm_loops else []),
            *(["    long s;", "    unsigned off, buf, have;"] if "stream" in nm_loops else []),
            "    float acc;",
            *body,
            "}",
            "",
        ]
    )
    return {"policy.h": header, "policy.c": source}


def _nm_loop(i: int, src: str, n: int, m: int, groups: int, bits: int, int8: bool) -> tuple[str, str, str]:
    """C for one row of an N:M layer: (statement before the row loop, loop accumulating into ``acc``, and
    which kind of loop it is: ``"chunk"`` or ``"stream"``, for the variables to declare).

    The offsets are one little-endian bit stream in slot order across the layer (``n`` slots per group of
    ``m`` inputs, ``groups`` groups per row), read through the pointer ``p``; values are ``l{i}_val[k]``.
    Where every row starts on a chunk boundary (a whole number of bytes holding a whole number of groups),
    a chunk is loaded into one word and its slots are unrolled with constant shifts and input offsets.
    Otherwise a byte is read whenever fewer than ``bits`` bits are buffered.
    """
    val = f"(float)l{i}_val" if int8 else f"l{i}_val"
    mask, slots = (1 << bits) - 1, groups * n
    per_chunk = math.lcm(math.lcm(bits, 8) // bits, n)  # slots per chunk
    nbytes = per_chunk * bits // 8
    pre = f"k = 0; p = l{i}_off;"
    if slots % per_chunk == 0 and per_chunk * bits <= 32:
        word = " | ".join(f"((unsigned long)p[{b}] << {8 * b})" if b else "(unsigned long)p[0]" for b in range(nbytes))
        body = " ".join(
            f"acc += {val}[k + {j}] * in[{(j // n) * m} + (unsigned)((w >> {j * bits}) & {mask}u)];"
            for j in range(per_chunk)
        )
        loop = (f"for (g = 0, in = {src}; g < {slots // per_chunk}; ++g, p += {nbytes}, k += {per_chunk}, "
                f"in += {per_chunk // n * m}) {{ w = {word}; {body} }}")
        return pre, loop, "chunk"
    refill = "if (!have) { buf = *p++; have = 8u; }" if 8 % bits == 0 else \
        f"if (have < {bits}u) {{ buf |= (unsigned)*p++ << have; have += 8u; }}"
    pre += " buf = 0u; have = 0u;"
    loop = (f"for (g = 0, in = {src}; g < {groups}; ++g, in += {m}) for (s = 0; s < {n}; ++s, ++k) "
            f"{{ {refill} off = buf & {mask}u; buf >>= {bits}u; have -= {bits}u; acc += {val}[k] * in[off]; }}")
    return pre, loop, "stream"


def _check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZE:
        raise ExportError(f"unknown quantization {quantize!r}; known: {', '.join(QUANTIZE)}")
