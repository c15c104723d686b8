"""Preprocessing shared by training and serving, so the two can never disagree.

Training (TensorFlow) and the service (onnxruntime only) both import this module,
and it imports neither framework: tokenisation and vectorisation of texts, image
decoding and resizing, feature scaling. Everything a transform needs is saved next
to the model (vocab.json, scaler.json, the image block of metadata.json); each task
(service/core/tasks) loads it back for the version it serves.

Errors caused by the input (an undecodable image, a text with no words, a missing
feature) raise `InputError`, whose message is meant for the client.
"""

from __future__ import annotations

import heapq
import html
import io
import itertools
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from service.core.errors import InputError

VOCABULARY_FILE = "vocab.json"
SCALER_FILE = "scaler.json"
MAX_NAMES_QUOTED = 20  # unknown feature names an error message lists
MAX_NGRAM = 5  # the longest n-grams a saved vectoriser may use
MAX_IMAGE_SIDE = 8192  # the largest model input side a saved image block may name


# ---------------------------------------------------------------- text

_TAG_RE = re.compile(r"<[^>]{0,200}>")
# Words with an optional internal apostrophe ("don't", "isn't"): negations matter for sentiment.
_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

TextMode = Literal["multi_hot", "tfidf"]


def normalize_text(text: str) -> str:
    """Lower-case, unescape HTML entities and drop tags such as IMDB's `<br />`."""
    return _TAG_RE.sub(" ", html.unescape(text)).lower()


def tokenize(text: str, ngram_max: int = 1) -> list[str]:
    """Word tokens, plus space-joined n-grams up to `ngram_max`."""
    words = _TOKEN_RE.findall(normalize_text(text))
    tokens = list(words)
    for n in range(2, ngram_max + 1):
        tokens.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return tokens


SPARSE_INPUTS = ("ids", "weights")  # a sparse-input text graph's inputs: n-gram ids int64 [N, K], their weights float32 [N, K]


@dataclass(frozen=True)
class _NgramIndex:
    """The vocabulary as one sorted array of integer keys, to find a text's n-grams without building their strings.

    Every word of any vocabulary entry gets a number below 2**bits - 1 (that last number
    stands for every other word); an n-gram is the integer that packs a leading 1 and its
    words' numbers, `bits` each, so n-grams of different lengths never share a key. A
    text's keys are looked up by binary search, all lengths at once. A word that no entry
    contains can be part of no entry, so the ids found are exactly those of the `tokenize`
    tokens in the vocabulary.
    """

    words: dict[str, int]
    keys: np.ndarray  # sorted packed keys of every entry
    ids: np.ndarray  # their vocabulary ids, in the order of `keys`
    bits: int

    @classmethod
    def build(cls, vocabulary: Mapping[str, int], ngram_max: int) -> _NgramIndex | None:
        """None when the packed keys would not fit in 63 bits (the string lookup is used then)."""
        split = [token.split(" ") for token in vocabulary]
        kept = [len(parts) <= ngram_max for parts in split]
        split = list(itertools.compress(split, kept))
        ids = np.fromiter(itertools.compress(vocabulary.values(), kept), np.int64, len(split))
        words = {word: i for i, word in enumerate(dict.fromkeys(itertools.chain.from_iterable(split)))}
        bits = (len(words) + 1).bit_length()  # numbers 0 .. len(words) - 1, and 2**bits - 1 for unknown words
        if bits * ngram_max + 1 > 63:
            return None
        lengths = np.fromiter(map(len, split), np.int64, len(split))
        numbers = np.fromiter(map(words.__getitem__, itertools.chain.from_iterable(split)), np.int64, int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        position = np.arange(len(numbers)) - np.repeat(starts, lengths)  # of each word within its n-gram
        shifts = bits * (np.repeat(lengths, lengths) - 1 - position)
        keys = (np.int64(1) << (bits * lengths)) + np.add.reduceat(numbers << shifts, starts) if len(split) else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        return cls(words, keys[order], ids[order], bits)

    def find(self, words: Sequence[str], ngram_max: int) -> np.ndarray:
        """Ids of the text's n-grams (1..ngram_max) found in the vocabulary, with repeats, in no particular order."""
        unknown = (1 << self.bits) - 1
        numbers = np.array(list(map(self.words.get, words, itertools.repeat(unknown, len(words)))), np.int64)
        grams = [numbers | (1 << self.bits)]
        for n in range(2, min(ngram_max, len(words)) + 1):
            grams.append((grams[-1][:-1] << self.bits) | numbers[n - 1 :])
        keys = np.concatenate(grams)
        where = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.ids[where[self.keys[where] == keys]]


@dataclass
class TextVectorizer:
    """Bag-of-n-grams vectoriser: multi-hot (the seed) or TF-IDF (the stronger variant).

    TF-IDF follows scikit-learn's `TfidfVectorizer(sublinear_tf=True)`: tf = 1 + ln(count),
    idf = ln((1 + n_docs) / (1 + df)) + 1, rows L2-normalised.
    """

    vocabulary: dict[str, int]
    ngram_max: int = 1
    mode: TextMode = "multi_hot"
    idf: np.ndarray | None = None
    _index: _NgramIndex | None = field(default=None, init=False, repr=False, compare=False)
    _indexed: bool = field(default=False, init=False, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    @classmethod
    def fit(
        cls,
        texts: Iterable[str],
        max_tokens: int,
        ngram_max: int = 1,
        mode: TextMode = "multi_hot",
        min_df: int = 2,
    ) -> TextVectorizer:
        """Keep the `max_tokens` most frequent n-grams seen in at least `min_df` texts."""
        counts: Counter[str] = Counter()
        doc_freq: Counter[str] = Counter()
        n_docs = 0
        for text in texts:
            tokens = tokenize(text, ngram_max)
            counts.update(tokens)
            doc_freq.update(set(tokens))
            n_docs += 1
        candidates = [t for t in counts if doc_freq[t] >= min_df]
        candidates.sort(key=lambda t: (-counts[t], t))  # frequency, then alphabetical: deterministic
        vocabulary = {token: i for i, token in enumerate(candidates[:max_tokens])}
        idf = None
        if mode == "tfidf":
            df = np.array([doc_freq[t] for t in vocabulary], dtype=np.float64)
            idf = (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0).astype(np.float32)
        return cls(vocabulary=vocabulary, ngram_max=ngram_max, mode=mode, idf=idf)

    def build_index(self) -> TextVectorizer:
        """Build the n-gram index now (a second or so for 200,000 entries) rather than on the first text."""
        if not self._indexed:
            self._index, self._indexed = _NgramIndex.build(self.vocabulary, self.ngram_max), True
        return self

    def token_ids(self, text: str) -> np.ndarray:
        """Vocabulary ids of the text's `tokenize` tokens that are in the vocabulary, with repeats (int64).

        By the n-gram index (`build_index`, on first use if not before): several times faster than
        building every n-gram's string and looking it up.
        """
        self.build_index()
        if self._index is None:
            return np.array([i for i in map(self.vocabulary.get, tokenize(text, self.ngram_max)) if i is not None], np.int64)
        return self._index.find(_TOKEN_RE.findall(normalize_text(text)), self.ngram_max)

    def _row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Column ids (ascending) and values of one text's features; empty when no token is known."""
        ids = self.token_ids(text)
        if not len(ids):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        unique, counts = np.unique(ids, return_counts=True)
        if self.mode == "multi_hot":
            return unique, np.ones(len(unique), np.float32)
        assert self.idf is not None
        weights = (1.0 + np.log(counts)) * self.idf[unique]
        return unique, (weights / np.linalg.norm(weights)).astype(np.float32)

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.size), dtype=np.float32)
        for row, text in enumerate(texts):
            ids, values = self._row(text)
            out[row, ids] = values
        return out

    def transform_rows(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`transform` as CSR parts (values, column ids, row starts): a corpus with a large vocabulary does not fit densely (training)."""
        rows = [self._row(text) for text in texts]
        starts = np.zeros(len(rows) + 1, dtype=np.int64)
        starts[1:] = np.cumsum([len(ids) for ids, _ in rows])
        if not rows:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), starts
        return np.concatenate([v for _, v in rows]), np.concatenate([i for i, _ in rows]), starts

    def transform_sparse(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`transform` as a sparse-input graph takes it: (ids int64 [N, K], weights float32 [N, K]), K the most non-zeros of a row.

        Shorter rows are padded with id 0 and weight 0, which adds nothing to the sum; K is
        at least 1, so a text with no known token is a row of padding (the model's bias alone).
        """
        return padded_rows([self._row(text) for text in texts])

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ngram_max": self.ngram_max,
            "tokens": sorted(self.vocabulary, key=self.vocabulary.__getitem__),
            "idf": None if self.idf is None else [float(v) for v in self.idf],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TextVectorizer:
        """A saved vectoriser; ValueError naming what is wrong with a damaged one (checked here, not at the first request)."""
        tokens, ngram_max, mode = data["tokens"], data["ngram_max"], data["mode"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("tokens must be a list of strings")
        if not isinstance(ngram_max, int) or isinstance(ngram_max, bool) or not 1 <= ngram_max <= MAX_NGRAM:
            raise ValueError(f"ngram_max must be an integer from 1 to {MAX_NGRAM}, got {ngram_max!r}")
        if mode not in ("multi_hot", "tfidf"):
            raise ValueError(f"mode must be multi_hot or tfidf, got {mode!r}")
        idf = None if data.get("idf") is None else np.asarray(data["idf"], dtype=np.float32)
        if mode == "tfidf" and (idf is None or idf.shape != (len(tokens),) or not np.isfinite(idf).all()):
            raise ValueError(f"tfidf needs one finite idf weight per token ({len(tokens)})")
        return cls({t: i for i, t in enumerate(tokens)}, ngram_max, mode, idf)


def padded_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (column ids, values) -> (ids int64 [N, K], weights float32 [N, K]), padded with id 0 and weight 0; K >= 1."""
    width = max([1, *(len(ids) for ids, _ in rows)])
    ids = np.zeros((len(rows), width), np.int64)
    weights = np.zeros((len(rows), width), np.float32)
    for row, (columns, values) in enumerate(rows):
        ids[row, : len(columns)] = columns
        weights[row, : len(values)] = values
    return ids, weights


def dense_to_padded(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense feature rows [N, V] -> the same rows as `padded_rows` gives them (the export's parity check feeds both graphs)."""
    return padded_rows([(np.flatnonzero(row), row[np.flatnonzero(row)].astype(np.float32)) for row in dense])


def check_text(text: Any, max_chars: int) -> str:
    """Validate one review: a non-empty string no longer than `max_chars`."""
    if not isinstance(text, str):
        raise InputError(f"must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("is empty")
    if len(text) > max_chars:
        raise InputError(f"has {len(text):,} characters, more than the limit of {max_chars:,}")
    return text


# ---------------------------------------------------------------- images

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half a picture


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes model input: decoded, upright, RGB, resized to width x height."""

    width: int = 224
    height: int = 224
    resample: str = "bilinear"
    background: tuple[int, int, int] = (255, 255, 255)  # transparent pixels become this

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "image",
            "width": self.width,
            "height": self.height,
            "resample": self.resample,
            "color": "RGB",
            "alpha_background": list(self.background),
            "exif_orientation": "applied",
            "animated": "first frame",
            "dtype": "uint8",
            "layout": "NHWC",
            "formats": list(IMAGE_FORMATS),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageSpec:
        """A version's image block; ValueError naming what is wrong (a bad `resample` blamed every client's image)."""
        width, height, resample, background = data["width"], data["height"], data["resample"], data["alpha_background"]
        for name, side in (("width", width), ("height", height)):
            if not isinstance(side, int) or isinstance(side, bool) or not 1 <= side <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be an integer from 1 to {MAX_IMAGE_SIDE}, got {side!r}")
        if not isinstance(resample, str) or resample.upper() not in Image.Resampling.__members__:
            raise ValueError(f"resample must be one of {', '.join(m.lower() for m in Image.Resampling.__members__)}; got {resample!r}")
        if not isinstance(background, list) or len(background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in background):
            raise ValueError(f"alpha_background must be 3 integers from 0 to 255, got {background!r}")
        return cls(width, height, resample, (background[0], background[1], background[2]))


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit or float grayscale: scale to 8 bits instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        top = float(array.max()) or 1.0
        image = Image.fromarray((array * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGB


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Parse an image's header only: format and size are checked before anything is decoded.

    Cheap (microseconds), so it can run where decoding must not (the event loop); a
    decompression bomb costs nothing. The image returned is decoded by `decode_opened`.
    """
    if not data:
        raise InputError("is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise InputError(f"is not a supported image ({', '.join(IMAGE_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"has more than {max_pixels:,} pixels") from None
    except Exception as exc:  # Pillow raises many types for mangled headers
        raise InputError(f"is truncated or corrupt ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InputError(f"is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}")
    return image


def decode_opened(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """An image from `open_image` -> uint8 array (height, width, 3), upright RGB at the spec's size.

    JPEGs are decoded at a reduced scale when the target is much smaller (Pillow's draft
    mode): several times faster, and the same in training and serving because both call
    this function. Pillow releases the GIL while it decodes and resizes.
    """
    try:
        if image.format == "JPEG":
            image.draft("RGB", (spec.width, spec.height))
        image.load()  # GIF/WebP: the first frame
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image, spec.background)
        resample = Image.Resampling[spec.resample.upper()]
        if image.size != (spec.width, spec.height):
            image = image.resize((spec.width, spec.height), resample)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"is truncated or corrupt ({image.format}: {exc})") from None
    return np.asarray(image, dtype=np.uint8)


def decode_image(data: bytes, spec: ImageSpec, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Bytes of a JPEG/PNG/WebP/BMP/GIF -> uint8 array (height, width, 3): `open_image`, then `decode_opened`."""
    return decode_opened(open_image(data, max_pixels), spec)


# ---------------------------------------------------------------- tabular features


def match_names(available: Iterable[str], wanted: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Case-insensitive name matching (feature names, column names): ({wanted: available}, missing)."""
    by_upper = {str(name).upper(): name for name in available}
    found = {name: by_upper[name.upper()] for name in wanted if name.upper() in by_upper}
    return found, [name for name in wanted if name not in found]


@dataclass
class StandardScaler:
    """Per-feature normalisation with the training set's mean and standard deviation.

    Features named in `log1p` are first replaced by log(1 + x): right-skewed ones such
    as CRIM or LSTAT become closer to normal, which the K-fold validation rewarded.
    Those features must be >= 0 (`check` refuses the rest), or log1p would give NaN.
    `low` and `high` are the raw training rows' per-feature min and max, recorded so a
    client can show the range a model has seen (None for versions fitted before they were).
    """

    feature_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    log1p: tuple[str, ...] = ()
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    _range: tuple[list[float], list[float]] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def fit(cls, x: np.ndarray, feature_names: Sequence[str], log1p: Sequence[str] = ()) -> StandardScaler:
        shaped = cls(tuple(feature_names), np.zeros(x.shape[1]), np.ones(x.shape[1]), tuple(log1p))._shape(x)
        std = shaped.std(axis=0)
        std[std == 0] = 1.0
        raw = np.asarray(x, dtype=np.float64)
        return cls(tuple(feature_names), shaped.mean(axis=0), std, tuple(log1p), raw.min(axis=0), raw.max(axis=0))

    def _shape(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=np.float64)
        if self.log1p:
            columns = [self.feature_names.index(name) for name in self.log1p]
            x[:, columns] = np.log1p(x[:, columns])
        return x

    def _unshape(self, row: np.ndarray) -> np.ndarray:
        row = np.array(row, dtype=np.float64)
        if self.log1p:
            columns = [self.feature_names.index(name) for name in self.log1p]
            row[columns] = np.expm1(row[columns])
        return row

    def check(self, row: np.ndarray) -> np.ndarray:
        """Refuse a row the model cannot take: a negative log-scaled feature, or one too large for float32 once scaled.

        Either would reach the model as NaN or infinity and come back as a NaN price
        (1e300 for NOX did), which JSON cannot carry.
        """
        for name in self.log1p:
            value = row[self.feature_names.index(name)]
            if value < 0:
                raise InputError(f"feature {name} must be >= 0, got {value}")
        for name, value, low, high in zip(self.feature_names, row.tolist(), *self._finite_range()):
            if not low <= value <= high:
                raise InputError(f"feature {name} is {value:g}, too large for the model (out of float32 range once scaled)")
        return row

    def _finite_range(self) -> tuple[list[float], list[float]]:
        """Per feature, the raw values whose scaled value fits in float32 (log-scaled ones always do)."""
        if self._range is None:
            span = np.finfo(np.float32).max * 0.5 * self.std
            low, high = (self.mean - span).tolist(), (self.mean + span).tolist()
            for name in self.log1p:
                i = self.feature_names.index(name)
                low[i], high[i] = -math.inf, math.inf
            self._range = (low, high)
        return self._range

    def transform(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # an overflow becomes inf, which check() refuses
            return ((self._shape(x) - self.mean) / self.std).astype(np.float32)

    def inverse_example(self) -> np.ndarray:
        """A typical raw row (the training mean, mapped back through log1p) for smoke tests."""
        return self._unshape(self.mean)

    def ranges(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(low, high, seen): the training rows' min and max when recorded (seen=True); otherwise an
        estimate, mean ± 2 std in the scaled space mapped back through log1p (log features stay >= 0)."""
        if self.low is not None and self.high is not None:
            return self.low, self.high, True
        low, high = self._unshape(self.mean - 2 * self.std), self._unshape(self.mean + 2 * self.std)
        if self.log1p:
            columns = [self.feature_names.index(name) for name in self.log1p]
            low[columns] = np.maximum(low[columns], 0.0)
        return low, high, False

    def to_json(self) -> dict[str, Any]:
        data = {"features": list(self.feature_names), "log1p": list(self.log1p), "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.low is not None and self.high is not None:
            data |= {"min": self.low.tolist(), "max": self.high.tolist()}
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StandardScaler:
        """A saved scaler; ValueError naming what is wrong with a damaged one (checked here, not at the first request)."""
        features, log1p = data["features"], data.get("log1p", [])
        if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
            raise ValueError("features must be a non-empty list of names")
        if not isinstance(log1p, list) or not set(log1p) <= set(features):
            raise ValueError(f"log1p must name features of the scaler; {sorted(set(map(str, log1p)) - set(features))} are not")
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mean", "std", "min", "max") if k in data or k in ("mean", "std")}
        for key, array in arrays.items():
            if array.shape != (len(features),) or not np.isfinite(array).all():
                raise ValueError(f"{key} must hold one finite number per feature ({len(features)})")
        if (arrays["std"] <= 0).any():
            raise ValueError("std must be positive")
        return cls(tuple(features), arrays["mean"], arrays["std"], tuple(log1p), arrays.get("min"), arrays.get("max"))


def category_text(value: Any) -> str | None:
    """A categorical cell as training recorded it: text as it is, a whole number without ".0" (a CSV's 3 is 3.0 once parsed)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return str(int(value)) if float(value).is_integer() else str(float(value))
    return None


def feature_row(row: Any, feature_names: Sequence[str], categories: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """One row as an object {name: value} (names case-insensitive) or a list in feature order.

    A categorical feature (named in `categories`) holds one of the categories seen in
    training; the row carries its index there, as a number like every other feature.
    """
    if isinstance(row, Mapping):
        found, missing = match_names(row, feature_names)
        extra = set(row) - set(found.values())
        unknown = heapq.nsmallest(MAX_NAMES_QUOTED, (str(k)[:100] for k in extra))  # a row may carry a million keys
        if len(extra) > MAX_NAMES_QUOTED:
            unknown.append(f"... {len(extra) - MAX_NAMES_QUOTED:,} more")
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing features {missing}")
            if unknown:
                parts.append(f"unknown features {unknown}")
            raise InputError("; ".join(parts) + f" (expected {list(feature_names)})")
        values = [row[found[name]] for name in feature_names]
    elif isinstance(row, Sequence) and not isinstance(row, (str, bytes)):
        if len(row) != len(feature_names):
            raise InputError(f"has {len(row)} values, expected {len(feature_names)} ({', '.join(feature_names)})")
        values = list(row)
    else:
        raise InputError(f"must be an object of named features or a list of {len(feature_names)} {'values' if categories else 'numbers'}")
    out = np.empty(len(feature_names), dtype=np.float64)
    for i, (name, value) in enumerate(zip(feature_names, values)):
        if categories and name in categories:
            out[i] = _category_index(name, value, categories[name])
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"feature {name} must be a number, got {type(value).__name__}")
        try:
            number = float(value)  # JSON integers have no limit: 400 nines raise OverflowError here (it answered 500)
        except OverflowError:
            raise InputError(f"feature {name} is an integer of {len(str(abs(value))):,} digits, too large for a number") from None
        if not math.isfinite(number):
            raise InputError(f"feature {name} is {value}; only finite numbers are accepted")
        out[i] = number
    return out


def _category_index(name: str, value: Any, known: Sequence[str]) -> int:
    text = category_text(value)
    if text is None:
        raise InputError(f"feature {name} must be one of its categories (a string), got {type(value).__name__}")
    try:
        return known.index(text)
    except ValueError:
        shown = ", ".join(repr(c) for c in known[:MAX_NAMES_QUOTED]) + (", ..." if len(known) > MAX_NAMES_QUOTED else "")
        raise InputError(f"feature {name} is {text[:100]!r}, not a category the model was trained on ({shown})") from None


@dataclass
class TableEncoder:
    """A table row -> the model's input: numeric columns scaled (StandardScaler), categorical ones one-hot.

    `columns` is what a request row holds, in order; a checked row is a float array in that
    order where a categorical column holds its category's index. The model's input is the
    scaled numeric columns (in their order), then one block of one-hot columns per
    categorical column, with the categories seen in training (scaler.json records both).
    A model without categorical columns (Boston housing) is exactly its StandardScaler.
    """

    columns: tuple[str, ...]
    scaler: StandardScaler  # over the numeric columns
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._numeric = [self.columns.index(name) for name in self.scaler.feature_names]
        self._categorical = [(self.columns.index(name), len(known)) for name, known in self.categories.items()]

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.columns

    @property
    def log1p(self) -> tuple[str, ...]:
        return self.scaler.log1p

    @property
    def width(self) -> int:
        """Columns of the model's input."""
        return len(self._numeric) + sum(n for _, n in self._categorical)

    def check(self, value: Any) -> np.ndarray:
        row = feature_row(value, self.columns, self.categories)
        self.scaler.check(row[self._numeric])
        return row

    def transform(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.columns))
        parts = [self.scaler.transform(rows[:, self._numeric])]
        for column, size in self._categorical:
            parts.append(np.eye(size, dtype=np.float32)[rows[:, column].astype(np.int64)])
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def inverse_example(self) -> np.ndarray:
        """A typical row: the numeric training means, the first category of each categorical column."""
        row = np.zeros(len(self.columns))
        row[self._numeric] = self.scaler.inverse_example()
        return row

    def ranges(self) -> tuple[dict[str, float], dict[str, float], bool]:
        """Per numeric column, (low, high) as StandardScaler.ranges() gives them, by name; and whether they were seen."""
        low, high, seen = self.scaler.ranges()
        names = self.scaler.feature_names
        return dict(zip(names, map(float, low))), dict(zip(names, map(float, high))), seen

    def to_json(self) -> dict[str, Any]:
        return self.scaler.to_json() | {"columns": list(self.columns), "categorical": {k: list(v) for k, v in self.categories.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TableEncoder:
        scaler = StandardScaler.from_json(data)
        categories = {str(k): tuple(str(c) for c in v) for k, v in (data.get("categorical") or {}).items()}
        return cls(tuple(data.get("columns") or scaler.feature_names), scaler, categories)
