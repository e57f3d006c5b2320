"""Split files -> labelled, balanced slice table -> decoded, cropped, resized uint8 store.

PNG decoding happens here, once, in parallel over all cores; every later stage reads the store.
"""

from __future__ import annotations

import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from covidct import store
from covidct.atomic import atomic_write_json
from covidct.rawdata import CLASS_NAMES, IMAGES_DIR, SPLITS, DataError, read_split_file, split_filename

# How COVIDx classes (0 Normal, 1 Pneumonia, 2 COVID-19) become training labels; None drops the slice.
CLASS_MAPS = {
    "binary": ({0: 0, 1: None, 2: 1}, ["Normal", "COVID-19"]),  # the reference study: pneumonia dropped
    "binary_pneumonia_negative": ({0: 0, 1: 0, 2: 1}, ["Non-COVID", "COVID-19"]),
    "three_class": ({0: 0, 1: 1, 2: 2}, list(CLASS_NAMES)),
}
BALANCES = ("undersample", "weighted", "none")


def slice_table(raw_dir: str | os.PathLike, variant: str = "3A") -> pd.DataFrame:
    """All rows of the three split files, with patient ids; leakage between splits is an error."""
    raw_dir = Path(raw_dir)
    rows = []
    for split in SPLITS:
        path = raw_dir / split_filename(split, variant)
        if not path.is_file():
            raise DataError(f"{path}: split file missing. Rerun the download stage (dvc repro download).")
        rows += read_split_file(path, split)
    table = pd.DataFrame([r.__dict__ for r in rows])
    if table.empty:
        raise DataError(f"{raw_dir}: the split files list no slices.")
    table["patient"] = [r.patient for r in rows]

    dup = table[table.duplicated("fname", keep=False)].sort_values(["fname", "split"])
    if not dup.empty:
        first = dup.iloc[:6]
        where = ", ".join(f"{r.fname} ({split_filename(r.split, variant)}:{r.line})" for r in first.itertuples())
        raise DataError(
            f"{len(dup)} rows list a slice more than once (a slice in two splits leaks test data into training): "
            f"{where}. Keep each file name in one split file, once."
        )
    splits_per_patient = table.groupby("patient")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1].index[:5].tolist()
    if leaking:
        raise DataError(
            f"patients in more than one split (their slices are not independent, so this leaks): {leaking}. "
            "Keep every patient's slices in one split file."
        )
    return table


def label_and_balance(table: pd.DataFrame, classes: str, balance: str, seed: int) -> tuple[pd.DataFrame, dict]:
    """Maps classes to labels, drops unmapped ones and undersamples train/val (never test) if asked."""
    if classes not in CLASS_MAPS:
        raise DataError(f"crop.classes={classes!r}: choose one of {sorted(CLASS_MAPS)}.")
    if balance not in BALANCES:
        raise DataError(f"crop.balance={balance!r}: choose one of {list(BALANCES)}.")
    mapping, label_names = CLASS_MAPS[classes]
    table = table.assign(label=table["cls"].map(mapping))
    table = table[table["label"].notna()].astype({"label": "int64"})
    rng = np.random.default_rng(seed)
    parts = []
    for split in SPLITS:
        part = table[table["split"] == split]
        if part.empty:
            raise DataError(f"split '{split}' has no slices after crop.classes={classes!r}: check its split file.")
        if balance == "undersample" and split != "test":
            smallest = part["label"].value_counts().min()
            keep = []
            for _, group in part.groupby("label"):
                keep.append(group.iloc[np.sort(rng.choice(len(group), smallest, replace=False))])
            part = pd.concat(keep).sort_values("line")
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    train_counts = table[table["split"] == "train"]["label"].value_counts().sort_index()
    # Inverse-frequency weights for a weighted loss later; all ones once the classes are balanced.
    weights = (train_counts.sum() / (len(train_counts) * train_counts)).round(6)
    info = {
        "classes": classes,
        "label_names": label_names,
        "balance": balance,
        "class_weights": [float(weights.get(i, 0.0)) for i in range(len(label_names))],
        "counts": {
            split: {label_names[k]: int(v) for k, v in table[table["split"] == split]["label"].value_counts().sort_index().items()}
            for split in SPLITS
        },
        "patients": {split: int(table[table["split"] == split]["patient"].nunique()) for split in SPLITS},
    }
    return table, info


def crop_box(width: int, height: int, box, margin: float):
    """The bbox grown by ``margin`` (a fraction of its size) on each side, clipped to the image."""
    xmin, ymin, xmax, ymax = box
    dx, dy = margin * (xmax - xmin), margin * (ymax - ymin)
    left, top = max(int(round(xmin - dx)), 0), max(int(round(ymin - dy)), 0)
    right, bottom = min(int(round(xmax + dx)), width), min(int(round(ymax + dy)), height)
    return left, top, right, bottom


def to_gray8(image: Image.Image) -> Image.Image:
    """Any PNG/JPEG mode -> 8-bit grayscale; 16-bit data is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L")


def load_crop(path: Path, box, size: int, margin: float) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        gray = to_gray8(image)
    left, top, right, bottom = crop_box(gray.width, gray.height, box, margin)
    if right <= left or bottom <= top:
        raise DataError(f"bbox {tuple(box)} is empty inside a {gray.width}x{gray.height} image")
    return np.asarray(gray.crop((left, top, right, bottom)).resize((size, size), Image.BILINEAR))


_worker_args = {}


def _init_worker(images_dir, size, margin):
    _worker_args.update(images_dir=Path(images_dir), size=size, margin=margin)


def _crop_one(job):
    fname, box, where = job
    try:
        return load_crop(_worker_args["images_dir"] / fname, box, _worker_args["size"], _worker_args["margin"]), None
    except Exception as exc:  # every failure is reported with its file and split-file line
        return None, f"{where}: {fname}: {type(exc).__name__}: {exc}"


def build_store(table: pd.DataFrame, info: dict, images_root: Path, out_dir: Path, size: int, margin: float,
                shard_size: int, workers: int = 0, progress: bool = True, variant: str = "3A") -> dict:
    """Decodes, crops and resizes every slice of ``table`` into ``out_dir`` (a fresh folder)."""
    from tqdm import tqdm

    images_dir = Path(images_root) / IMAGES_DIR
    workers = workers or os.cpu_count() or 1
    boxes = table[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
    jobs = [
        (fname, tuple(int(v) for v in box), f"{split_filename(split, variant)}:{line}")
        for fname, box, split, line in zip(table["fname"], boxes, table["split"], table["line"])
    ]
    writer = store.ShardWriter(out_dir, len(jobs), size, shard_size)
    with Pool(workers, initializer=_init_worker, initargs=(images_dir, size, margin)) as pool:
        results = pool.imap(_crop_one, jobs, chunksize=32)
        for crop, error in tqdm(results, total=len(jobs), desc="crop", unit="img", disable=not progress):
            if error is not None:
                pool.terminate()
                raise DataError(f"{error}. Fix or remove the file, or drop its line from the split file.")
            writer.append(crop)
    writer.close()
    index = table[["fname", "patient", "split", "label", "cls", "xmin", "ymin", "xmax", "ymax"]].copy()
    index["shard"], index["offset"] = writer.locations()
    meta = {**info, "size": size, "margin": margin, "shard_size": shard_size, "slices": len(index)}
    store.write_index(out_dir, index, meta)
    return meta
