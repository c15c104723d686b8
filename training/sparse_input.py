"""A bag-of-n-grams graph rewritten to take each text's n-gram ids and weights instead of a dense row.

A TF-IDF text model's first Dense layer multiplies a [N, V] row (V = 200,000 for the
shipped sentiment model's v2) that has a few hundred non-zeros. As exported by tf2onnx, that is
`MatMul(features, W)`; here it becomes

    Gather(W, ids) -> [N, K, H];  times Unsqueeze(weights, 2) -> [N, K, H];  ReduceSum over K -> [N, H]

and the rest of the graph (bias, hidden layers, sigmoid) stays as it was. `ids` int64
[N, K] and `weights` float32 [N, K] are the rows' non-zeros, padded to the longest row
of the batch with id 0 and weight 0 (service/core/preprocessing.py, `padded_rows`).
Padded rather than a flat ids/offsets pair because the padded form needs only Gather,
Mul and ReduceSum, which every runtime and opset 13+ has and which keep the batch
dimension where every other graph has it; a flat pair needs a segment sum
(ScatterND with reduction, opset 16+) and a third input. Reviews of one batch differ
in length, so padding costs gathered zeros, which are cheap next to the 800 KB dense
row per review they replace (benchmarks/text_sparse.py measures both).

This module needs `onnx` only (no TensorFlow): the export uses it, and the benchmark
rewrites an existing dense version to compare the two graphs on identical weights.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.core.errors import ExportError
from service.core.preprocessing import SPARSE_INPUTS

IDS, WEIGHTS = SPARSE_INPUTS


def sparse_input_graph(model: onnx.ModelProto, dense_input: str) -> onnx.ModelProto:
    """A copy of `model` whose dense input `dense_input` [N, V] is replaced by `ids` and `weights` [N, K].

    The dense input must feed exactly one node, a MatMul by a constant [V, H] weight (the
    first Dense layer as tf2onnx writes it); ExportError otherwise.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    users = [node for node in graph.node if dense_input in node.input]
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != dense_input:
        found = [(n.op_type, list(n.input)) for n in users]
        raise ExportError(f"cannot take sparse input: {dense_input!r} must feed one MatMul as its first operand, it feeds {found}")
    matmul = users[0]
    initializers = {t.name: t for t in graph.initializer}
    if matmul.input[1] not in initializers:
        raise ExportError(f"cannot take sparse input: the first Dense layer's weight {matmul.input[1]!r} is not a constant")
    weight = numpy_helper.to_array(initializers[matmul.input[1]])
    if weight.ndim != 2:
        raise ExportError(f"cannot take sparse input: the first Dense layer's weight has shape {weight.shape}, expected [V, H]")
    prefix = "sparse_input/"
    nodes = [
        helper.make_node("Gather", [matmul.input[1], IDS], [prefix + "rows"], axis=0),  # [N, K, H]
        helper.make_node("Unsqueeze", [WEIGHTS, prefix + "axis2"], [prefix + "weights3"]),  # [N, K, 1]
        helper.make_node("Mul", [prefix + "rows", prefix + "weights3"], [prefix + "weighted"]),
        helper.make_node("ReduceSum", [prefix + "weighted", prefix + "axis1"], [matmul.output[0]], keepdims=0),  # [N, H]
    ]
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([2], np.int64), prefix + "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), prefix + "axis1"),
        ]
    )
    position = list(graph.node).index(matmul)
    del graph.node[position]
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    kept = [i for i in graph.input if i.name != dense_input]
    del graph.input[:]
    batch = helper.make_tensor_value_info(IDS, TensorProto.INT64, ["batch", "ngrams"])
    graph.input.extend([batch, helper.make_tensor_value_info(WEIGHTS, TensorProto.FLOAT, ["batch", "ngrams"]), *kept])
    onnx.checker.check_model(out)
    return out
