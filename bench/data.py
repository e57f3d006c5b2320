"""Benchmark data at any size: phantom slices in the Kaggle layout, and a crop store built from them.

Rendering 400k phantoms would take longer than the benchmark, so ``unique`` slices are rendered once and
the rest are hard links to them under new patient ids: every slice is still its own PNG file on disk that
the crop stage (and the seed-style baseline) must open and decode.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from covidct import crop, phantom
from covidct.layout import IMAGES_DIR, SPLITS, split_filename

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SLICES_PER_PATIENT = 8


def make_raw(root: Path, slices: int, unique: int = 512, image_size: int = 512, seed: int = 0) -> Path:
    """``root`` with ``slices`` rows over the three split files (reused when already made with these settings)."""
    root = Path(root)
    recipe = {"slices": slices, "unique": unique, "image_size": image_size, "seed": seed}
    done = root / "recipe.json"
    if done.is_file() and json.loads(done.read_text()) == recipe:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rendered = root / "rendered"
    patients = max(3, -(-min(unique, slices) // SLICES_PER_PATIENT))
    phantom.generate(rendered, {s: max(1, round(patients * f)) for s, f in SPLIT_FRACTIONS.items()},
                     {"normal": 0.5, "pneumonia": 0.0, "covid": 0.5}, (SLICES_PER_PATIENT, SLICES_PER_PATIENT),
                     image_size=image_size, seed=seed, progress=False)
    lines = {s: (rendered / split_filename(s)).read_text().split() for s in SPLITS}
    lines = {s: [words[i:i + 6] for i in range(0, len(words), 6)] for s, words in lines.items()}
    total = sum(map(len, lines.values()))
    (root / IMAGES_DIR).mkdir(parents=True)
    wanted = {s: round(slices * len(rows) / total) for s, rows in lines.items()}
    wanted["train"] += slices - sum(wanted.values())
    for split, rows in lines.items():
        want, out = wanted[split], []
        for k in range(want):
            fname, *rest = rows[k % len(rows)]
            source, patient, scan, index = fname[:-4].split("_")
            copy = f"{source}_{int(patient) + 100_000 * (k // len(rows)):07d}_{scan}_{index}.png"
            _link(rendered / IMAGES_DIR / fname, root / IMAGES_DIR / copy)
            out.append(" ".join([copy, *rest]))
        (root / split_filename(split)).write_text("\n".join(out) + "\n")
    done.write_text(json.dumps(recipe))
    return root


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # file systems without hard links
        shutil.copyfile(src, dst)


def build_crop_store(raw: Path, out: Path, size: int, workers: int = 0, shard_size: int = 4096) -> dict:
    """The crop stage's work on ``raw`` (``balance: none``, as the full study); returns count and seconds."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    table, info = crop.label_and_balance(crop.slice_table(raw), "binary", "none", seed=0)
    meta, skipped = crop.build_store(table, info, raw, Path(out), size=size, margin=0.0, shard_size=shard_size,
                                     workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if skipped:
        raise RuntimeError(f"benchmark data: {len(skipped)} slices unusable, first: {skipped[0]}")
    return {"images": meta["slices"], "seconds": seconds, "workers": workers or os.cpu_count() or 1}
