"""What the training crops looked like, saved with each model (``input_stats.json``), so ``predict`` can warn when a
new slice looks unlike anything the model was trained on.

A model only knows the inputs it was trained on: body-box crops of slices in one intensity window, resized to the
crop store's size. A slice in another window, an uncropped one (mostly air), a photo or a thumbnail still gets a
probability, and nothing in that number says it is meaningless. So the training stages record, over the training
split, each statistic's 0.5th and 99.5th percentile: mean gray level, contrast (standard deviation), the share of
near-black and near-white pixels, the box's aspect ratio and its shorter side in pixels. ``unlike`` names every
statistic of a new crop that falls well outside that range.

Numpy only, and a crop store is passed in, not imported: the training stages import this module, and their
``dvc.yaml`` deps stay small.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STATS_FILE = "input_stats.json"
MAX_SLICES = 2000  # a seeded subset of the training split: percentiles settle long before 2000, and the full
#                    study's training split (~80k slices at 384 px) would be a 12 GB read
DARK, BRIGHT = 0.1, 0.9  # near-black (air) and near-white (bone, metal) gray levels
# A value is "far" when it is outside the training range by more than half that range, and at least by this much
# (statistics that barely vary in training, such as the share of white pixels, would otherwise flag everything).
MIN_TOLERANCE = {"mean": 0.03, "std": 0.03, "dark": 0.05, "bright": 0.02, "aspect": 0.1}
WORDS = {"mean": "mean gray level", "std": "contrast (std of gray levels)", "dark": "share of near-black pixels",
         "bright": "share of near-white pixels", "aspect": "box aspect ratio (width/height)"}


def crop_stats(crops: np.ndarray) -> dict[str, np.ndarray]:
    """Per-crop statistics of uint8 crops (n, size, size), as the crop store holds them."""
    x = crops.reshape(len(crops), -1).astype(np.float32) / 255
    return {"mean": x.mean(1), "std": x.std(1), "dark": (x < DARK).mean(1), "bright": (x > BRIGHT).mean(1)}


def box_stats(widths: np.ndarray, heights: np.ndarray) -> dict[str, np.ndarray]:
    widths, heights = np.asarray(widths, np.float64), np.asarray(heights, np.float64)
    return {"aspect": widths / heights, "side": np.minimum(widths, heights)}


def from_store(store, split: str = "train", limit: int = MAX_SLICES, seed: int = 0) -> dict:
    """The reference of a crop store's ``split``: {"size": crop size, "slices": n, stat: {"low", "high"}}."""
    rows = store.rows(split)
    if len(rows) > limit:
        rows = rows.iloc[np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))]
    stats = {**crop_stats(store.read(rows)),
             **box_stats(rows["xmax"] - rows["xmin"], rows["ymax"] - rows["ymin"])}
    # margin: the crop stage grew each box by it, and predict must grow its boxes the same way
    reference = {"size": store.size, "margin": store.meta.get("margin", 0.0), "slices": len(rows), "split": split}
    for name, values in stats.items():
        low, high = np.percentile(values, [0.5, 99.5])
        reference[name] = {"low": round(float(low), 6), "high": round(float(high), 6)}
    return reference


def save(model_dir: str | Path, reference: dict) -> None:
    (Path(model_dir) / STATS_FILE).write_text(json.dumps(reference, indent=2, sort_keys=True) + "\n")


def load(model_dir: str | Path) -> dict | None:
    """The model's reference, or None for a model trained before it was recorded."""
    path = Path(model_dir) / STATS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def unlike(crop: np.ndarray, box_width: int, box_height: int, reference: dict) -> list[str]:
    """One phrase per statistic of a uint8 crop (already resized to ``reference["size"]``) far outside training."""
    stats = {name: float(v[0]) for name, v in crop_stats(crop[None]).items()}
    stats["aspect"] = box_width / box_height
    found = []
    for name, value in stats.items():
        low, high = reference[name]["low"], reference[name]["high"]
        tolerance = max(0.5 * (high - low), MIN_TOLERANCE[name])
        if not low - tolerance <= value <= high + tolerance:
            found.append(f"{WORDS[name]} {value:.3g}, training crops {low:.3g}-{high:.3g}")
    return found
