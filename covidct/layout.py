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
import posixpath
import re
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
    """COVIDx names slices ``<source>_<patient>_<scan>_<slice>.png``: the patient is all but the last two fields.

    ``fname`` is a normalised name (``normalise_name``), so ``./a_1_2_3.png`` and ``a_1_2_3.png`` are one patient.
    """
    folder, _, base = fname.rpartition("/")
    stem = base.rsplit(".", 1)[0]
    parts = stem.split("_")
    patient = stem if len(parts) < 3 else "_".join(parts[:-2])
    return f"{folder}/{patient}" if folder else patient


def split_filename(split: str, variant: str = "3A") -> str:
    return f"{split}_COVIDx_CT-{variant}.txt"


# A class id or bbox coordinate: a plain decimal integer, optionally with a zero fraction ("12", "+12", "12.0").
# Anything else ("12.7", "1e2", "0x10", "nan", "inf", "1_000", non-ASCII digits) would need a guess: refused.
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+(\.0*)?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LARGEST = 2**31 - 1  # a bbox coordinate or class id beyond this is a typo, not a pixel
# The common line, parsed in one match: a name without a folder or odd character, five unsigned integers.
_PLAIN_LINE = re.compile(r"([^\s/\\\x00-\x1f\x7f]+)" + r"[ \t]+([0-9]{1,9})" * 5)


def normalise_name(fname: str) -> str:
    """``fname`` as a relative POSIX path below the images folder, ``./`` and ``//`` removed (``os.path.normpath``).

    Raises ValueError (with what to do) for a name that could leave the images folder: an absolute path or a ``..``
    segment. Such names are never legitimate in a split file; symlinks are checked where the folder is known
    (``outside_images``).
    """
    if _CONTROL.search(fname):
        raise ValueError(f"file name {fname!r} holds a control character. Fix the name")
    if fname.startswith(("/", "\\")) or re.match(r"[A-Za-z]:[\\/]", fname):
        raise ValueError(f"file name {fname!r} is an absolute path; names are relative to {IMAGES_DIR}/. "
                         f"Move the image into {IMAGES_DIR}/ and list it by its name there")
    if ".." in re.split(r"[/\\]", fname):
        raise ValueError(f"file name {fname!r} has a '..' segment, which would leave {IMAGES_DIR}/. "
                         f"Move the image into {IMAGES_DIR}/ and list it by its name there")
    name = posixpath.normpath(fname)
    if name in (".", ""):
        raise ValueError(f"file name {fname!r} names no file. Fix the name")
    return name


def _whole_number(text: str) -> int:
    if not _WHOLE_NUMBER.fullmatch(text) or abs(int(text.split(".")[0])) > _LARGEST:
        raise ValueError(text)
    return int(text.split(".")[0])


def read_split_file(path: str | os.PathLike, split: str, shown_as: str | os.PathLike | None = None) -> list[SliceRow]:
    """Parses ``fname cls xmin ymin xmax ymax`` lines; every problem is a DataError naming ``file:line``.

    Accepted: UTF-8 with or without a BOM, LF / CRLF / CR line ends, stray spaces and tabs, blank lines (ignored),
    ``./`` or ``//`` in names (normalised), numbers written ``12.0`` (= 12). Refused: bytes that are not UTF-8, a
    field count other than 6, a name with ``..``, an absolute path or a control character, a class id or bbox
    coordinate that is not a whole decimal number (``12.7``, ``1e2``, ``0x10``, ``nan``, ``inf``), a class id other
    than 0, 1, 2. A bbox that does not fit the image is not an error here: crop skips and counts it.
    ``shown_as``: the file to name in messages, when ``path`` is a copy of the user's file (same bytes).
    """
    path = Path(path)
    shown = Path(shown_as) if shown_as is not None else path
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark, as some editors on Windows write
        data = data[3:]
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):  # \n, \r\n and \r, like text mode
        where = f"{shown}:{number}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            hint = " (it looks like UTF-16)" if b"\x00" in data[:200] else ""
            raise DataError(f"{where}: not UTF-8 text{hint}: byte {raw[exc.start:exc.start + 1]!r} at column "
                            f"{exc.start + 1}. Save the file as UTF-8 (COVIDx file names are ASCII).") from None
        if not line:
            continue
        plain = _PLAIN_LINE.fullmatch(line)
        if plain and plain[1] not in (".", ".."):
            cls, xmin, ymin, xmax, ymax = map(int, plain.groups()[1:])
            if cls in (0, 1, 2):
                rows.append(SliceRow(split, plain[1], cls, xmin, ymin, xmax, ymax, number))
                continue
        fields = line.split()
        if len(fields) != 6:
            raise DataError(
                f"{where}: expected 6 fields 'fname cls xmin ymin xmax ymax', got {len(fields)}: {line!r}. "
                "Fix or delete the line (file names cannot contain spaces)."
            )
        try:
            fname = normalise_name(fields[0])
        except ValueError as exc:
            raise DataError(f"{where}: {exc}.") from None
        try:
            cls, xmin, ymin, xmax, ymax = (_whole_number(v) for v in fields[1:])
        except ValueError:
            raise DataError(f"{where}: class and bbox must be numbers, whole and in plain decimal (2, 120 or "
                            f"120.0, below 2^31; not 12.7, 1e2, 0x10, nan or inf): {line!r}. Fix or delete the line.") from None
        if cls not in (0, 1, 2):
            raise DataError(f"{where}: unknown class id {cls} (0 Normal, 1 Pneumonia, 2 COVID-19). Fix the line.")
        rows.append(SliceRow(split, fname, cls, xmin, ymin, xmax, ymax, number))
    return rows


def outside_images(images_dir: str | os.PathLike, names) -> list[tuple[str, Path]]:
    """(name, where it resolves) for each of ``names`` whose file, after symlinks, lies outside ``images_dir``.

    ``images_dir`` itself may be a symlink (images on another disk). One directory scan finds the symlinks among
    its entries; only those, and names in sub-folders, are resolved, so 425k plain files cost one scan.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no such folder. Rerun the download stage, or point data.local_root at the "
                        f"folder with {IMAGES_DIR}/ and the split files.")
    base = images_dir.resolve()
    with os.scandir(images_dir) as entries:
        links = {entry.name for entry in entries if entry.is_symlink()}
    outside = []
    for name in names:
        if "/" in name or name in links:
            target = (images_dir / name).resolve()
            if not target.is_relative_to(base):
                outside.append((name, target))
    return outside


def read_dataset_info(raw_dir: str | os.PathLike) -> dict:
    """What the download stage wrote into ``raw_dir/dataset.json``: source, variant, images root, split files."""
    path = Path(raw_dir) / DATASET_JSON
    if not path.is_file():
        raise DataError(f"{path} missing: run the download stage first (dvc repro download).")
    return json.loads(path.read_text())
