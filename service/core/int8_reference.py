"""The INT8 variant's reference set, and its check on the CPU that loads it.

An INT8 file answers like fp32 only where onnxruntime's int8 kernels do the arithmetic the
export checked (service/core/cpu.py: without VNNI, u8s8 sums can saturate). So each version
with an INT8 variant stores, at export, a few preprocessed test inputs and fp32's
probabilities for them; every load of the variant (service, batch scorer, each Spark
executor) runs it on them first. Below the bounds (MODELSERVE_INT8_MIN_LABEL_AGREEMENT,
MODELSERVE_INT8_MAX_PROB_DIFF) the variant is not used and model.onnx serves.

Labels are compared only where fp32 is sure: its top class ahead of the next by more than
TIE_MARGIN (0.1, twice the default probability bound). Closer than that, kernels that stay
within the bound can swap the two, so those inputs count for the probability bound only. The
margin is fixed, not twice the configured bound: loosening MODELSERVE_INT8_MAX_PROB_DIFF must
not stop labels from counting. Seen on an AMD EPYC with AVX-512 VNNI: the shipped image
variant's fused int8 kernels give one reference photo (fp32: 0.475 cat) 0.500, while every
answer stays within 0.035 of fp32; counting that swap refused a variant right on that CPU.

The inputs are stored losslessly as one WebP image, the inputs stacked top to bottom: for 16
photos at 224x224, 0.78 MB against 2.4 MB raw, 1.17 MB as PNG, 0.77 MB with WebP's slowest
method (17 times longer to write); read back in about 0.1 s.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.core.errors import RegistryError

CHUNK = 16  # inputs per onnxruntime call while checking
TIE_MARGIN = 0.1  # fp32's top two classes closer than this: a label swap there is not counted (module docstring)


@dataclass(frozen=True)
class Int8Bounds:
    """How close to fp32 the INT8 variant must be on its reference set to serve (config: MODELSERVE_INT8_*)."""

    min_label_agreement: float = 0.99
    max_prob_diff: float = 0.05


@dataclass(frozen=True)
class ReferenceCheck:
    """The variant's answers on its reference set on this CPU, against fp32's stored at export."""

    samples: int
    sure: int  # the inputs whose fp32 label leads the next by more than TIE_MARGIN (sure_of)
    same_label: int  # of those, the ones the variant gives the same label
    max_prob_diff: float  # over every input
    seconds: float
    bounds: Int8Bounds

    @property
    def label_agreement(self) -> float:
        return self.same_label / self.sure if self.sure else 1.0

    @property
    def passed(self) -> bool:
        return self.label_agreement >= self.bounds.min_label_agreement and self.max_prob_diff <= self.bounds.max_prob_diff

    def summary(self) -> str:
        return (
            f"same label as fp32 on {self.same_label} of {self.sure} reference inputs ({self.label_agreement:.1%}, "
            f"needs >= {self.bounds.min_label_agreement:.0%}; {self.samples - self.sure} of {self.samples} closer than "
            f"{TIE_MARGIN:g} between fp32's top two not counted), max |prob diff| {self.max_prob_diff:.3f} "
            f"(needs <= {self.bounds.max_prob_diff:g}); checked in {self.seconds:.2f} s"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "labels_compared": self.sure,
            "label_agreement": round(self.label_agreement, 4),
            "max_prob_diff": round(self.max_prob_diff, 4),
            "min_label_agreement": self.bounds.min_label_agreement,
            "max_allowed_prob_diff": self.bounds.max_prob_diff,
            "passed": self.passed,
            "seconds": round(self.seconds, 3),
        }


def encode_inputs(inputs: np.ndarray) -> bytes:
    """uint8 (n, height, width, 3) -> one lossless WebP, the inputs stacked top to bottom."""
    if inputs.dtype != np.uint8 or inputs.ndim != 4 or inputs.shape[-1] != 3:
        raise ValueError(f"expected uint8 (n, height, width, 3) inputs, got {inputs.dtype} {inputs.shape}")
    n, height, width, _ = inputs.shape
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(inputs).reshape(n * height, width, 3)).save(buffer, "WEBP", lossless=True, quality=100, method=4)
    return buffer.getvalue()


def decode_inputs(data: bytes, samples: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"))
    height, width, _ = pixels.shape
    if samples <= 0 or height % samples:
        raise ValueError(f"a {width}x{height} image does not hold {samples} inputs stacked")
    return pixels.reshape(samples, height // samples, width, 3)


def read_reference(path: Path, block: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, fp32 probabilities) of a reference set; RegistryError when the file and its metadata do not fit together."""
    try:
        expected = np.asarray(block["fp32_probabilities"], dtype=np.float32)
        inputs = decode_inputs(path.read_bytes(), len(expected))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"{path.name}: the INT8 reference set is unusable ({exc})") from exc
    return inputs, expected


def check(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, expected: np.ndarray, bounds: Int8Bounds) -> ReferenceCheck:
    """Run the variant (`run`: a batch of inputs -> probabilities) on the reference inputs and compare with fp32's."""
    started = time.perf_counter()
    answers = np.concatenate([run(inputs[i : i + CHUNK]) for i in range(0, len(inputs), CHUNK)])
    return compare(answers, expected, bounds, time.perf_counter() - started)


def compare(answers: np.ndarray, expected: np.ndarray, bounds: Int8Bounds, seconds: float = 0.0) -> ReferenceCheck:
    """The variant's probabilities against fp32's on the same inputs: labels where fp32 is sure, probabilities everywhere."""
    sure = sure_of(expected)
    same = int((answers.argmax(axis=1) == expected.argmax(axis=1))[sure].sum())
    return ReferenceCheck(len(answers), int(sure.sum()), same, float(np.abs(answers - expected).max()), seconds, bounds)


def sure_of(expected: np.ndarray) -> np.ndarray:
    """Where fp32's top class leads the next by more than TIE_MARGIN."""
    top_two = np.sort(expected, axis=1)[:, -2:]
    return (top_two[:, 1] - top_two[:, 0]) > TIE_MARGIN
