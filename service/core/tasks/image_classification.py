"""Image classification: encoded image bytes in, a label and every class's probability out."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.core.config import Settings
from service.core.errors import InputError
from service.core.preprocessing import ImageSpec, decode_image, decode_opened, open_image
from service.core.registry import VersionFiles
from service.core.tasks.base import BatchSizes, SoftmaxClassification

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")  # the files that are images (batch folders, uploads)
SMOKE_EXTRA_SIDE = 37  # smoke images are this much wider (and half as much taller) than the model's input
# A worker with no other request decodes and scores images up to this many pixels (a 1600x1250 photo) on its event loop.
INLINE_PIXELS = 2_000_000


@dataclass(frozen=True)
class EncodedImage:
    """An image whose header is parsed and checked, not yet decoded (Pillow decodes lazily)."""

    image: Image.Image

    @property
    def pixels(self) -> int:
        return self.image.width * self.image.height


def upload_bytes(value: Any, max_bytes: int) -> bytes:
    """A friendly-API image item (multipart upload, base64 or data URL string, bytes) -> its bytes, at most max_bytes + 1."""
    if hasattr(value, "file") and hasattr(value, "filename"):  # a multipart upload (starlette UploadFile)
        value.file.seek(0)
        return value.file.read(max_bytes + 1)
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):  # data URL: data:image/png;base64,....
            text = text.partition(",")[2]
        if len(text) > (max_bytes * 4) // 3 + 4:
            raise InputError(f"is larger than the limit of {max_bytes:,} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("is not valid base64 (send images as base64 strings in JSON, or as multipart file uploads)") from None
    raise InputError(f"must be a file upload or a base64 string, got {type(value).__name__}")


def read_limited(path: Path, max_bytes: int) -> bytes:
    """At most max_bytes + 1 bytes of a file: enough to tell that it is too large without reading it all."""
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})") from None


def _checked_pixels(pixels: np.ndarray, assets: ImageSpec) -> np.ndarray:
    expected = (assets.height, assets.width, 3)
    if pixels.dtype != np.uint8 or pixels.shape != expected:
        raise InputError(f"pixels must be uint8 {list(expected)} (height, width, RGB), got {pixels.dtype} {list(pixels.shape)}")
    return pixels


class ImageClassification(SoftmaxClassification):
    name = "image_classification"
    assets_kind = "image"
    item_noun = "image"
    # CPU: ~200 img/s at every batch size from 1 to 64 (benchmarks/results/batch_sizes.md), so a big batch only adds
    # latency. GPU: batch 256 is 20x batch 1 for this network (../shared/GPU.md, H100, io-binding).
    batch_sizes = BatchSizes(cpu=8, gpu=256)

    def load_assets(self, files: VersionFiles, metadata: Mapping[str, Any]) -> ImageSpec:
        return ImageSpec.from_json(metadata["preprocessing"])

    def check(self, value: Any, assets: Any, settings: Settings) -> EncodedImage | np.ndarray:
        """Image bytes (or a file's path) -> the image with its header parsed; byte and pixel limits, no decoding.

        Pixels a client decoded itself (the v2 `pixels` tensor) must be uint8 RGB at the version's size.
        """
        if isinstance(value, np.ndarray):
            return _checked_pixels(value, assets)
        limit = settings.max_image_bytes
        data = read_limited(value, limit) if isinstance(value, Path) else value
        if not isinstance(data, bytes):
            raise InputError(f"must be image bytes, got {type(data).__name__}")
        if len(data) > limit:
            raise InputError(f"is larger than the limit of {limit:,} bytes")
        return EncodedImage(open_image(data, settings.max_image_pixels))

    def decode(self, item: EncodedImage | np.ndarray, assets: ImageSpec, settings: Settings) -> np.ndarray:
        """-> uint8 pixels at the version's size; a truncated or corrupt file is only found here."""
        if isinstance(item, np.ndarray):  # pixels, checked against this version's size
            return item
        try:
            return decode_opened(item.image, assets)
        except InputError:
            raise
        except Exception as exc:  # a decoder failure decode_opened does not anticipate: this image fails, nothing else
            raise InputError(f"could not be decoded ({type(exc).__name__}: {exc})") from None

    def max_json_item_bytes(self, settings: Settings) -> int:
        """An image of MAX_IMAGE_BYTES as base64 (4 bytes per 3), with a data URL's prefix."""
        return settings.max_image_bytes * 4 // 3 + 256

    def check_request(self, items: Sequence[EncodedImage | np.ndarray], settings: Settings) -> None:
        total = self.cost(items)
        if total > settings.max_request_pixels:
            raise InputError(f"the images have {total:,} pixels in all, more than the limit of {settings.max_request_pixels:,} per request")

    def cost(self, items: Sequence[EncodedImage | np.ndarray]) -> int:
        return sum(item.shape[0] * item.shape[1] if isinstance(item, np.ndarray) else item.pixels for item in items)

    def pending_limit(self, settings: Settings) -> int:
        return settings.max_pending_pixels

    def fits_inline(self, items: Sequence[EncodedImage | np.ndarray]) -> bool:
        """Images of at most INLINE_PIXELS in all: decoding (JPEG draft mode) and inference take a few milliseconds."""
        return self.cost(items) <= INLINE_PIXELS

    def to_tensor(self, items: Sequence[np.ndarray], assets: ImageSpec) -> np.ndarray:
        return np.stack(items).astype(np.uint8, copy=False)

    def conform(self, items: Sequence[Any], assets: ImageSpec) -> list[np.ndarray]:
        """Decoded images (arrays or PIL images) at this version's size; a reload in between may have changed it."""
        size = (assets.width, assets.height)
        out = []
        for item in items:
            image = item if isinstance(item, Image.Image) else Image.fromarray(item)
            out.append(np.asarray(image if image.size == size else image.resize(size, Image.Resampling[assets.resample.upper()])))
        return out

    def smoke_items(self, assets: ImageSpec) -> list[np.ndarray]:
        """Two encoded images of another size (a translucent PNG, a noisy JPEG), through the real decoding and resizing.

        Pixels already at the model's size would skip the resize: a version whose `resample` is
        unusable passed every check and then failed every client's image.
        """
        rng = np.random.default_rng(0)
        size = (assets.width + SMOKE_EXTRA_SIDE, assets.height + SMOKE_EXTRA_SIDE // 2)
        translucent = Image.new("RGBA", size, (128, 128, 128, 200))
        noisy = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        encoded = []
        for image, fmt in ((translucent, "PNG"), (noisy, "JPEG")):
            buffer = io.BytesIO()
            image.save(buffer, fmt)
            encoded.append(buffer.getvalue())
        return [decode_image(data, assets) for data in encoded]
