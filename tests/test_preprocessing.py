"""The shared preprocessing module on real bytes: every image format and mode, text, features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from service.core.errors import InputError
from service.core.preprocessing import (
    ImageSpec,
    StandardScaler,
    TextVectorizer,
    decode_image,
    feature_row,
    tokenize,
)
from tests.generate import image_bytes
from training.datasets import BOSTON_FEATURES

pytestmark = pytest.mark.unit

SPEC = ImageSpec(64, 48)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_every_format_decodes_to_rgb_at_model_size(fmt: str) -> None:
    image = Image.new("RGB", (120, 90), (200, 30, 30))
    pixels = decode_image(image_bytes(image, fmt), SPEC)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8
    assert pixels[..., 0].mean() > 150 and pixels[..., 1].mean() < 80


@pytest.mark.parametrize("mode", ["L", "P", "1", "I;16"])
def test_grayscale_and_palette_become_rgb(mode: str) -> None:
    image = Image.new("L", (40, 40), 200).convert(mode) if mode != "I;16" else Image.new("I;16", (40, 40), 50000)
    pixels = decode_image(image_bytes(image, "PNG"), SPEC)
    assert pixels.shape == (48, 64, 3)
    assert np.allclose(pixels[..., 0], pixels[..., 1]), "gray stays gray"


def test_rgba_is_composited_over_white() -> None:
    image = Image.new("RGBA", (30, 30), (255, 0, 0, 0))  # fully transparent red
    assert decode_image(image_bytes(image, "PNG"), SPEC).min() == 255


def test_cmyk_jpeg_converts() -> None:
    image = Image.new("CMYK", (50, 50), (0, 255, 255, 0))  # red in CMYK
    pixels = decode_image(image_bytes(image, "JPEG"), SPEC)
    assert pixels[..., 0].mean() > 200 and pixels[..., 2].mean() < 60


def test_exif_rotation_is_applied() -> None:
    image = Image.new("RGB", (80, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 40, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    pixels = decode_image(image_bytes(image, "JPEG", exif=exif), ImageSpec(40, 80))
    assert pixels.shape == (80, 40, 3)
    top, bottom = pixels[:30].mean(axis=(0, 1)), pixels[-30:].mean(axis=(0, 1))
    assert top[0] > 150 and bottom[2] > 150, "after rotation the red half is on top"


def test_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 200, 0), (200, 0, 0))]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, SPEC)[..., 1].mean() > 150


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text, not a picture", "not a supported image"),
        (image_bytes(Image.new("RGB", (200, 200)), "JPEG")[:300], "truncated or corrupt"),
    ],
)
def test_bad_image_bytes_raise_input_error(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        decode_image(data, SPEC)


def test_pixel_limit_is_checked_before_decoding() -> None:
    big = image_bytes(Image.new("L", (3000, 3000)), "PNG")  # compresses to a few KB
    with pytest.raises(InputError, match="more than the limit"):
        decode_image(big, SPEC, max_pixels=1_000_000)


def test_tokenizer_keeps_negations_and_bigrams() -> None:
    assert tokenize("It <br />isn't GOOD", ngram_max=2) == ["it", "isn't", "good", "it isn't", "isn't good"]


def test_tfidf_vectorizer_roundtrip() -> None:
    texts = ["good film", "bad film", "good good plot"] * 2
    vectorizer = TextVectorizer.fit(texts, max_tokens=50, ngram_max=2, mode="tfidf")
    again = TextVectorizer.from_json(vectorizer.to_json())
    x = again.transform(["good film", "nothing known"])
    assert np.allclose(x, vectorizer.transform(["good film", "nothing known"]))
    assert math.isclose(float(np.linalg.norm(x[0])), 1.0, rel_tol=1e-5) and not x[1].any()


@pytest.mark.parametrize("mode", ["multi_hot", "tfidf"])
def test_sparse_rows_equal_the_dense_transform(mode: str) -> None:
    vectorizer = TextVectorizer.fit(
        ["good film", "bad bad film", "good good plot", "the film was good, not bad"] * 2, 50, ngram_max=3, mode=mode
    )  # type: ignore[arg-type]
    texts = ["good film", "bad bad film", "nothing known here", "the film was good, not bad", "good good good plot"]
    values, columns, starts = vectorizer.transform_rows(texts)
    dense = np.zeros((len(texts), vectorizer.size), np.float32)
    for row in range(len(texts)):
        dense[row, columns[starts[row] : starts[row + 1]]] = values[starts[row] : starts[row + 1]]
    assert np.array_equal(dense, vectorizer.transform(texts))
    assert starts[3] == starts[2], "a text with no known token has an empty row"
    assert [len(part) for part in vectorizer.transform_rows([])] == [0, 0, 1]


def test_feature_rows_by_name_or_position() -> None:
    values = list(range(1, 14))
    by_name = {name.lower(): v for name, v in zip(BOSTON_FEATURES, values)}
    assert np.array_equal(feature_row(by_name, BOSTON_FEATURES), feature_row(values, BOSTON_FEATURES))
    with pytest.raises(InputError, match="expected 13"):
        feature_row(values[:12], BOSTON_FEATURES)
    with pytest.raises(InputError, match="unknown features"):
        feature_row(by_name | {"colour": 1}, BOSTON_FEATURES)
    with pytest.raises(InputError, match="missing features"):
        feature_row({k: v for k, v in by_name.items() if k != "rm"}, BOSTON_FEATURES)
    with pytest.raises(InputError, match="finite"):
        feature_row([*values[:12], float("inf")], BOSTON_FEATURES)
    with pytest.raises(InputError, match="must be a number"):
        feature_row([*values[:12], "12"], BOSTON_FEATURES)


def test_scaler_records_the_training_range_and_estimates_it_for_old_versions() -> None:
    x = np.abs(np.random.default_rng(1).normal(5, 2, (80, 13)))
    scaler = StandardScaler.fit(x, BOSTON_FEATURES, log1p=("CRIM", "LSTAT"))
    low, high, seen = StandardScaler.from_json(scaler.to_json()).ranges()
    assert seen and np.array_equal(low, x.min(axis=0)) and np.array_equal(high, x.max(axis=0))
    old = {k: v for k, v in scaler.to_json().items() if k not in ("min", "max")}  # a scaler.json written before ranges were
    low, high, seen = StandardScaler.from_json(old).ranges()
    assert not seen and np.all(low < scaler.inverse_example()) and np.all(scaler.inverse_example() < high)
    crim = BOSTON_FEATURES.index("CRIM")
    assert low[crim] >= 0 and high[crim] == pytest.approx(np.expm1(np.log1p(x[:, crim]).mean() + 2 * np.log1p(x[:, crim]).std()))


def test_scaler_roundtrip() -> None:
    x = np.random.default_rng(0).normal(5, 2, (50, 13))
    scaler = StandardScaler.fit(x, BOSTON_FEATURES)
    again = StandardScaler.from_json(scaler.to_json())
    assert np.allclose(again.transform(x).mean(axis=0), 0, atol=1e-5)
