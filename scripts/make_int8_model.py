#!/usr/bin/env python3
"""Builds the int8-compute embedder model from the pinned (shipped) one, deterministically.

The shipped all-MiniLM-L6-v2 stores its weights as int8 with one fp32 scale per output column,
but computes in fp32: ONNX Runtime folds `Cast(int8) * scale` into fp32 weights at load. This
rewrites each of those weight MatMuls (36: Q, K, V, attention output and both feed-forward
layers of 6 blocks) to compute in int8:

    X (fp32, [..., K])  ->  per-token scale s = max|X| / 127,  Xq = round(X / s) + 128  (uint8, QuantizeLinear)
    Y = MatMulIntegerToFloat(Xq, Wq, 1, w_scale, zero point 128) * s

(uint8 activations with zero point 128 rather than int8: ONNX Runtime's x86 kernels multiply
uint8 by int8, and ran the signed form 4x slower than fp32.)

using the model's own int8 weights and scales unchanged. A few input channels of some MatMuls
carry values far larger than the rest (the known outlier dimensions of BERT-style models); one
per-token scale over them would crush every other channel to a handful of levels, which is why
a plain dynamic quantisation loses accuracy. Those channels are kept in fp32:

    Y = MatMulIntegerToFloat(quantised X with outlier channels zeroed) + X[:, outliers] @ W[outliers]

The embedding tables (word, position) are gathered as int8 rows and dequantised after the
gather, giving the same floats without a 47 MB fp32 copy of the vocabulary in memory.

Outlier channels are chosen from the activations of the fixed sentences in
setup/int8-calibration.txt (run once through the shipped model with ONNX Runtime, 1 thread): a
channel is an outlier of a MatMul's input when its largest |value| over every calibration token
exceeds OUTLIER_RATIO times the median of those maxima. Nothing is downloaded; the same inputs
give the same bytes, and the caller checks the sha256 against setup/artifacts.txt.

Usage: make_int8_model.py SHIPPED_MODEL TOKENIZER_JSON CALIBRATION_TXT OUT_MODEL
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

OUTLIER_RATIO = 6.0
MS = "com.microsoft"


def weight_matmuls(graph):
    """(MatMul node, int8 weight initializer, scale initializer) for every dequantised-weight MatMul."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        mul = producer.get(node.input[1])
        if mul is None or mul.op_type != "Mul":
            continue
        cast = producer.get(mul.input[0])
        if cast is None or cast.op_type != "Cast" or mul.input[1] not in inits:
            continue
        q = inits.get(cast.input[0])
        if q is None or q.data_type != TensorProto.INT8:
            continue
        found.append((node, q, inits[mul.input[1]]))
    return found


def int8_gathers(graph):
    """(Gather node, int8 table initializer, per-row scale initializer) for every embedding table
    that the model dequantises whole before gathering rows from it."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        if node.op_type != "Gather":
            continue
        mul = producer.get(node.input[0])
        if mul is None or mul.op_type != "Mul" or mul.input[1] not in inits:
            continue
        cast = producer.get(mul.input[0])
        q = inits.get(cast.input[0]) if cast is not None and cast.op_type == "Cast" else None
        if q is None or q.data_type != TensorProto.INT8:
            continue
        found.append((node, q, inits[mul.input[1]]))
    return found


def rewrite_gathers(model):
    """Gathers the int8 rows and their scales, then dequantises only those: the same floats as
    gathering from the dequantised table, without a 47 MB fp32 copy of the vocabulary."""
    graph = model.graph
    nodes = list(graph.node)
    for index, (node, q_init, scale_init) in enumerate(int8_gathers(graph)):
        idx, y, p = node.input[1], node.output[0], f"int8_gather_{index}"
        axis = [a for a in node.attribute if a.name == "axis"]
        kwargs = {"axis": axis[0].i} if axis else {}
        new = [
            helper.make_node("Gather", [q_init.name, idx], [f"{p}_q"], name=f"{p}_q", **kwargs),
            helper.make_node("Cast", [f"{p}_q"], [f"{p}_f"], to=TensorProto.FLOAT, name=f"{p}_f"),
            helper.make_node("Gather", [scale_init.name, idx], [f"{p}_scale"], name=f"{p}_scale", **kwargs),
            helper.make_node("Mul", [f"{p}_f", f"{p}_scale"], [y], name=f"{p}_y"),
        ]
        at = nodes.index(node)
        nodes[at : at + 1] = new
    del graph.node[:]
    graph.node.extend(nodes)


def calibration_maxima(model_path, tokenizer_path, sentences, tensor_names):
    """Per-channel max |value| of each named tensor over every token of every sentence."""
    model = onnx.load(model_path)
    known = {o.name for o in model.graph.output}
    for name in tensor_names:
        if name not in known:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(256)
    inputs = {i.name for i in session.get_inputs()}
    maxima = {name: None for name in tensor_names}
    for sentence in sentences:
        ids = np.array([tokenizer.encode(sentence).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        for name, value in zip(tensor_names, session.run(tensor_names, feed)):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = m if maxima[name] is None else np.maximum(maxima[name], m)
    return maxima


def rewrite(model, maxima):
    graph = model.graph
    targets = weight_matmuls(graph)
    nodes = list(graph.node)
    new_inits = []
    outliers_total = 0
    nearest = float("inf")  # how close any channel came to the outlier cut (a flip would change the bytes)
    for index, (node, q_init, scale_init) in enumerate(targets):
        x, y = node.input[0], node.output[0]
        p = f"int8_{index}"
        wq = numpy_helper.to_array(q_init)  # [K, N]
        w_scale = numpy_helper.to_array(scale_init).reshape(-1).astype(np.float32)  # [N]
        ch_max = maxima[x]
        ratios = ch_max / np.median(ch_max)
        nearest = min(nearest, float(np.min(np.abs(np.log(ratios / OUTLIER_RATIO)))))
        outliers = np.flatnonzero(ratios > OUTLIER_RATIO).astype(np.int64)
        outliers_total += len(outliers)
        new = []
        quant_in = x
        if len(outliers):
            mask = np.ones(wq.shape[0], dtype=np.float32)
            mask[outliers] = 0.0
            new_inits += [
                numpy_helper.from_array(mask, f"{p}_mask"),
                numpy_helper.from_array(outliers, f"{p}_outliers"),
                numpy_helper.from_array(
                    (wq[outliers].astype(np.float32) * w_scale[None, :]).astype(np.float32), f"{p}_w_outliers"
                ),
            ]
            new.append(helper.make_node("Mul", [x, f"{p}_mask"], [f"{p}_x_inliers"], name=f"{p}_mask_mul"))
            quant_in = f"{p}_x_inliers"
        new_inits += [
            numpy_helper.from_array(wq, f"{p}_wq"),
            numpy_helper.from_array(w_scale, f"{p}_w_scale"),
        ]
        new += [
            # max |x| per token from two read-only reductions (no |x| tensor is written).
            helper.make_node("ReduceMax", [quant_in], [f"{p}_max"], axes=[-1], keepdims=1, name=f"{p}_max"),
            helper.make_node("ReduceMin", [quant_in], [f"{p}_min"], axes=[-1], keepdims=1, name=f"{p}_min"),
            helper.make_node("Neg", [f"{p}_min"], [f"{p}_neg_min"], name=f"{p}_neg_min"),
            helper.make_node("Max", [f"{p}_max", f"{p}_neg_min", "int8_min_amax"], [f"{p}_amax"], name=f"{p}_amax"),
            helper.make_node("Div", [f"{p}_amax", "int8_127"], [f"{p}_x_scale"], name=f"{p}_x_scale"),
            helper.make_node("Div", ["int8_127", f"{p}_amax"], [f"{p}_x_inv_scale"], name=f"{p}_x_inv_scale"),
            # x * 127/max|x| is within [-127, 127]; QuantizeLinear (scale 1, zero point 128)
            # rounds it to the nearest uint8 level, saturating.
            helper.make_node("Mul", [quant_in, f"{p}_x_inv_scale"], [f"{p}_x_scaled"], name=f"{p}_x_scaled"),
            helper.make_node(
                "QuantizeLinear", [f"{p}_x_scaled", "int8_one", "int8_zero_point"], [f"{p}_xq"], name=f"{p}_xq"
            ),
            helper.make_node(
                "MatMulIntegerToFloat",
                [f"{p}_xq", f"{p}_wq", "int8_one", f"{p}_w_scale", "int8_zero_point"],
                [f"{p}_y_unscaled"],
                domain=MS,
                name=f"{p}_matmul",
            ),
        ]
        scaled = y if not len(outliers) else f"{p}_y_inliers"
        new.append(helper.make_node("Mul", [f"{p}_y_unscaled", f"{p}_x_scale"], [scaled], name=f"{p}_y"))
        if len(outliers):
            new += [
                helper.make_node("Gather", [x, f"{p}_outliers"], [f"{p}_x_outliers"], axis=-1, name=f"{p}_gather"),
                helper.make_node("MatMul", [f"{p}_x_outliers", f"{p}_w_outliers"], [f"{p}_y_outliers"], name=f"{p}_mm_out"),
                helper.make_node("Add", [f"{p}_y_inliers", f"{p}_y_outliers"], [y], name=f"{p}_y_sum"),
            ]
        at = nodes.index(node)
        nodes[at : at + 1] = new

    new_inits += [
        numpy_helper.from_array(np.array(1e-8, dtype=np.float32), "int8_min_amax"),
        numpy_helper.from_array(np.array(127.0, dtype=np.float32), "int8_127"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "int8_one"),
        numpy_helper.from_array(np.array(128, dtype=np.uint8), "int8_zero_point"),
    ]
    # Drop the fp32 dequantisation of the rewritten weights (nothing else reads it).
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    while True:
        dead = [n for n in nodes if all(o not in used for o in n.output)]
        if not dead:
            break
        nodes = [n for n in nodes if n not in dead]
        used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [i for i in new_inits if i.name in used])
    if not any(o.domain == MS for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS, 1))
    return len(targets), outliers_total, nearest


def main():
    shipped, tokenizer, calibration, out = sys.argv[1:5]
    sentences = [
        line.strip()
        for line in open(calibration, encoding="utf-8")
        if line.strip() and not line.startswith("#")
    ]
    model = onnx.load(shipped)
    inputs = sorted({node.input[0] for node, _, _ in weight_matmuls(model.graph)})
    maxima = calibration_maxima(shipped, tokenizer, sentences, inputs)
    rewrite_gathers(model)
    rewritten, outliers, nearest = rewrite(model, maxima)
    model.producer_name = "hikmah make_int8_model.py"
    model.producer_version = "1"
    onnx.checker.check_model(model)
    onnx.save(model, out)
    print(
        f"rewrote {rewritten} MatMuls to int8, {outliers} outlier input channels kept in fp32 "
        f"(closest channel to the cut: {100 * (np.exp(nearest) - 1):.1f} % away)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
