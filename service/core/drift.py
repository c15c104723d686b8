"""Reference profiles of a version's data and how far live data has moved from them.

A profile (profile.json in the version directory, written at export or added later by
`python -m training profile`) holds, per feature, a histogram with fixed bins: numeric
features (a table's columns, a text's length, an image's brightness, a predicted value)
get edges at the deciles of the reference values, categorical ones (the predicted label)
one bin per category plus one for anything else. Live values are put into the same bins
and compared with the reference proportions.

The score is the Jensen-Shannon distance (base 2): bounded in [0, 1] whatever the number
of bins, symmetric, and defined when a bin is empty on one side (a label the reference
never predicted), so one threshold fits every feature. The population stability index
(PSI) is reported beside it because many teams know its rules of thumb (0.1 moderate,
0.25 large); it needs a floor on empty bins (PSI_FLOOR), which makes it jumpy there.

What is summarized per kind (a text's length and out-of-vocabulary share, an image's size,
brightness and saturation) lives in service/core/tasks/profiles.py; this module knows
histograms only, and the same code bins reference and live values.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.core.config import Settings
from service.core.errors import InputError, RegistryError
from service.core.files import atomic_write_text
from service.core.tasks.profiles import INPUT, OUTPUT, profiler

PROFILE_FILE = "profile.json"
METRIC_NAME = "Jensen-Shannon distance (base 2)"
PROFILE_SCHEMA_VERSION = 1
MAX_PROFILE_BYTES = 1024 * 1024  # a profile is a few KB; a larger file is not read
NUMERIC, CATEGORICAL = "numeric", "categorical"
BINS = 10  # numeric features: edges at the reference's deciles (fewer where values repeat) ...
MIN_PER_BIN = 20  # ... or fewer bins where the reference is small: a bin's reference share rests on 20+ values
MISSING = -1  # the bin index of a value that could not be summarized (NaN): counted nowhere
OTHER = "(other)"  # categorical features: the bin of every value the reference did not list
PSI_FLOOR = 1e-4  # PSI takes the log of proportions: an empty bin counts as this share
MAX_PROFILE_ITEMS = 5_000  # per split: more are sampled (seeded) down to this many
CHUNK = 64  # items summarized or predicted at once while profiling


@dataclass(frozen=True)
class FeatureProfile:
    """One feature's reference histogram: numeric (interior `edges`) or categorical (`categories` + OTHER)."""

    name: str
    role: str  # INPUT or OUTPUT
    type: str  # NUMERIC or CATEGORICAL
    reference: tuple[float, ...]  # proportion per bin
    count: int  # reference values behind the proportions
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    summary: dict[str, float] = field(default_factory=dict)  # mean and quantiles of the reference values (numeric)

    @property
    def bins(self) -> int:
        return len(self.reference)

    def bin_indices(self, values: Sequence[Any]) -> np.ndarray:
        """Each value's bin: numeric bin i holds (edges[i-1], edges[i]], NaN is MISSING; categorical, its category or OTHER (last)."""
        if self.type == NUMERIC:
            numbers = np.asarray(values, dtype=np.float64)
            indices = np.searchsorted(np.asarray(self.edges), numbers, side="left").astype(np.int16)
            indices[~np.isfinite(numbers)] = MISSING
            return indices
        index = {c: i for i, c in enumerate(self.categories)}
        return np.fromiter((index.get(str(v), len(self.categories)) for v in values), dtype=np.int16, count=len(values))

    def bin_labels(self) -> list[str]:
        if self.type == CATEGORICAL:
            return [*self.categories, OTHER]
        edges = [f"{e:.4g}" for e in self.edges]
        if not edges:
            return ["all"]
        return [f"<= {edges[0]}", *(f"({a}, {b}]" for a, b in itertools.pairwise(edges)), f"> {edges[-1]}"]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "role": self.role, "type": self.type, "count": self.count}
        data |= {"edges": list(self.edges)} if self.type == NUMERIC else {"categories": list(self.categories)}
        return data | {"reference": [round(p, 6) for p in self.reference], "summary": self.summary}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureProfile:
        feature = cls(
            str(data["name"]),
            str(data["role"]),
            str(data["type"]),
            tuple(float(p) for p in data["reference"]),
            int(data["count"]),
            tuple(float(e) for e in data.get("edges", ())),
            tuple(str(c) for c in data.get("categories", ())),
            {str(k): float(v) for k, v in data.get("summary", {}).items()},
        )
        expected = len(feature.edges) + 1 if feature.type == NUMERIC else len(feature.categories) + 1
        if feature.type not in (NUMERIC, CATEGORICAL) or feature.role not in (INPUT, OUTPUT) or feature.bins != expected:
            raise ValueError(
                f"feature {feature.name!r}: {feature.type}/{feature.role} with {feature.bins} proportions, expected {expected}"
            )
        return feature


def numeric_feature(name: str, role: str, values: Sequence[float], bins: int = BINS) -> FeatureProfile:
    """Edges at the quantiles of `values` (deciles, fewer for under 200 values; duplicates merged), and each bin's share."""
    numbers = np.asarray(values, dtype=np.float64)
    numbers = numbers[np.isfinite(numbers)]
    if not len(numbers):
        raise ValueError(f"feature {name!r}: no finite reference values")
    bins = max(2, min(bins, len(numbers) // MIN_PER_BIN))
    edges = tuple(float(e) for e in np.unique(np.quantile(numbers, np.arange(1, bins) / bins)))
    quantiles = np.quantile(numbers, [0.0, 0.05, 0.5, 0.95, 1.0])
    summary = {"mean": float(numbers.mean()), "std": float(numbers.std())} | dict(
        zip(("min", "p05", "p50", "p95", "max"), map(float, quantiles))
    )
    feature = FeatureProfile(name, role, NUMERIC, (), len(numbers), edges, (), summary)
    return FeatureProfile(name, role, NUMERIC, proportions(feature, numbers), len(numbers), edges, (), summary)


def categorical_feature(name: str, role: str, values: Sequence[Any], categories: Sequence[str]) -> FeatureProfile:
    feature = FeatureProfile(name, role, CATEGORICAL, (), len(values), (), tuple(categories))
    return FeatureProfile(name, role, CATEGORICAL, proportions(feature, values), len(values), (), tuple(categories))


def proportions(feature: FeatureProfile, values: Sequence[Any]) -> tuple[float, ...]:
    bins = len(feature.edges) + 1 if feature.type == NUMERIC else len(feature.categories) + 1
    indices = feature.bin_indices(values)
    counts = np.bincount(indices[indices != MISSING], minlength=bins).astype(np.float64)
    return tuple(float(c) for c in counts / max(counts.sum(), 1.0))


# ---------------------------------------------------------------- distances


def js_distance(reference: Sequence[float], counts: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between reference proportions and live counts."""
    p = np.asarray(reference, dtype=np.float64)
    q = np.asarray(counts, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        present = a > 0
        return float(np.sum(a[present] * np.log2(a[present] / m[present])))

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def psi(reference: Sequence[float], counts: Sequence[float]) -> float:
    """Population stability index: sum of (live - reference) * ln(live / reference), empty bins floored at PSI_FLOOR."""
    p = np.maximum(np.asarray(reference, dtype=np.float64), PSI_FLOOR)
    q = np.asarray(counts, dtype=np.float64)
    q = np.maximum(q / q.sum(), PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def compare(feature: FeatureProfile, counts: Sequence[int], threshold: float) -> dict[str, Any]:
    """One feature's live counts against its reference: both scores, whether it drifted, and the two histograms."""
    total = int(sum(counts))
    score = js_distance(feature.reference, counts) if total else None
    return {
        "name": feature.name,
        "role": feature.role,
        "type": feature.type,
        "score": None if score is None else round(score, 6),
        "psi": round(psi(feature.reference, counts), 6) if total else None,
        "drifted": score is not None and score > threshold,
        "bins": feature.bin_labels(),
        "reference": [round(p, 6) for p in feature.reference],
        "live": [int(c) for c in counts],
    }


# ---------------------------------------------------------------- the profile of a version


@dataclass(frozen=True)
class Profile:
    kind: str  # the task's assets_kind: a profile is only read for versions of its kind
    features: tuple[FeatureProfile, ...]
    created_at: str
    sources: dict[str, Any]

    def feature(self, name: str) -> FeatureProfile:
        return next(f for f in self.features if f.name == name)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": PROFILE_SCHEMA_VERSION,
            "kind": self.kind,
            "created_at": self.created_at,
            "metric": "jensen-shannon distance (base 2) between reference and live histograms; psi beside it",
            "sources": self.sources,
            "features": [f.to_json() for f in self.features],
        }

    @classmethod
    def from_json(cls, data: Any) -> Profile:
        if not isinstance(data, dict) or data.get("schema_version") != PROFILE_SCHEMA_VERSION:
            raise ValueError(f"not a version {PROFILE_SCHEMA_VERSION} profile")
        features = tuple(FeatureProfile.from_json(f) for f in data["features"])
        if len({f.name for f in features}) != len(features):
            raise ValueError("feature names repeat")
        return cls(str(data["kind"]), features, str(data.get("created_at", "")), dict(data.get("sources", {})))

    def write(self, version_dir: Path) -> Path:
        path = version_dir / PROFILE_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")
        return path


def read_profile(version_dir: Path, kind: str) -> Profile:
    """The profile of a version; RegistryError saying why there is none that can be used."""
    path = version_dir / PROFILE_FILE
    if not path.is_file():
        raise RegistryError(
            f"no {PROFILE_FILE} (the version was published before profiles existed); "
            "add one without retraining: python -m training profile NAME VERSION --data ..."
        )
    try:
        raw = path.read_bytes()[: MAX_PROFILE_BYTES + 1]
        if len(raw) > MAX_PROFILE_BYTES:
            raise ValueError(f"larger than {MAX_PROFILE_BYTES:,} bytes")
        profile = Profile.from_json(json.loads(raw))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"{PROFILE_FILE} is unusable: {str(exc)[:300]}") from None
    if profile.kind != kind:
        raise RegistryError(f"{PROFILE_FILE} profiles a {profile.kind!r} model, this version is {kind!r}")
    return profile


# ---------------------------------------------------------------- building a profile from a loaded version


def sample_items(items: Sequence[Any], most: int = MAX_PROFILE_ITEMS, seed: int = 0) -> list[Any]:
    """At most `most` items, a seeded sample in their original order."""
    if len(items) <= most:
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=most, replace=False))
    return [items[i] for i in keep]


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def summarize_inputs(model: Any, items: Sequence[Any], settings: Settings, validated: bool = False) -> tuple[dict[str, list[float]], int]:
    """Per input feature, the summaries of `items`; and how many the task's `check` refused.

    `items` are raw inputs as `check` takes them, or with `validated` items that passed validation already.
    """
    kind = profiler(model.task)
    values: dict[str, list[float]] = {name: [] for name in kind.input_names(model.assets)}
    refused = 0
    for chunk in _chunks(items):
        checked = model.task.conform(chunk, model.assets) if validated else []
        for value in [] if validated else chunk:
            try:
                item = model.task.check(value, model.assets, settings)
                model.task.decode(item, model.assets, settings)  # as a request would (an image's pixels are then on it)
                checked.append(item)
            except InputError:
                refused += 1
        for name, column in kind.summarize(kind.capture(checked), model.assets).items():
            values[name].extend(float(v) for v in column)
    return values, refused


def summarize_outputs(model: Any, held_out: Sequence[Any]) -> dict[str, list[Any]]:
    """Per output feature, the model's answers on `held_out` items (validated items, as redeploy scores them)."""
    kind = profiler(model.task)
    values: dict[str, list[Any]] = {}
    for chunk in _chunks(held_out):
        answers = model.predict(model.task.conform(chunk, model.assets))
        for name, column in kind.answer_features(answers).items():
            values.setdefault(name, []).extend(column)
    return values


def build_profile(model: Any, inputs: Sequence[Any], held_out: Sequence[Any], settings: Settings, source: str) -> Profile:
    """The profile of a loaded version (service/core/runtime.LoadedModel).

    `inputs`: training inputs as `check` takes them (texts, feature rows, image paths);
    `held_out`: validated held-out items (the test split). Inputs are profiled on the
    training split, except the features the kind names as held-out ones (a text's
    out-of-vocabulary share: the vocabulary was chosen from the training texts, so on
    them it is low by construction); answers on the held-out split (a model's answers on
    its own training data are more confident than on anything new).
    """
    kind = profiler(model.task)
    inputs, held_out = sample_items(inputs), sample_items(held_out)
    train_values, refused = summarize_inputs(model, inputs, settings)
    held_values, _ = summarize_inputs(model, held_out, settings, validated=True) if kind.held_out_inputs else ({}, 0)
    features = [
        numeric_feature(name, INPUT, held_values[name] if name in kind.held_out_inputs else column) for name, column in train_values.items()
    ]
    for name, column in summarize_outputs(model, held_out).items():
        if kind.is_categorical(name):
            features.append(categorical_feature(name, OUTPUT, column, model.labels))
        else:
            features.append(numeric_feature(name, OUTPUT, column))
    sources = {
        "data": source,
        "inputs": f"training split, {len(inputs) - refused:,} items" + (f" ({refused} refused by the model's checks)" if refused else ""),
        "outputs": f"the model's answers on the held-out split, {len(held_out):,} items",
        "answers_of": model.model_file.path.name,
        "held_out_inputs": sorted(kind.held_out_inputs),
        "max_items_per_split": MAX_PROFILE_ITEMS,
    }
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return Profile(model.task.assets_kind, tuple(features), created, sources)
