"""Safe extraction of downloaded archives: nothing lands outside the target folder.

kagglehub (0.4.3) extracts what it downloads with a bare ``extractall``. ``safe_extract`` replaces that step:
tar members go through the standard library's ``data`` filter (refuses ``..``, links that leave the folder,
device files) after a check for absolute paths, which that filter would silently make relative; zip members
are checked the same way by hand, and symlink members refused.
A refused member stops the download with its name; nothing of that archive is extracted.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
import zipfile
from pathlib import Path

from covidct.errors import DataError


def _inside(root: Path, member: str) -> bool:
    target = (root / member).resolve()
    return target == root or root in target.parents


def check_zip(archive: zipfile.ZipFile, root: Path, name: str) -> None:
    for info in archive.infolist():
        member = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DataError(f"{name}: member {member!r} is a symbolic link; refusing to extract this archive.")
        if member.startswith(("/", "\\")) or (len(member) > 1 and member[1] == ":") or not _inside(root, member):
            raise DataError(f"{name}: member {member!r} would be written outside {root}; refusing to extract "
                            "this archive (re-download it from the official source).")


def safe_extract(archive_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Extracts a tar or zip archive into ``out_path``, refusing any member that would escape it."""
    archive_path, root = Path(archive_path), Path(out_path)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as tar:
            members = tar.getmembers()
            for member in members:  # check everything first: a refused archive extracts nothing
                try:
                    if member.name.startswith(("/", "\\")):  # the data filter would strip the slash; refuse instead
                        raise tarfile.FilterError(f"absolute path {member.name!r}")
                    tarfile.data_filter(member, str(root))
                except tarfile.FilterError as exc:
                    raise DataError(f"{archive_path.name}: member {member.name!r} refused ({exc}); refusing to "
                                    "extract this archive (re-download it from the official source).") from None
            tar.extractall(root, members=members, filter="data")
    elif zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            check_zip(archive, root, archive_path.name)
            archive.extractall(root)
    else:
        raise DataError(f"{archive_path}: neither a tar nor a zip archive; the download is probably incomplete.")


@contextlib.contextmanager
def kagglehub_extracts_safely():
    """Makes kagglehub extract through ``safe_extract`` for the duration (its own step is a plain extractall)."""
    from kagglehub import http_resolver

    original = http_resolver._extract_archive
    http_resolver._extract_archive = safe_extract
    try:
        yield
    finally:
        http_resolver._extract_archive = original
