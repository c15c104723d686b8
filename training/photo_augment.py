"""Randomised photo-level augmentation: the kinds of change training/shifts.py measures, at random strengths.

Keras' in-graph augmentation (flip, rotation, zoom) works on the already resized pixels and
cannot make what users' uploads actually look like: a JPEG saved at low quality, a dark or
washed-out exposure, a blurred or noisy photo, a tinted one. Here each training photo is
changed at the source, before the service's preprocessing decodes and resizes it, so the
model trains on the pixels the service would give it for such an upload.

The strengths are drawn from ranges (JPEG quality 8-40, rotation up to 30 degrees, crops
keeping 55-90%, ...), not the twelve fixed settings of training/shifts.py: the shift measure
stays a measure of robustness to those families, not a copy of the training data.
Deterministic for a given seed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from service.core.preprocessing import ImageSpec, decode_image


def _crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side = rng.uniform(0.55, 0.9)
    width, height = image.size
    w, h = max(1, round(width * side)), max(1, round(height * side))
    left, top = round((width - w) * rng.uniform()), round((height - h) * rng.uniform())
    return image.crop((left, top, left + w, top + h))


def _zoom_out(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.5, 0.85)
    width, height = image.size
    small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    canvas = Image.new("RGB", image.size, fill)
    canvas.paste(small, (int(rng.integers(0, width - small.width + 1)), int(rng.integers(0, height - small.height + 1))))
    return canvas


def _jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(8, 41)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    noisy = pixels + rng.normal(0.0, rng.uniform(5.0, 30.0), pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _tint(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    gains = rng.uniform(0.7, 1.2, 3).astype(np.float32)
    return Image.fromarray((np.asarray(image, dtype=np.float32) * gains).clip(0, 255).astype(np.uint8))


FAMILIES: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": _crop,
    "zoom_out": _zoom_out,
    "brightness": lambda im, rng: ImageEnhance.Brightness(im).enhance(rng.uniform(0.35, 1.7)),
    "contrast": lambda im, rng: ImageEnhance.Contrast(im).enhance(rng.uniform(0.4, 0.85)),
    "blur": lambda im, rng: im.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.5))),
    "jpeg": _jpeg,
    "rotate": lambda im, rng: im.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR),
    "noise": _noise,
    "tint": _tint,
}


def random_change(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One or two families at random strengths, and a horizontal flip half the time."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    names = list(FAMILIES)
    for index in rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False):
        image = FAMILIES[names[int(index)]](image, rng)
    return ImageOps.mirror(image) if rng.uniform() < 0.5 else image


def augmented_copies(paths: Sequence[Path | str], spec: ImageSpec, seed: int) -> np.ndarray:
    """uint8 (n, height, width, 3): one randomly changed copy of each photo, decoded by the service's preprocessing."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(paths), spec.height, spec.width, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            buffer = io.BytesIO()
            random_change(image, rng).save(buffer, "PNG")
        out[i] = decode_image(buffer.getvalue(), spec)
    return out
