"""Where the COVIDx CT slices come from: the generated sample, a local copy, or a pinned Kaggle version.

The download stage writes a small ``dataset.json`` plus copies of the three split files; the images stay where
they are (the sample's folder, the user's folder, kagglehub's cache): DVC is slow with hundreds of thousands of
small files (iterative/dvc#7607), so it tracks the few large crop-store shards built from them instead.

Images outside DVC's reach (``local``, ``kaggle``) get a fingerprint in ``dataset.json``: a SHA-256 over every
file's relative path, size and modification time under the images folder. The download stage runs on every
``dvc repro`` (``always_changed``) and is cheap, because it only stats files; when nothing changed it rewrites the
same ``dataset.json``, so DVC sees unchanged data and crop does not rerun. Any edited, added, removed or touched
image, or an edited split file, changes it and crop reruns. The sample's images are a DVC output of their own
stage, so DVC already tracks their content and they need no fingerprint (mtimes would differ on every clone).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from covidct.archive import kagglehub_extracts_safely
from covidct.atomic import atomic_write_json
from covidct.errors import DataError
from covidct.layout import DATASET_JSON, IMAGES_DIR, SPLITS, read_split_file, split_filename
from covidct.params import Problems, choice, unknown_keys
from covidct.provenance import METADATA_CSV

SOURCES = ("sample", "local", "kaggle")
KAGGLE_CREDENTIALS_HELP = (
    "Kaggle needs an API token: set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json "
    "(kaggle.com > Settings > API > Create New Token) as ~/.kaggle/kaggle.json with mode 600."
)


def check_params(data: dict) -> list[str]:
    problems = Problems(unknown_keys("data", data, ("source", "variant", "local_root", "kaggle_handle")))
    source, variant = data.get("source"), data.get("variant", "3A")
    problems += choice("data.source", source, SOURCES)
    problems.require(isinstance(variant, str) and variant.isalnum() and variant.isascii(),
                     f"data.variant={variant!r}: letters and digits, e.g. 3A")
    root, handle = data.get("local_root"), data.get("kaggle_handle")
    problems.require(root is None or (isinstance(root, str) and root.strip() != ""),
                     f"data.local_root={root!r}: a folder (a path), or null")
    problems.require(handle is None or isinstance(handle, str), f"data.kaggle_handle={handle!r}: owner/dataset/versions/<n>")
    if source == "local" and not (isinstance(root, str) and root.strip()):
        problems.append(f"data.local_root={root!r}: data.source=local needs the folder with {IMAGES_DIR}/ and the split files")
    elif source == "local":
        problems += _local_root_problems(root)
    if source == "kaggle" and not (isinstance(handle, str) and "/versions/" in handle):
        problems.append(f"data.kaggle_handle={handle!r}: pin a version, owner/dataset/versions/<n> "
                        "(e.g. hgunraj/covidxct/versions/5), so that every run reads the same data")
    return problems


def _local_root_problems(root: str) -> list[str]:
    """A local_root that cannot be a folder of images (a file, ~user of no one); a missing one is named later."""
    try:
        path = Path(root).expanduser().absolute()
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        is_file = existing is not None and not existing.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:  # ~nobody/..., a NUL byte, a name too long
        return [f"data.local_root={root!r}: not a usable path ({exc})"]
    if is_file:
        what = "a file, not a folder" if existing == path else f"below {existing}, which is a file, not a folder"
        message = f"data.local_root={root!r}: {what}; point it at the folder with {IMAGES_DIR}/ and the"
        return [message + " split files"]
    return []


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(folder: str | os.PathLike) -> dict:
    """{files, bytes, sha256} over (relative path, size, mtime in ns) of every file below ``folder``, sorted.

    Stats only, never reads a byte: ~3 s for 425k files on 2 cores (docs/data.md has the measurement).
    """
    entries, pending = [], [Path(folder)]
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                if entry.is_dir():
                    pending.append(Path(entry.path))
                else:
                    st = entry.stat()  # follows a symlink to the file it names
                    entries.append((os.path.relpath(entry.path, folder), st.st_size, st.st_mtime_ns))
    entries.sort()
    digest = hashlib.sha256()
    for name, size, mtime in entries:
        digest.update(f"{name}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return {"files": len(entries), "bytes": sum(e[1] for e in entries), "sha256": digest.hexdigest()}


def kaggle_download(handle: str) -> Path:
    """Downloads (or finds in kagglehub's cache, offline too) a pinned dataset version; returns its folder."""
    try:
        import kagglehub
    except ImportError as exc:  # pragma: no cover - it is in requirements.txt
        raise DataError("data.source=kaggle needs the kagglehub package: pip install -r requirements.txt") from exc

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
    if not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "no such folder"
        raise DataError(f"{folder}: {what}. Point data.local_root at the folder with {IMAGES_DIR}/ and "
                        "the split files.")
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / wanted).is_file():
            return candidate
    found = sorted(p.name for p in folder.rglob("*_COVIDx_CT-*.txt"))[:10]
    raise DataError(
        f"{folder}: no {wanted} here or one level below. Split files found: {found or 'none'}. "
        f"Set data.variant to the one present, or point data.local_root / data.kaggle_handle at a CT-{variant} copy."
    )


def dataset_root(data: dict, sample_root: str | os.PathLike) -> Path:
    """The folder with ``3A_images/`` and the split files, for the configured source."""
    source, variant = data["source"], data.get("variant", "3A")
    if source == "sample":
        return Path(sample_root)
    if source == "local":
        if not data.get("local_root"):
            raise DataError("data.source=local needs data.local_root: the folder with 3A_images/ and the split files.")
        return find_dataset_root(Path(data["local_root"]).expanduser().absolute(), variant)
    handle = data["kaggle_handle"]
    if "/versions/" not in handle:
        raise DataError(f"data.kaggle_handle={handle!r} has no version: pin one (e.g. hgunraj/covidxct/versions/5) "
                        "so that every run reads the same data.")
    return find_dataset_root(kaggle_download(handle), variant)


def prepare(data: dict, sample_root: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The download stage: copies the split files into ``out_dir`` (a fresh folder) and writes dataset.json, which
    it returns: source, the images root, each split file's SHA-256 and slice count, and the images' fingerprint."""
    out_dir, variant = Path(out_dir), data.get("variant", "3A")
    root = dataset_root(data, sample_root)
    if not (root / IMAGES_DIR).is_dir():
        raise DataError(f"{root}: no {IMAGES_DIR}/ folder beside the split files. Is this a COVIDx CT-{variant} copy?")
    info = {"source": data["source"], "variant": variant, "root": str(root)}
    if data["source"] == "local":
        info["local_root"] = data["local_root"]
    elif data["source"] == "kaggle":
        info["kaggle_handle"] = data["kaggle_handle"]
    info["split_files"] = {}
    for split in SPLITS:
        name = split_filename(split, variant)
        shutil.copyfile(root / name, out_dir / name)
        # Parsed from the copy (the bytes crop will read) but named as the user's file: the copy is a temporary
        # folder that is gone once the stage has failed.
        rows = read_split_file(out_dir / name, split, shown_as=root / name)
        info["split_files"][split] = {"file": name, "sha256": sha256_file(out_dir / name), "slices": len(rows)}
    if (root / METADATA_CSV).is_file():  # the release's per-patient metadata: where each slice's source comes from
        shutil.copyfile(root / METADATA_CSV, out_dir / METADATA_CSV)
        info["metadata"] = {"file": METADATA_CSV, "sha256": sha256_file(out_dir / METADATA_CSV)}
    if data["source"] != "sample":
        info["images"] = fingerprint(root / IMAGES_DIR)
    atomic_write_json(out_dir / DATASET_JSON, info)
    return info
