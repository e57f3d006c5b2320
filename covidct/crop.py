"""Split files -> labelled, balanced slice table -> decoded, cropped, resized uint8 store.

PNG decoding happens here, once, in parallel over all cores; every later stage reads the store.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from covidct import atomic, provenance, store
from covidct.errors import DataError, ResourceError
from covidct.images import Unusable, read_image
from covidct.layout import CLASS_NAMES, IMAGES_DIR, SPLITS, outside_images, read_split_file, split_filename
from covidct.params import Problems, choice, integer, is_number, seed_int, unknown_keys, worker_count

# How COVIDx classes (0 Normal, 1 Pneumonia, 2 COVID-19) become training labels; None drops the slice.
CLASS_MAPS = {
    "binary": ({0: 0, 1: None, 2: 1}, ["Normal", "COVID-19"]),  # the reference study: pneumonia dropped
    "binary_pneumonia_negative": ({0: 0, 1: 0, 2: 1}, ["Non-COVID", "COVID-19"]),
    "three_class": ({0: 0, 1: 1, 2: 2}, list(CLASS_NAMES)),
}
BALANCES = ("undersample", "weighted", "none")
CROP_KEYS = ("classes", "balance", "margin", "image_size", "shard_size", "seed", "workers", "max_skipped_fraction",
             "allow_missing_class", "source_rules")


def check_params(crop: dict) -> list[str]:
    problems = Problems(unknown_keys("crop", crop, CROP_KEYS))
    problems += choice("crop.classes", crop.get("classes"), sorted(CLASS_MAPS))
    problems += choice("crop.balance", crop.get("balance"), BALANCES)
    problems += integer("crop.image_size", crop.get("image_size"), 1, 8192)
    problems += integer("crop.shard_size", crop.get("shard_size"), 1)
    problems += seed_int("crop.seed", crop.get("seed"))
    problems += worker_count("crop.workers", crop.get("workers"))
    fraction, margin = crop.get("max_skipped_fraction"), crop.get("margin", 0)
    problems.require(is_number(fraction) and 0 <= fraction <= 1,
                     f"crop.max_skipped_fraction={fraction!r}: must be in [0, 1]")
    problems.require(is_number(margin) and 0 <= margin <= 1, f"crop.margin={margin!r}: must be in [0, 1]")
    allow = crop.get("allow_missing_class", False)
    problems.require(isinstance(allow, bool), f"crop.allow_missing_class={allow!r}: true or false")
    problems += provenance.check_rules("crop.source_rules", crop.get("source_rules", provenance.DEFAULT_RULES))
    return problems


def check_classes(counts: dict, label_names, allow_missing: bool = False, after: str = "") -> list[str]:
    """Every class in every split, or a DataError saying which split lacks which class.

    ``counts``: {split: {label name: slices}} (``recount``'s). Train must always hold every class (a head cannot
    learn a class it never sees); val and test may lack one when ``allow_missing`` (crop.allow_missing_class):
    then the problems are returned, for the caller to print and record, and evaluate reports the metrics that
    need both classes as undefined and falls back to threshold 0.5 when val has one class.
    """
    missing = {split: [name for name in label_names if not counts.get(split, {}).get(name)] for split in SPLITS}
    problems = [f"split '{split}' has no {' / '.join(names)} slice" for split, names in missing.items() if names]
    if not problems:
        return []
    if missing["train"] or not allow_missing:
        raise DataError(
            "; ".join(problems) + f"{after}. Metrics that need both classes (ROC AUC, sensitivity or specificity, the "
            "val-chosen threshold) would be undefined. Add slices of that class to its split file (keeping each "
            "patient in one split), or change crop.classes"
            + ("; train must hold every class." if missing["train"] else
               ", or set crop.allow_missing_class: true to go on (evaluate then reports those metrics as undefined).")
        )
    return problems


def slice_table(raw_dir: str | os.PathLike, variant: str = "3A", root: str | os.PathLike | None = None) -> pd.DataFrame:
    """All rows of the three split files, with patient ids; leakage between splits is an error.

    Names are compared normalised (``./a.png`` is ``a.png``: ``layout.normalise_name``), so a slice or patient listed
    again under another spelling is caught too. ``root``: the images root the download stage recorded; given, the
    messages name the user's split files there (``raw_dir`` holds copies) and every listed image must resolve,
    symlinks followed, inside ``root/3A_images`` (else a DataError naming ``file:line``).
    """
    raw_dir = Path(raw_dir)

    def shown(split: str) -> Path:
        return (Path(root) if root is not None else raw_dir) / split_filename(split, variant)

    rows = []
    for split in SPLITS:
        path = raw_dir / split_filename(split, variant)
        if not path.is_file():
            raise DataError(f"{path}: split file missing. Rerun the download stage (dvc repro download).")
        rows += read_split_file(path, split, shown_as=shown(split))
    table = pd.DataFrame([r.__dict__ for r in rows])
    if table.empty:
        raise DataError(f"{raw_dir}: the split files list no slices.")
    table["patient"] = [r.patient for r in rows]

    dup = table[table.duplicated("fname", keep=False)].sort_values(["fname", "split"])
    if not dup.empty:
        first = dup.iloc[:6]
        where = ", ".join(f"{r.fname} ({shown(r.split)}:{r.line})" for r in first.itertuples())
        raise DataError(
            f"{len(dup)} rows list a slice more than once (a slice in two splits leaks test data into training; "
            f"names are compared after removing ./ and //): {where}. Keep each file name in one split file, once."
        )
    splits_per_patient = table.groupby("patient")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1].index[:5].tolist()
    if leaking:
        firsts = table[table["patient"].isin(leaking)].drop_duplicates(["patient", "split"])
        where = ", ".join(f"{r.patient!r} ({shown(r.split)}:{r.line})" for r in firsts.itertuples())
        raise DataError(
            f"patients in more than one split (their slices are not independent, so this leaks): {leaking}; "
            f"first lines: {where}. Keep every patient's slices in one split file."
        )
    if root is not None:
        escaping = outside_images(Path(root) / IMAGES_DIR, table["fname"])
        if escaping:
            lines = table.set_index("fname")
            where = "; ".join(f"{shown(lines.at[name, 'split'])}:{lines.at[name, 'line']}: {name} -> {target}"
                              for name, target in escaping[:5])
            raise DataError(
                f"{len(escaping)} listed images are symlinks leading outside {Path(root) / IMAGES_DIR}: {where}. "
                f"Copy those images into {IMAGES_DIR}/ (or link the whole {IMAGES_DIR}/ folder instead)."
            )
    return table


def with_sources(table: pd.DataFrame, raw_dir: str | os.PathLike, rules=None,
                 root: str | os.PathLike | None = None) -> tuple[pd.DataFrame, dict]:
    """``table`` with each slice's ``source`` (``covidct.provenance``: ``raw_dir``'s metadata.csv, else ``rules``), and
    how many slices each way found it. ``root``: the user's dataset folder, named in messages instead of the copy."""
    metadata = Path(raw_dir) / provenance.METADATA_CSV
    shown = Path(root) / provenance.METADATA_CSV if root is not None else None
    listed = provenance.read_metadata(metadata, shown) if metadata.is_file() else None
    sources, how = provenance.assign(table, listed, provenance.DEFAULT_RULES if rules is None else rules)
    return table.assign(source=sources), how


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


# Memory: one decode may need at most DECODE_BUDGET bytes, judged from the image's header before decoding (a 344 KB
# 16-bit PNG just under Pillow's pixel limit decodes to ~1 GB); a slice needing more is skipped as `too_large`.
# Each decode worker also needs WORKER_OVERHEAD of its own, and no more workers run than fit in available memory.
DECODE_BUDGET = 512 * 2**20
WORKER_OVERHEAD = 192 * 2**20
CHUNK = 16  # slices per task; at most IN_FLIGHT tasks per worker are submitted at once, in order
IN_FLIGHT = 3


def load_crop(path: Path, box, size: int, margin: float, max_bytes: int | None = None) -> np.ndarray:
    gray = read_image(Path(path), max_bytes)
    check_box(box, gray.width, gray.height)
    left, top, right, bottom = crop_box(gray.width, gray.height, box, margin)
    return np.asarray(gray.crop((left, top, right, bottom)).resize((size, size), Image.BILINEAR))


def available_memory() -> int | None:
    """Bytes this process's processes may still use: MemAvailable, or less under a cgroup memory limit."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage, stat in (("memory.max", "memory.current", "memory.stat"),  # cgroup v2, then v1
                               ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "memory/memory.stat")):
        try:
            root = Path("/sys/fs/cgroup")
            text = (root / limit).read_text().strip()
            if text == "max" or int(text) >= 2**60:
                continue
            stats = dict(line.split() for line in (root / stat).read_text().splitlines())
            cache = int(stats.get("inactive_file", stats.get("total_inactive_file", 0)))  # reclaimable page cache
            found.append(max(int(text) - int((root / usage).read_text()) + cache, 0))
            break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def decode_workers(requested: int, budget: int = DECODE_BUDGET) -> tuple[int, str]:
    """How many decode processes to run: ``requested`` (0: one per core), fewer if memory holds fewer; and why."""
    wanted = requested or os.cpu_count() or 1
    asked = f"crop.workers={requested}" if requested else f"{wanted} cores"
    available, each = available_memory(), budget + WORKER_OVERHEAD
    if available is None:
        return wanted, f"{wanted} decode workers ({asked})"
    fit = max(1, available // each)
    count = min(wanted, fit)
    return count, (f"{count} decode workers ({asked}; {available / 1e9:.1f} GB available, up to {each / 1e9:.2f} GB "
                   f"each{', so fewer' if count < wanted else ''})")


_worker_args = {}


def _init_worker(images_dir, size, margin, max_bytes, slots, counter):
    atomic.set_death_signal()  # the stage process killed: its workers go too
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stage, which stops the workers
    with counter.get_lock():
        slot, counter.value = counter.value, counter.value + 1
    slots[2 * slot] = os.getpid()
    _worker_args.update(images_dir=Path(images_dir), size=size, margin=margin, max_bytes=max_bytes, slots=slots,
                        slot=slot)


def _crop_chunk(chunk):
    """Crops ``chunk``'s (row, fname, box) jobs; the row being decoded is kept in this worker's shared slot, so the
    stage can name it if the worker is killed."""
    slots, busy = _worker_args["slots"], 2 * _worker_args["slot"] + 1
    results = []
    for row, fname, box in chunk:
        slots[busy] = row
        results.append(_crop_one(fname, box))
    slots[busy] = -1
    return results


def _crop_one(fname, box):
    try:
        return load_crop(_worker_args["images_dir"] / fname, box, _worker_args["size"], _worker_args["margin"],
                         _worker_args["max_bytes"]), None
    except Unusable as exc:
        return None, (exc.reason, exc.detail)
    except Exception as exc:  # anything unforeseen is reported with its file and line too, as a skip
        return None, ("error", f"{type(exc).__name__}: {exc}")


def _decoded(jobs, images_dir, size, margin, max_bytes, workers, describe):
    """(crop, problem) for every job, in order, from ``workers`` processes.

    A worker that dies (the OOM killer's SIGKILL) fails the stage at once, naming the slice it was decoding
    (``describe(row)``), where ``multiprocessing.Pool`` would wait for its result forever.
    """
    context = multiprocessing.get_context()
    slots = context.RawArray("q", [0, -1] * workers)  # per worker: pid, row being decoded (-1: none)
    counter = context.Value("i", 0)
    chunks = (jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK))
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(images_dir, size, margin, max_bytes, slots, counter))
    processes, pending = {}, deque()
    try:
        for chunk in chunks:
            pending.append(executor.submit(_crop_chunk, chunk))
            if not processes:
                processes = dict(getattr(executor, "_processes", None) or {})  # forked on the first submit
            if len(pending) >= IN_FLIGHT * workers:
                break
        while pending:
            try:
                results = pending.popleft().result()
            except BrokenProcessPool:
                executor.shutdown(wait=True, cancel_futures=True)  # the others are stopped; exit codes are in
                raise _worker_died(processes, slots, workers, describe) from None
            for chunk in chunks:
                pending.append(executor.submit(_crop_chunk, chunk))
                break
            yield from results
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _worker_died(processes, slots, workers, describe) -> ResourceError:
    busy = {slots[2 * k]: slots[2 * k + 1] for k in range(workers) if slots[2 * k + 1] >= 0}
    # The pool SIGTERMs the survivors once one dies; the dead one has another exit code (-9 from the OOM killer).
    dead = {pid: p.exitcode for pid, p in processes.items() if p.exitcode not in (0, None, -signal.SIGTERM)}
    culprits = [(pid, code, busy.get(pid)) for pid, code in dead.items()] or \
        [(pid, None, row) for pid, row in busy.items()] or [(None, None, None)]
    parts = []
    for pid, code, row in culprits:
        how = ("was killed by " + signal.Signals(-code).name if code is not None and code < 0 and
               -code in signal.valid_signals() else f"exited with status {code}" if code is not None else "died")
        what = f"while decoding {describe(row)}" if row is not None else "between slices"
        parts.append(f"decode worker {pid or '?'} {how} {what}")
    return ResourceError(
        f"crop: {'; '.join(parts)}. A SIGKILL usually is the out-of-memory killer (see `dmesg`): free memory or "
        f"lower crop.workers ({workers} ran; {available_memory_text()}), then rerun. Nothing was written."
    )


def available_memory_text() -> str:
    available = available_memory()
    return "available memory unknown" if available is None else f"{available / 1e9:.1f} GB available now"


def build_store(table: pd.DataFrame, info: dict, images_root: Path, out_dir: Path, size: int, margin: float,
                shard_size: int, workers: int = 0, progress: bool = True, variant: str = "3A",
                max_decode_bytes: int = DECODE_BUDGET) -> tuple[dict, list]:
    """Decodes, crops and resizes every usable slice of ``table`` into ``out_dir`` (a fresh folder).

    Returns (store metadata, skipped): one dict per unusable slice with its split-file line, file and reason.
    Skipped slices are left out of the store and of its counts; the caller decides whether that is too many.
    """
    from tqdm import tqdm

    images_dir = Path(images_root) / IMAGES_DIR
    workers, note = decode_workers(workers, max_decode_bytes)
    print(f"crop: {note}", flush=True)
    boxes = table[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
    jobs = [(i, fname, tuple(int(v) for v in box)) for i, (fname, box) in enumerate(zip(table["fname"], boxes))]
    writer = store.ShardWriter(out_dir, len(jobs), size, shard_size)
    kept, skipped = np.zeros(len(jobs), bool), []

    def describe(i: int) -> str:
        row = table.iloc[i]
        return f"{split_filename(row['split'], variant)}:{row['line']}: {images_dir / row['fname']}"

    results = _decoded(jobs, images_dir, size, margin, max_decode_bytes, workers, describe)
    try:  # on any failure here (a full disk) the workers are stopped at once, not at garbage collection
        for i, (crop, problem) in enumerate(tqdm(results, total=len(jobs), desc="crop", unit="img", disable=not progress)):
            if problem is None:
                writer.append(crop)
                kept[i] = True
                continue
            row = table.iloc[i]
            skipped.append({"where": f"{split_filename(row['split'], variant)}:{row['line']}", "fname": row["fname"],
                            "split": row["split"], "reason": problem[0], "detail": problem[1]})
    finally:
        results.close()
    writer.close()
    if "source" not in table:  # sources are assigned by the crop stage; a store built without them has one
        table = table.assign(source=provenance.UNKNOWN)
    index = table.loc[kept, ["fname", "patient", "source", "split", "label", "cls", "xmin", "ymin", "xmax", "ymax"]]
    index = index.reset_index(drop=True)
    for split in SPLITS:
        if not (index["split"] == split).any():
            raise DataError(f"split '{split}': none of its slices could be read (see the skipped list). "
                            "Check the images folder and the split file.")
    index["shard"], index["offset"] = writer.locations()
    info = {**info, **recount(index, info["label_names"])}
    meta = {**info, "size": size, "margin": margin, "shard_size": shard_size, "slices": len(index),
            "sources": provenance.counts(index, info["label_names"])}
    store.write_index(out_dir, index, meta)
    return meta, skipped
