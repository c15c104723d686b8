"""Small, separable data sets generated inside the tests (a user's clone has no ../shared)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets import BOSTON_FEATURES

POSITIVE_WORDS = ["wonderful", "brilliant", "moving", "superb", "delightful", "masterpiece", "loved", "beautiful", "excellent", "charming"]
NEGATIVE_WORDS = ["awful", "boring", "terrible", "dull", "waste", "horrible", "worst", "stupid", "mess", "annoying"]
NEUTRAL_WORDS = ["the", "film", "movie", "plot", "actor", "scene", "story", "director", "camera", "music", "and", "was", "it", "a"]


def review(rng: np.random.Generator, positive: bool, length: int = 30) -> str:
    signal = POSITIVE_WORDS if positive else NEGATIVE_WORDS
    words = list(rng.choice(NEUTRAL_WORDS, size=length)) + list(rng.choice(signal, size=4))
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def write_reviews_csv(path: Path, n: int = 400, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(n):
            positive = bool(i % 2)
            writer.writerow([review(rng, positive), "positive" if positive else "negative"])
    return path


HOUSING_WEIGHTS = np.array([-0.3, 0.05, -0.1, 2.0, -8.0, 5.0, -0.02, -0.8, 0.2, -0.01, -0.9, 0.01, -0.5])
HOUSING_MEANS = np.array([3.6, 11.0, 11.0, 0.07, 0.55, 6.3, 68.0, 3.8, 9.5, 408.0, 18.5, 356.0, 12.6])
HOUSING_STDS = np.array([8.6, 23.0, 6.9, 0.25, 0.12, 0.7, 28.0, 2.1, 8.7, 168.0, 2.2, 91.0, 7.1])


def housing_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows in the real features' ranges; MEDV is a linear function of them plus noise."""
    rng = np.random.default_rng(seed)
    x = np.abs(HOUSING_MEANS + rng.standard_normal((n, 13)) * HOUSING_STDS)  # real features are never negative
    x[:, 3] = (rng.random(n) < 0.07).astype(float)  # CHAS is 0/1
    y = 22.5 + ((x - HOUSING_MEANS) / HOUSING_STDS) @ HOUSING_WEIGHTS + rng.normal(0, 0.5, n)
    return x, y


def write_housing_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    x, y = housing_rows(n, seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.lower() for f in BOSTON_FEATURES] + ["medv"])
        for row, target in zip(x, y):
            writer.writerow([f"{v:.5f}" for v in row] + [f"{target:.3f}"])
    return path


CLASS_COLORS = {"blue": (40, 60, 200), "red": (200, 50, 40)}


def class_image(rng: np.random.Generator, color: tuple[int, int, int], size: int = 48) -> Image.Image:
    """A noisy picture dominated by one colour."""
    noise = rng.normal(0, 35, (size, size, 3))
    pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_image_folders(root: Path, per_class: dict[str, int] | None = None, size: int = 48, seed: int = 0) -> Path:
    """root/{train,validation,test}/{blue,red}/*.jpg|png."""
    rng = np.random.default_rng(seed)
    counts = per_class or {"train": 40, "validation": 12, "test": 60}
    for split, n in counts.items():
        for name, color in CLASS_COLORS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                fmt = "png" if i % 3 == 0 else "jpg"
                class_image(rng, color, size).save(folder / f"{name}_{i}.{fmt}")
    return root


def image_bytes(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


# ---------------------------------------------------------------- a user's own data, unlike the shipped models'

THREE_COLOURS = {"blue": (40, 60, 200), "green": (40, 170, 60), "red": (200, 50, 40)}


def write_class_folders(root: Path, per_class: int = 30, size: int = 32, seed: int = 0) -> Path:
    """root/{blue,green,red}/*.png|jpg: three classes, one folder each, no split folders."""
    rng = np.random.default_rng(seed)
    for name, color in THREE_COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            class_image(rng, color, size).save(folder / f"{name}_{i}.{'png' if i % 3 == 0 else 'jpg'}")
    return root


TEAMS = {
    "billing": ["invoice", "charged", "payment", "refund", "card", "bill"],
    "login": ["password", "login", "locked", "account", "reset", "signin"],
    "shipping": ["delivery", "parcel", "courier", "tracking", "shipped", "late"],
    "hardware": ["screen", "battery", "broken", "cable", "charger", "cracked"],
}
TICKET_WORDS = ["my", "the", "please", "help", "today", "again", "since", "monday", "thanks", "hello", "issue", "with"]


def ticket(rng: np.random.Generator, team: str, length: int = 12) -> str:
    words = list(rng.choice(TICKET_WORDS, size=length)) + list(rng.choice(TEAMS[team], size=3))
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def write_tickets_csv(path: Path, n: int = 240, seed: int = 0) -> Path:
    """Support tickets for four teams: columns `message` (the text) and `team` (the label)."""
    rng = np.random.default_rng(seed)
    teams = list(TEAMS)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "message", "team"])
        for i in range(n):
            team = teams[i % len(teams)]
            writer.writerow([i, ticket(rng, team), team])
    return path


SOILS = {"clay": -1.5, "loam": 1.0, "sand": -0.5}


def crop_rows(n: int, seed: int = 0) -> tuple[list[dict[str, object]], np.ndarray]:
    """Fields: soil (categorical), rain_mm, temp_c, fertilizer_kg; yield (t/ha) depends on each, soil included."""
    rng = np.random.default_rng(seed)
    soils = rng.choice(list(SOILS), size=n)
    rain, temp, fertilizer = rng.uniform(300, 900, n), rng.uniform(10, 30, n), rng.uniform(0, 200, n)
    y = 2.0 + 0.006 * rain - 0.08 * np.abs(temp - 20) + 0.01 * fertilizer + np.array([SOILS[s] for s in soils]) + rng.normal(0, 0.1, n)
    rows = [
        {"soil": str(s), "rain_mm": float(r), "temp_c": float(t), "fertilizer_kg": float(f)}
        for s, r, t, f in zip(soils, rain, temp, fertilizer)
    ]
    return rows, y


def write_crops_csv(path: Path, n: int = 300, seed: int = 0) -> Path:
    rows, y = crop_rows(n, seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["field", "soil", "rain_mm", "temp_c", "fertilizer_kg", "yield_t_ha"])
        for i, (row, target) in enumerate(zip(rows, y)):
            writer.writerow(
                [f"f{i}", row["soil"], f"{row['rain_mm']:.1f}", f"{row['temp_c']:.2f}", f"{row['fertilizer_kg']:.1f}", f"{target:.3f}"]
            )
    return path
