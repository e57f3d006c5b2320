"""The COVIDx CT layout, as Kaggle ships it: split names, the images folder, class ids, split files, patient ids.

    <root>/3A_images/<source>_<patient>_<scan>_<slice>.png
    <root>/{train,val,test}_COVIDx_CT-3A.txt        one line per slice: ``fname cls xmin ymin xmax ymax``

The download stage hands the crop stage a ``data/raw``-like folder: copies of the split files and
``dataset.json`` (source, variant, the images root, checksums); ``read_dataset_info`` reads it.

A leaf module (no project imports but the errors), so the downloader, the phantom generator, the crop stage
and the feature files all agree on these facts without importing one another.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from covidct.errors import DataError

SPLITS = ("train", "val", "test")
IMAGES_DIR = "3A_images"
CLASS_NAMES = ("Normal", "Pneumonia", "COVID-19")  # class ids 0, 1, 2 in the split files
DATASET_JSON = "dataset.json"


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


def read_dataset_info(raw_dir: str | os.PathLike) -> dict:
    """What the download stage wrote into ``raw_dir/dataset.json``: source, variant, images root, split files."""
    path = Path(raw_dir) / DATASET_JSON
    if not path.is_file():
        raise DataError(f"{path} missing: run the download stage first (dvc repro download).")
    return json.loads(path.read_text())
