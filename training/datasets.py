"""Data loaders for the three models: the Keras loaders online, local files offline.

Each loader returns the arrays plus a `source` record (what was read, sha256 of every
file or a fingerprint of a folder, sample counts) that goes into metadata.json, so a
model always says which data it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.errors import DataError, InputError, UsageError
from service.core.preprocessing import ImageSpec, decode_image, match_names
from service.core.registry import sha256_file
from service.core.tasks.batch_inputs import TEXT_COLUMNS, pick_column

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
CATS_DOGS_URL = "https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip"
SENTIMENT_LABELS = ["negative", "positive"]
_POSITIVE = {"1", "pos", "positive", "true", "yes"}
_NEGATIVE = {"0", "neg", "negative", "false", "no"}
LABEL_COLUMNS = ("label", "sentiment", "labels", "target", "polarity")
BOSTON_FEATURES = (
    "CRIM", "ZN", "INDUS", "CHAS", "NOX", "RM", "AGE", "DIS", "RAD", "TAX", "PTRATIO", "B", "LSTAT",
)  # fmt: skip
# What each feature means (Harrison & Rubinfeld, as the dataset's documentation gives it): recorded in a version's
# metadata (preprocessing.feature_descriptions), so that a client such as the playground can say what a code is.
BOSTON_FEATURE_DESCRIPTIONS = {
    "CRIM": "per-capita crime rate by town",
    "ZN": "share of residential land zoned for lots over 25,000 sq. ft. (%)",
    "INDUS": "share of non-retail business acres per town (%)",
    "CHAS": "bounds the Charles River: 1 yes, 0 no",
    "NOX": "nitric oxides concentration (parts per 10 million)",
    "RM": "average number of rooms per dwelling",
    "AGE": "share of owner-occupied units built before 1940 (%)",
    "DIS": "weighted distance to five Boston employment centres",
    "RAD": "index of accessibility to radial highways",
    "TAX": "full-value property-tax rate per $10,000",
    "PTRATIO": "pupil-teacher ratio by town",
    "B": "1000 (Bk - 0.63)^2, Bk the share of Black residents by town",
    "LSTAT": "share of the population of lower status (%)",
}
KERAS_BOSTON_SEED = 113
KERAS_BOSTON_TEST_SPLIT = 0.2


def file_record(path: Path) -> dict[str, Any]:
    return {"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def fingerprint(items: Sequence[tuple[str, str]]) -> str:
    """sha256 over sorted (name, content-hash) pairs: the same data gives the same value."""
    digest = hashlib.sha256()
    for name, content_hash in sorted(items):
        digest.update(f"{name}\0{content_hash}\n".encode())
    return digest.hexdigest()


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out): a seeded random split of n rows."""
    order = np.random.RandomState(seed).permutation(n)
    n_test = round(n * test_fraction)
    return order[n_test:], order[:n_test]


# ---------------------------------------------------------------- IMDB reviews


@dataclass
class TextData:
    train_texts: list[str]
    train_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)


def _label_value(raw: Any) -> int:
    text = str(raw).strip().lower()
    if text in _POSITIVE:
        return 1
    if text in _NEGATIVE:
        return 0
    raise DataError(f"label {raw!r} is neither positive (1/pos/positive) nor negative (0/neg/negative)")


def _iter_aclimdb_tar(path: Path) -> Iterator[tuple[str, str, int]]:
    """(split, text, label) for every review in an aclImdb tar archive, read in place."""
    with tarfile.open(path) as archive:
        for member in archive:
            parts = member.name.split("/")
            if member.isfile() and len(parts) >= 4 and parts[-3] in ("train", "test") and parts[-2] in ("pos", "neg"):
                handle = archive.extractfile(member)
                assert handle is not None
                yield parts[-3], handle.read().decode("utf-8"), int(parts[-2] == "pos")


def _iter_aclimdb_dir(root: Path) -> Iterator[tuple[str, str, int]]:
    for split in ("train", "test"):
        for polarity in ("neg", "pos"):
            for file in sorted((root / split / polarity).glob("*.txt")):
                yield split, file.read_text(encoding="utf-8"), int(polarity == "pos")


def _numbers(array: np.ndarray, path: Path, name: str) -> np.ndarray:
    """An array as float64; DataError naming the first cell that is not a number."""
    try:
        return np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: every value of {name} must be a number ({exc})") from None


def _read_csv(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable as CSV ({str(exc).strip()})") from None


def _read_table(path: Path) -> list[dict[str, Any]]:
    return read_frame(path).to_dict("records")


def read_frame(path: Path) -> Any:
    """A CSV, JSONL or Parquet file as a pandas DataFrame; DataError (one line) when it is none of them."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    try:
        if path.suffix == ".csv":
            frame = _read_csv(path)
        elif path.suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=path.suffix == ".jsonl")
        elif path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported table format (use .csv, .jsonl or .parquet)")
    except DataError:
        raise
    except (ValueError, OSError) as exc:  # invalid JSON lines, not a Parquet file
        raise DataError(f"{path}: not readable as {path.suffix[1:]} ({str(exc).strip()[:300]})") from None
    return frame


def find_column(columns: Sequence[str], wanted: str, option: str, path: Path) -> str:
    """The column named `wanted` (any case); DataError naming the columns there are."""
    found, missing = match_names(columns, [wanted])
    if missing:
        raise DataError(f"{path}: no column {wanted!r} ({option}); columns are {list(columns)}")
    return found[wanted]


def _pick_column(columns: Sequence[str], candidates: Sequence[str], what: str, path: Path) -> str:
    try:
        return pick_column(columns, None, candidates)
    except UsageError as exc:
        raise DataError(f"{path}: no {what} column: {exc}") from None


def _table_reviews(path: Path) -> tuple[list[str], np.ndarray, list[str] | None]:
    rows = _read_table(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    columns = list(rows[0])
    text_col = _pick_column(columns, TEXT_COLUMNS, "text", path)
    label_col = _pick_column(columns, LABEL_COLUMNS, "label", path)
    split_col = next((c for c in columns if c.lower() == "split"), None)
    texts = [str(r[text_col]) for r in rows]
    labels = np.array([_label_value(r[label_col]) for r in rows], dtype=np.float32)
    splits = [str(r[split_col]).lower() for r in rows] if split_col else None
    return texts, labels, splits


def _reviews_path(data: str | None) -> Path:
    if data is None:
        import keras

        try:
            return Path(keras.utils.get_file("aclImdb_v1.tar.gz", ACLIMDB_URL))
        except Exception as exc:
            raise DataError(f"could not download aclImdb ({exc}); offline, pass --data PATH (folder, .tar.gz, .csv or .jsonl)") from exc
    path = Path(data)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    return path


def _aclimdb(path: Path) -> tuple[TextData, list[dict[str, Any]], str]:
    """The aclImdb folder or archive, split by its own train/ and test/ folders."""
    if path.is_dir():
        root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
        if not (root / "train" / "pos").is_dir():
            raise DataError(f"{path}: expected the aclImdb layout train/{{pos,neg}}, test/{{pos,neg}}")
        reviews = list(_iter_aclimdb_dir(root))
        records = [{"path": str(root), "layout": "aclImdb folder"}]
    else:
        reviews = list(_iter_aclimdb_tar(path))
        records = [file_record(path) | {"layout": "aclImdb archive"}]
    train = [(t, y) for s, t, y in reviews if s == "train"]
    test = [(t, y) for s, t, y in reviews if s == "test"]
    if not train or not test:
        raise DataError(f"{path}: found {len(train)} train and {len(test)} test reviews; need both")
    result = TextData(
        [t for t, _ in train], np.array([y for _, y in train], np.float32),
        [t for t, _ in test], np.array([y for _, y in test], np.float32),
    )  # fmt: skip
    return result, records, "aclImdb train/test folders"


def _review_table(path: Path, test_data: str | None, test_fraction: float, seed: int) -> tuple[TextData, list[dict[str, Any]], str]:
    """A CSV/JSONL/Parquet table, split by --test-data, its split column or a seeded random split."""
    texts, labels, splits = _table_reviews(path)
    records = [file_record(path)]
    if test_data is not None:
        test_texts, test_labels, _ = _table_reviews(Path(test_data))
        records.append(file_record(Path(test_data)))
        return TextData(texts, labels, test_texts, test_labels), records, "separate --test-data file"
    if splits is not None:
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        test_idx = [i for i, s in enumerate(splits) if s == "test"]
        rule = "the table's split column"
    else:
        train_idx, test_idx = split_indices(len(texts), test_fraction, seed)
        rule = f"seeded random split, test fraction {test_fraction}, seed {seed}"
    return TextData([texts[i] for i in train_idx], labels[train_idx], [texts[i] for i in test_idx], labels[test_idx]), records, rule


def load_reviews(data: str | None, test_data: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> TextData:
    """IMDB reviews from aclImdb (folder or .tar.gz; downloaded when `data` is None) or a CSV/JSONL table."""
    path = _reviews_path(data)
    if path.is_dir() or path.name.endswith((".tar.gz", ".tgz", ".tar")):
        result, records, split_rule = _aclimdb(path)
    else:
        result, records, split_rule = _review_table(path, test_data, test_fraction, seed)
    digest = fingerprint(
        [(f"{split}/{i}", hashlib.sha256(f"{y}:{t}".encode()).hexdigest())
         for split, texts_, ys in (("train", result.train_texts, result.train_labels), ("test", result.test_texts, result.test_labels))
         for i, (t, y) in enumerate(zip(texts_, ys))]
    )  # fmt: skip
    result.source = {
        "files": records,
        "split": split_rule,
        "samples": {"train": len(result.train_texts), "test": len(result.test_texts)},
        "fingerprint": digest,
    }
    return result


# ---------------------------------------------------------------- Boston housing


@dataclass
class TabularData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...] = BOSTON_FEATURES
    source: dict[str, Any] = field(default_factory=dict)


def _keras_split(x: np.ndarray, y: np.ndarray, seed: int, test_split: float) -> tuple[np.ndarray, ...]:
    """The exact shuffle-and-cut of `keras.datasets.boston_housing.load_data`."""
    indices = np.arange(len(x))
    np.random.RandomState(seed).shuffle(indices)
    x, y = x[indices], y[indices]
    cut = int(len(x) * (1 - test_split))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_housing(data: str | None) -> TabularData:
    """Boston housing from Keras (downloaded when `data` is None), a Keras-layout .npz, or a CSV with MEDV."""
    split_rule = f"keras boston_housing split (seed {KERAS_BOSTON_SEED}, test_split {KERAS_BOSTON_TEST_SPLIT})"
    if data is None:
        import keras

        try:
            (x_train, y_train), (x_test, y_test) = keras.datasets.boston_housing.load_data()
        except Exception as exc:
            raise DataError(f"could not download Boston housing ({exc}); offline, pass --data PATH (.npz or .csv)") from exc
        records: list[dict[str, Any]] = [{"path": "keras.datasets.boston_housing", "layout": "keras download"}]
    else:
        path = Path(data)
        if not path.is_file():
            raise DataError(f"{path} does not exist")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    x, y = _numbers(arrays["x"], path, "x"), _numbers(arrays["y"], path, "y")
            except DataError:
                raise
            except (OSError, KeyError, ValueError) as exc:  # not an archive, no x or y, object arrays
                raise DataError(f"{path}: not a Keras-layout .npz with numeric arrays x and y ({exc})") from None
        elif path.suffix == ".csv":
            frame = _read_csv(path)
            columns, missing = match_names(frame.columns, (*BOSTON_FEATURES, "MEDV"))
            if missing:
                raise DataError(f"{path}: missing columns {missing}")
            try:
                x = frame[[columns[f] for f in BOSTON_FEATURES]].to_numpy(np.float64)
                y = frame[columns["MEDV"]].to_numpy(np.float64)
            except ValueError as exc:  # a cell that is not a number
                raise DataError(f"{path}: every feature and MEDV must be a number ({exc})") from None
        else:
            raise DataError(f"{path}: use a Keras-layout .npz (x, y) or a .csv with the 13 feature columns and MEDV")
        if x.ndim != 2 or x.shape[1] != len(BOSTON_FEATURES) or len(x) != len(y):
            raise DataError(f"{path}: expected x of shape (n, 13) and y of shape (n,), got {x.shape} and {y.shape}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise DataError(f"{path}: contains missing or non-finite values")
        x_train, y_train, x_test, y_test = _keras_split(x, y, KERAS_BOSTON_SEED, KERAS_BOSTON_TEST_SPLIT)
        records = [file_record(path)]
    digest = fingerprint([
        ("x_train", hashlib.sha256(np.ascontiguousarray(x_train, np.float64).tobytes()).hexdigest()),
        ("y_train", hashlib.sha256(np.ascontiguousarray(y_train, np.float64).tobytes()).hexdigest()),
        ("x_test", hashlib.sha256(np.ascontiguousarray(x_test, np.float64).tobytes()).hexdigest()),
        ("y_test", hashlib.sha256(np.ascontiguousarray(y_test, np.float64).tobytes()).hexdigest()),
    ])  # fmt: skip
    source = {"files": records, "split": split_rule, "samples": {"train": len(x_train), "test": len(x_test)}, "fingerprint": digest}
    return TabularData(
        x_train.astype(np.float64), y_train.astype(np.float64), x_test.astype(np.float64), y_test.astype(np.float64), source=source
    )


# ---------------------------------------------------------------- image folders


@dataclass
class ImageSplit:
    images: np.ndarray  # uint8 (n, height, width, 3)
    labels: np.ndarray  # int (n,)
    paths: list[str]


@dataclass
class ImageData:
    class_names: list[str]
    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def _index_folder(folder: Path) -> tuple[list[str], list[str], list[int]]:
    """Class names and files the way `keras.utils.image_dataset_from_directory` sees a folder."""
    import keras

    try:
        dataset = keras.utils.image_dataset_from_directory(folder, labels="inferred", shuffle=False, batch_size=None, verbose=False)
    except ValueError as exc:  # no images at all
        raise DataError(f"{folder}: {exc}") from None
    paths = list(dataset.file_paths)
    class_names = list(dataset.class_names)
    labels = [class_names.index(Path(p).parent.name) for p in paths]
    present = set(labels)
    empty = [name for i, name in enumerate(class_names) if i not in present]
    if empty:
        raise DataError(f"{folder}: class folder(s) {empty} have no images (.jpg, .jpeg, .png, .bmp, .gif); every class needs some")
    return class_names, paths, labels


def _decode_split(paths: Sequence[str], labels: Sequence[int], spec: ImageSpec, skipped: list[dict[str, str]]) -> ImageSplit:
    images, kept_labels, kept_paths = [], [], []
    for path, label in zip(paths, labels):
        try:
            images.append(decode_image(Path(path).read_bytes(), spec))
        except InputError as exc:
            skipped.append({"path": path, "reason": f"image {exc}"})
            continue
        kept_labels.append(label)
        kept_paths.append(path)
    array = np.stack(images) if images else np.zeros((0, spec.height, spec.width, 3), np.uint8)
    return ImageSplit(array, np.array(kept_labels, dtype=np.int64), kept_paths)


def _download_cats_dogs() -> Path:
    import keras

    try:
        extracted = Path(keras.utils.get_file("cats_and_dogs_filtered.zip", CATS_DOGS_URL, extract=True))
    except Exception as exc:
        raise DataError(f"could not download cats vs dogs ({exc}); offline, pass --data FOLDER") from exc
    candidates = [p for p in [extracted, *extracted.glob("*")] if (p / "train").is_dir()]
    if not candidates:
        raise DataError(f"downloaded archive at {extracted} has no train/ folder")
    return candidates[0]


Pair = tuple[list[str], list[int]]  # paths and their labels


def _index_splits(root: Path) -> tuple[list[str], dict[str, Pair]]:
    """Class names and (paths, labels) per split folder found (or "all" for a folder of class folders)."""
    split_dirs = {s: root / s for s in ("train", "validation", "test") if (root / s).is_dir()}
    indexed = {s: _index_folder(d) for s, d in split_dirs.items()} or {"all": _index_folder(root)}
    class_names = next(iter(indexed.values()))[0]
    for split, (names, _, _) in indexed.items():
        if names != class_names:
            raise DataError(f"{root}/{split} has classes {names}, expected {class_names}")
    if len(class_names) < 2:
        raise DataError(f"{root}: need at least two class subfolders, found {class_names}")
    return class_names, {name: (paths, labels) for name, (_, paths, labels) in indexed.items()}


def _assign_splits(root: Path, found: dict[str, Pair], validation_fraction: float, seed: int) -> tuple[Pair, Pair, Pair, str]:
    """(train, validation, test, rule): missing splits carved out of what exists with a seeded split."""

    def carve(pair: Pair, fraction: float) -> tuple[Pair, Pair]:
        paths, labels = pair
        keep, held = split_indices(len(paths), fraction, seed)
        return ([paths[i] for i in sorted(keep)], [labels[i] for i in sorted(keep)]), (
            [paths[i] for i in sorted(held)],
            [labels[i] for i in sorted(held)],
        )

    if "all" in found:
        rest, test = carve(found["all"], 0.15)
        return (
            *carve(rest, validation_fraction),
            test,
            f"one folder, seeded split (seed {seed}): 15% test, {validation_fraction:.0%} of the rest validation",
        )
    if "train" not in found:
        raise DataError(f"{root}: has {sorted(found)} but no train/ folder")
    if "test" in found and "validation" in found:
        return found["train"], found["validation"], found["test"], "train/, validation/ and test/ folders"
    if "test" in found:
        return (
            *carve(found["train"], validation_fraction),
            found["test"],
            f"train/ and test/ folders; validation is {validation_fraction:.0%} of train (seed {seed})",
        )
    if "validation" in found:
        rule = f"train/ and validation/ folders; validation/ is the test set, validation is {validation_fraction:.0%} of train"
        return *carve(found["train"], validation_fraction), found["validation"], rule
    rest, test = carve(found["train"], 0.15)
    return *carve(rest, validation_fraction), test, f"train/ folder only; seeded split (seed {seed})"


def load_image_folders(data: str | None, spec: ImageSpec, validation_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """Images from `root/{train,validation,test}/<class>/` or a single `root/<class>/` folder.

    Missing splits are carved out of what exists with a seeded split: no test/ -> the
    validation folder becomes the test set and validation comes out of train.
    """
    root = _download_cats_dogs() if data is None else Path(data)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    class_names, found = _index_splits(root)
    train, validation, test, rule = _assign_splits(root, found, validation_fraction, seed)
    skipped: list[dict[str, str]] = []
    splits = {name: _decode_split(*pair, spec, skipped) for name, pair in (("train", train), ("validation", validation), ("test", test))}
    for name, split in splits.items():
        if len(split.labels) == 0:
            raise DataError(f"{root}: the {name} split has no readable images")
    all_paths = [p for pair in (train, validation, test) for p in pair[0]]
    digest = fingerprint([(str(Path(p).relative_to(root)), sha256_file(Path(p))) for p in all_paths])
    source = {
        "files": [{"path": str(root), "layout": "class subfolders", "images": len(all_paths)}],
        "split": rule,
        "samples": {name: len(split.labels) for name, split in splits.items()},
        "class_counts": {name: {c: int((split.labels == i).sum()) for i, c in enumerate(class_names)} for name, split in splits.items()},
        "skipped_unreadable": len(skipped),
        "fingerprint": digest,
    }
    return ImageData(class_names, splits["train"], splits["validation"], splits["test"], skipped, source)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
