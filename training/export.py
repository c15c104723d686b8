"""Keras -> ONNX export, and the parity check that guards it.

`tf2onnx.convert.from_keras` fails on Keras 3 models, so the model is wrapped in a
`tf.function` with an explicit input signature (named input, dynamic batch
dimension) and converted with `tf2onnx.convert.from_function`. A bag-of-n-grams model
can be exported with sparse input instead (training/sparse_input.py: its n-gram ids and
weights, the first Dense layer a gather-sum). Every export is then
run through onnxruntime and compared with Keras on real test inputs; a difference
above the tolerance stops the run before anything is written to the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from service.core.errors import ExportError
from service.core.preprocessing import dense_to_padded
from training.sparse_input import IDS, WEIGHTS, sparse_input_graph

OPSET = 17
PARITY_TOLERANCE = 1e-4
SPARSE_PARITY_TOLERANCE = 1e-5  # a gather-sum adds the same few hundred products as the MatMul, in another order
PARITY_MIN_SAMPLES = 100


class ParityError(ExportError):
    """ONNX and Keras disagree on the same inputs."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | None, ...]  # including the batch dimension (None)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


Feed = Callable[[np.ndarray], dict[str, np.ndarray]]  # a batch of the Keras model's input -> the ONNX graph's inputs


def sparse_specs() -> list[TensorSpec]:
    """The inputs of a sparse-input graph: n-gram ids and their weights, [N, K] each (K: the longest row of the batch)."""
    return [TensorSpec(IDS, "int64", (None, None)), TensorSpec(WEIGHTS, "float32", (None, None))]


def sparse_feed(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Dense rows -> a sparse-input graph's feed, padded as the service pads them."""
    ids, weights = dense_to_padded(batch)
    return {IDS: ids, WEIGHTS: weights}


def export_onnx(model: keras.Model, input_spec: TensorSpec, output_name: str, path: Path, sparse: bool = False) -> list[TensorSpec]:
    """Convert `model` to ONNX at `path`; return the output specs read back from the graph.

    `sparse`: the dense input becomes n-gram ids and weights (training/sparse_input.py).
    """
    signature = (tf.TensorSpec(input_spec.shape, tf.as_dtype(input_spec.dtype), name=input_spec.name),)

    @tf.function(input_signature=signature)
    def serve(inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        return {output_name: model(inputs, training=False)}

    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=OPSET)
    model_proto.producer_name = "modelserve (tf2onnx)"
    onnx.checker.check_model(model_proto)
    graph_inputs = [i.name for i in model_proto.graph.input]
    if graph_inputs != [input_spec.name]:
        raise ExportError(f"tf2onnx produced graph inputs {graph_inputs}, expected exactly [{input_spec.name!r}]")
    if sparse:
        model_proto = sparse_input_graph(model_proto, input_spec.name)
    path.write_bytes(model_proto.SerializeToString())
    return [_spec_from_value_info(v) for v in model_proto.graph.output]


def _spec_from_value_info(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dtype, shape)


def parity_inputs(test: np.ndarray, train: np.ndarray, most: int) -> np.ndarray:
    """Up to `most` test inputs, topped up from training inputs so that parity sees at least PARITY_MIN_SAMPLES
    (repeated when a small data set has fewer inputs in all)."""
    chosen = test[:most]
    if len(chosen) < PARITY_MIN_SAMPLES:
        chosen = np.concatenate([chosen, train[: PARITY_MIN_SAMPLES - len(chosen)]])
    if 0 < len(chosen) < PARITY_MIN_SAMPLES:
        chosen = np.resize(chosen, (PARITY_MIN_SAMPLES, *chosen.shape[1:]))
    return chosen


def check_parity(
    model: keras.Model,
    onnx_path: Path,
    inputs: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
    batch_size: int = 32,
    feed: Feed | None = None,
) -> dict[str, object]:
    """Compare Keras and onnxruntime outputs on `inputs`; raise ParityError above `tolerance`.

    `feed` turns a batch of Keras inputs into the graph's (default: the batch as the graph's one input).
    """
    if len(inputs) < PARITY_MIN_SAMPLES:
        raise ParityError(f"parity needs at least {PARITY_MIN_SAMPLES} inputs, got {len(inputs)}")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    to_feed = feed or (lambda batch: {input_name: batch})
    expected = model.predict(inputs, batch_size=batch_size, verbose=0)
    actual = np.concatenate([session.run(None, to_feed(inputs[i : i + batch_size]))[0] for i in range(0, len(inputs), batch_size)])
    max_abs_diff = float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64))))
    result = {"samples": len(inputs), "max_abs_diff": max_abs_diff, "tolerance": tolerance, "runtime": "onnxruntime CPU"}
    if not max_abs_diff <= tolerance:  # also catches NaN
        raise ParityError(f"ONNX and Keras differ by {max_abs_diff:.3g} (> {tolerance:g}) on {len(inputs)} inputs")
    return result
