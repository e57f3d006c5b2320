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
from covidct.errors import DataError
from covidct.images import Unusable, read_image
from covidct.layout import CLASS_NAMES, IMAGES_DIR, SPLITS, read_split_file, split_filename
from covidct.params import Problems, is_number, is_positive_int

# How COVIDx classes (0 Normal, 1 Pneumonia, 2 COVID-19) become training labels; None drops the slice.
CLASS_MAPS = {
    "binary": ({0: 0, 1: None, 2: 1}, ["Normal", "COVID-19"]),  # the reference study: pneumonia dropped
    "binary_pneumonia_negative": ({0: 0, 1: 0, 2: 1}, ["Non-COVID", "COVID-19"]),
    "three_class": ({0: 0, 1: 1, 2: 2}, list(CLASS_NAMES)),
}
BALANCES = ("undersample", "weighted", "none")


def check_params(crop: dict) -> list[str]:
    problems = Problems()
    problems.require(crop.get("classes") in CLASS_MAPS,
                     f"crop.classes={crop.get('classes')!r}: choose one of {sorted(CLASS_MAPS)}")
    problems.require(crop.get("balance") in BALANCES,
                     f"crop.balance={crop.get('balance')!r}: choose one of {list(BALANCES)}")
    for key in ("image_size", "shard_size"):
        problems.require(is_positive_int(crop.get(key)), f"crop.{key}={crop.get(key)!r}: a positive integer")
    fraction, margin = crop.get("max_skipped_fraction"), crop.get("margin", 0)
    problems.require(is_number(fraction) and 0 <= fraction <= 1,
                     f"crop.max_skipped_fraction={fraction!r}: must be in [0, 1]")
    problems.require(is_number(margin) and 0 <= margin <= 1, f"crop.margin={margin!r}: must be in [0, 1]")
    return problems


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
    info = {"classes": classes, "label_names": label_names, "balance": balance, **recount(table, label_names)}
    return table, info


def recount(table: pd.DataFrame, label_names) -> dict:
    """Class weights, slices per split and label, and patients per split (again after unusable slices are dropped)."""
    train_counts = table[table["split"] == "train"]["label"].value_counts().sort_index()
    # Inverse-frequency weights for a weighted loss later; all ones once the classes are balanced.
    weights = (train_counts.sum() / (len(train_counts) * train_counts)).round(6)
    return {
        "class_weights": [float(weights.get(i, 0.0)) for i in range(len(label_names))],
        "counts": {
            split: {label_names[k]: int(v) for k, v in table[table["split"] == split]["label"].value_counts().sort_index().items()}
            for split in SPLITS
        },
        "patients": {split: int(table[table["split"] == split]["patient"].nunique()) for split in SPLITS},
    }


def crop_box(width: int, height: int, box, margin: float):
    """The bbox grown by ``margin`` (a fraction of its size) on each side, clipped to the image."""
    xmin, ymin, xmax, ymax = box
    dx, dy = margin * (xmax - xmin), margin * (ymax - ymin)
    left, top = max(int(round(xmin - dx)), 0), max(int(round(ymin - dy)), 0)
    right, bottom = min(int(round(xmax + dx)), width), min(int(round(ymax + dy)), height)
    return left, top, right, bottom


def check_box(box, width: int, height: int) -> None:
    xmin, ymin, xmax, ymax = box
    if xmax < xmin or ymax < ymin:
        raise Unusable("bbox_inverted", f"bbox {tuple(box)} has max < min")
    if xmax == xmin or ymax == ymin:
        raise Unusable("bbox_zero_area", f"bbox {tuple(box)} has zero area")
    if xmin < 0 or ymin < 0 or xmax > width or ymax > height:
        raise Unusable("bbox_outside_image", f"bbox {tuple(box)} reaches outside the {width}x{height} image")


def load_crop(path: Path, box, size: int, margin: float) -> np.ndarray:
    gray = read_image(Path(path))
    check_box(box, gray.width, gray.height)
    left, top, right, bottom = crop_box(gray.width, gray.height, box, margin)
    return np.asarray(gray.crop((left, top, right, bottom)).resize((size, size), Image.BILINEAR))


_worker_args = {}


def _init_worker(images_dir, size, margin):
    _worker_args.update(images_dir=Path(images_dir), size=size, margin=margin)


def _crop_one(job):
    fname = job[0]
    try:
        return load_crop(_worker_args["images_dir"] / fname, job[1], _worker_args["size"], _worker_args["margin"]), None
    except Unusable as exc:
        return None, (exc.reason, exc.detail)
    except Exception as exc:  # anything unforeseen is reported with its file and line too, as a skip
        return None, ("error", f"{type(exc).__name__}: {exc}")


def build_store(table: pd.DataFrame, info: dict, images_root: Path, out_dir: Path, size: int, margin: float,
                shard_size: int, workers: int = 0, progress: bool = True, variant: str = "3A") -> tuple[dict, list]:
    """Decodes, crops and resizes every usable slice of ``table`` into ``out_dir`` (a fresh folder).

    Returns (store metadata, skipped): one dict per unusable slice with its split-file line, file and reason.
    Skipped slices are left out of the store and of its counts; the caller decides whether that is too many.
    """
    from tqdm import tqdm

    images_dir = Path(images_root) / IMAGES_DIR
    workers = workers or os.cpu_count() or 1
    boxes = table[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
    jobs = [(fname, tuple(int(v) for v in box)) for fname, box in zip(table["fname"], boxes)]
    writer = store.ShardWriter(out_dir, len(jobs), size, shard_size)
    kept, skipped = np.zeros(len(jobs), bool), []
    with Pool(workers, initializer=_init_worker, initargs=(images_dir, size, margin)) as pool:
        results = pool.imap(_crop_one, jobs, chunksize=32)
        for i, (crop, problem) in enumerate(tqdm(results, total=len(jobs), desc="crop", unit="img", disable=not progress)):
            if problem is None:
                writer.append(crop)
                kept[i] = True
                continue
            row = table.iloc[i]
            skipped.append({"where": f"{split_filename(row['split'], variant)}:{row['line']}", "fname": row["fname"],
                            "split": row["split"], "reason": problem[0], "detail": problem[1]})
    writer.close()
    index = table.loc[kept, ["fname", "patient", "split", "label", "cls", "xmin", "ymin", "xmax", "ymax"]]
    index = index.reset_index(drop=True)
    for split in SPLITS:
        if not (index["split"] == split).any():
            raise DataError(f"split '{split}': none of its slices could be read (see the skipped list). "
                            "Check the images folder and the split file.")
    index["shard"], index["offset"] = writer.locations()
    info = {**info, **recount(index, info["label_names"])}
    meta = {**info, "size": size, "margin": margin, "shard_size": shard_size, "slices": len(index)}
    store.write_index(out_dir, index, meta)
    return meta, skipped
