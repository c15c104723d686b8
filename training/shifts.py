"""Synthetic distribution shifts of photos: how a model (or its INT8 variant) holds up off the test split.

Photos users send differ from a curated test split: cropped or zoomed out, darker or
brighter, blurred, saved at low JPEG quality, rotated, noisy, tinted. Each shift here
takes the original photo (before resizing to the model's size) and returns the shifted
photo; `shifted_inputs` then decodes it with the service's own preprocessing, so the
pixels are exactly what the service would feed the model for such an upload.

Used to choose models on validation photos and to check that an INT8 variant agrees with
fp32 beyond the test split. Deterministic: the same photo and shift give the same pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from service.core.preprocessing import ImageSpec, decode_image

Shift = Callable[[Image.Image], Image.Image]


def _crop(image: Image.Image, side: float, anchor: tuple[float, float]) -> Image.Image:
    """Keep `side` of each dimension, the kept box placed at `anchor` (0..1 of the room left)."""
    width, height = image.size
    w, h = max(1, round(width * side)), max(1, round(height * side))
    left, top = round((width - w) * anchor[0]), round((height - h) * anchor[1])
    return image.crop((left, top, left + w, top + h))


def _zoom_out(image: Image.Image, scale: float = 0.6) -> Image.Image:
    """The photo shrunk to `scale` in the middle of a canvas of its size, the border filled with its edge colour."""
    width, height = image.size
    small = image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BILINEAR)
    fill = tuple(int(v) for v in np.asarray(image).reshape(-1, 3).mean(axis=0))
    canvas = Image.new("RGB", image.size, fill)
    canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
    return canvas


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image: Image.Image, sigma: float = 25.0) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    seed = int(pixels[::17, ::13].sum()) % (2**32)  # per photo, reproducible
    noisy = pixels + np.random.default_rng(seed).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def _tint(image: Image.Image, gains: tuple[float, float, float] = (1.15, 1.0, 0.75)) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) * np.asarray(gains, np.float32)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


# Twelve shifts, each a plausible way an upload differs from the curated photos.
SHIFTS: dict[str, Shift] = {
    "crop_center_70": lambda im: _crop(im, 0.7, (0.5, 0.5)),
    "crop_corner_60": lambda im: _crop(im, 0.6, (0.0, 0.0)),
    "zoom_out_60": _zoom_out,
    "dark_45": lambda im: ImageEnhance.Brightness(im).enhance(0.45),
    "bright_160": lambda im: ImageEnhance.Brightness(im).enhance(1.6),
    "low_contrast_50": lambda im: ImageEnhance.Contrast(im).enhance(0.5),
    "blur_2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "jpeg_q10": lambda im: _jpeg(im, 10),
    "rotate_25": lambda im: im.rotate(25, resample=Image.Resampling.BILINEAR),
    "rotate_10": lambda im: im.rotate(-10, resample=Image.Resampling.BILINEAR),
    "noise_25": _noise,
    "warm_tint": _tint,
}


def apply(shift: str, image: Image.Image) -> Image.Image:
    """`image` (any mode, EXIF orientation applied here) under the named shift, as RGB."""
    return SHIFTS[shift](ImageOps.exif_transpose(image).convert("RGB"))


def shifted_inputs(paths: Sequence[Path | str], spec: ImageSpec, shift: str) -> np.ndarray:
    """uint8 (n, height, width, 3): each photo under `shift`, decoded and resized by the service's preprocessing."""
    out = np.empty((len(paths), spec.height, spec.width, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            buffer = io.BytesIO()
            apply(shift, image).save(buffer, "PNG")  # lossless: only the shift changes the pixels
        out[i] = decode_image(buffer.getvalue(), spec)
    return out


def shifted_sets(paths: Sequence[Path | str], spec: ImageSpec, report: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Every photo under each shift: {shift: uint8 (n, height, width, 3)}; `report` hears of each shift done (it takes a while)."""
    sets = {}
    for i, shift in enumerate(SHIFTS, 1):
        sets[shift] = shifted_inputs(paths, spec, shift)
        if report is not None:
            report(f"shifted photos {i}/{len(SHIFTS)}: {shift} ({len(paths)})")
    return sets
