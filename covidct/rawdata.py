"""Where the COVIDx CT slices come from, and how their split files read.

Three sources, one layout (Kaggle's): ``<root>/3A_images/<fname>`` and ``<root>/{split}_COVIDx_CT-3A.txt``.

- ``sample``: the phantom generator writes a small, seeded set into ``data/raw`` (tracked by DVC).
- ``local``: a folder the user already has; only its split files are copied into ``data/raw``.
- ``kaggle``: kagglehub downloads a pinned dataset version into its own cache (extracted once, ~28 GB);
  only the split files are copied into ``data/raw``.

For ``local`` and ``kaggle`` the ~425k PNGs stay where they are: DVC tracks ``data/raw/dataset.json``
(source, handle, split-file checksums) and the few large crop-store shards built from the images,
never 425k small files (iterative/dvc#7607).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from covidct.atomic import atomic_write_json

SPLITS = ("train", "val", "test")
IMAGES_DIR = "3A_images"
CLASS_NAMES = ("Normal", "Pneumonia", "COVID-19")
DATASET_JSON = "dataset.json"
KAGGLE_CREDENTIALS_HELP = (
    "Kaggle needs an API token: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
    "(kaggle.com > Settings > API > Create New Token) as ~/.kaggle/kaggle.json with mode 600."
)


class DataError(RuntimeError):
    """Bad input data; the message names the file (and line) and what to do."""


@dataclass(frozen=True)
class SliceRow:
    split: str
    fname: str
    cls: int
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    line: int

    @property
    def patient(self) -> str:
        return patient_id(self.fname)


def patient_id(fname: str) -> str:
    """COVIDx names slices ``<source>_<patient>_<scan>_<slice>.png``: the patient is all but the last two fields."""
    stem = fname.rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        return stem
    return "_".join(parts[:-2])


def split_filename(split: str, variant: str = "3A") -> str:
    return f"{split}_COVIDx_CT-{variant}.txt"


def read_split_file(path: str | os.PathLike, split: str) -> list[SliceRow]:
    """Parses ``fname cls xmin ymin xmax ymax`` lines; CRLF and stray spaces are fine, anything else is named."""
    path = Path(path)
    rows = []
    with open(path, encoding="utf-8", newline=None) as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            fields = line.split()
            where = f"{path}:{number}"
            if len(fields) != 6:
                raise DataError(
                    f"{where}: expected 6 fields 'fname cls xmin ymin xmax ymax', got {len(fields)}: {line!r}. "
                    "Fix or delete the line."
                )
            try:
                cls, xmin, ymin, xmax, ymax = (int(float(v)) for v in fields[1:])
            except ValueError:
                raise DataError(f"{where}: class and bbox must be numbers: {line!r}. Fix or delete the line.") from None
            if cls not in (0, 1, 2):
                raise DataError(f"{where}: unknown class id {cls} (0 Normal, 1 Pneumonia, 2 COVID-19). Fix the line.")
            rows.append(SliceRow(split, fields[0], cls, xmin, ymin, xmax, ymax, number))
    return rows


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def kaggle_download(handle: str) -> Path:
    """Downloads (or finds in kagglehub's cache) a pinned dataset version; returns its folder."""
    try:
        import kagglehub
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise DataError("data.source=kaggle needs the kagglehub package: pip install -r requirements.txt") from exc
    from covidct.archive import kagglehub_extracts_safely

    try:
        with kagglehub_extracts_safely():
            return Path(kagglehub.dataset_download(handle))
    except DataError:
        raise
    except kagglehub.exceptions.DataCorruptionError as exc:
        raise DataError(f"Kaggle dataset '{handle}': the download did not match the server's checksum ({exc}); "
                        "kagglehub deleted it. Run the stage again to download it afresh.") from None
    except Exception as exc:  # kagglehub raises requests/HTTP/auth errors of many kinds
        raise DataError(
            f"Could not download Kaggle dataset '{handle}': {type(exc).__name__}: {exc}\n"
            f"- Offline? This needs internet access to kaggle.com (or the dataset already in kagglehub's cache, "
            f"KAGGLEHUB_CACHE, default ~/.cache/kagglehub).\n"
            f"- {KAGGLE_CREDENTIALS_HELP}\n"
            f"- Or download it yourself and run with data.source=local and data.local_root=<folder with "
            f"{IMAGES_DIR}/ and the split files>."
        ) from exc


def find_dataset_root(folder: Path, variant: str) -> Path:
    """The folder holding the split files: the download itself or one level below it."""
    wanted = split_filename("train", variant)
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / wanted).is_file():
            return candidate
    found = sorted(p.name for p in folder.rglob("*_COVIDx_CT-*.txt"))[:10]
    raise DataError(
        f"{folder}: no {wanted} here or one level below. Split files found: {found or 'none'}. "
        f"Set data.variant to the one present, or point data.local_root / data.kaggle_handle at a CT-{variant} copy."
    )


def resolve_images_root(raw_dir: str | os.PathLike) -> Path:
    """The folder that holds ``3A_images/``, for a ``data/raw`` written by :func:`prepare`."""
    import json

    raw_dir = Path(raw_dir)
    info = json.loads((raw_dir / DATASET_JSON).read_text())
    if info["source"] == "sample":
        return raw_dir
    if info["source"] == "local":
        return find_dataset_root(Path(info["local_root"]).expanduser(), info["variant"])
    return find_dataset_root(kaggle_download(info["kaggle_handle"]), info["variant"])


def prepare(data_params: dict, sample_params: dict, out_dir: str | os.PathLike, progress: bool = True) -> dict:
    """The download stage: fills ``out_dir`` (a fresh folder) and returns what it wrote to dataset.json."""
    from covidct import phantom

    out_dir = Path(out_dir)
    source, variant = data_params["source"], data_params.get("variant", "3A")
    info = {"source": source, "variant": variant}
    if source == "sample":
        counts = phantom.generate(
            out_dir,
            patients=sample_params["patients"],
            class_fractions=sample_params["class_fractions"],
            slices_per_patient=sample_params["slices_per_patient"],
            image_size=sample_params["image_size"],
            seed=sample_params["seed"],
            progress=progress,
        )
        info["counts"] = counts
        root = out_dir
    elif source == "local":
        local_root = data_params.get("local_root")
        if not local_root:
            raise DataError("data.source=local needs data.local_root: the folder with 3A_images/ and the split files.")
        root = find_dataset_root(Path(local_root).expanduser(), variant)
        info["local_root"] = str(local_root)
    elif source == "kaggle":
        handle = data_params["kaggle_handle"]
        if "/versions/" not in handle:
            raise DataError(
                f"data.kaggle_handle={handle!r} has no version: pin one (e.g. hgunraj/covidxct/versions/5) "
                "so that every run reads the same data."
            )
        root = find_dataset_root(kaggle_download(handle), variant)
        info["kaggle_handle"] = handle
    else:
        raise DataError(f"data.source={source!r}: choose one of sample, local, kaggle.")

    if not (root / IMAGES_DIR).is_dir():
        raise DataError(f"{root}: no {IMAGES_DIR}/ folder beside the split files. Is this a COVIDx CT-{variant} copy?")
    info["split_files"] = {}
    for split in SPLITS:
        name = split_filename(split, variant)
        if root != out_dir:
            shutil.copyfile(root / name, out_dir / name)
        rows = read_split_file(out_dir / name, split)
        info["split_files"][split] = {"file": name, "sha256": sha256_file(out_dir / name), "slices": len(rows)}
    atomic_write_json(out_dir / DATASET_JSON, info)
    return info
