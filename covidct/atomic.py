"""Atomic outputs: write beside the target, then rename over it.

A killed stage leaves either the old output or the new one, never half of one, and DVC never caches a
partial file. Temporaries are named ``.tmp-<target>.<pid>.<random>``; the next write of the same target
removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask_mode(base: int) -> int:
    """The mode a plain ``open``/``mkdir`` would give: temporaries are created private (0600/0700), and an
    output must not stay that way on a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


def _prefix(target: Path) -> str:
    return f".tmp-{target.name}.{os.getpid()}."


def _remove_stale(target: Path) -> None:
    """Deletes temporaries of ``target`` left by a killed process (its pid, in the name, is gone): a kill -9 in
    the middle of a 20 GB crop store must not leave 20 GB behind for good."""
    for stale in target.parent.glob(f".tmp-{glob.escape(target.name)}.*.*"):
        pid = stale.name[len(f".tmp-{target.name}."):].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed process whose parent died too stays a zombie until init reaps it: dead all the same
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): trust kill()
        return True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yields a temporary path in the target's folder; renames it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(target), dir=target.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yields an empty temporary folder; it replaces ``target`` (and whatever was there) on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        if target.exists():
            old = target.with_name(f".old-{target.name}.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | os.PathLike, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")
