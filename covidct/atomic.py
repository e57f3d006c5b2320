"""Atomic outputs: write beside the target, then rename over it.

A killed stage leaves either the old output or the new one, never half of one, and DVC never caches a
partial file. Temporaries are named ``.tmp-<target>.<pid>.<random>``; the next write of the same target
removes those whose process is gone.

A stage also never renames an output into place once the process that started it (dvc, torchrun) is gone:
``watch_parents`` (called by ``cli.run``) makes it stop when that process dies, and every rename checks first.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

WATCH_ENV = "COVIDCT_WATCH_PIDS"  # the processes a stage's own children (torchrun ranks) must outlive too
SHELLS = {"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox"}
_parent: int | None = None  # os.getppid() when watch_parents was called
_watched: dict[int, int | None] = {}  # pid -> its pidfd (None where pidfds are unavailable)


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
        _check_parents(target)
        os.replace(tmp, target)
    except BaseException as exc:
        _name_output(exc, target)
        raise
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
        _check_parents(target)
        if target.exists():
            old = target.with_name(f".old-{target.name}.{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        _name_output(exc, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | os.PathLike, data) -> None:
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _name_output(exc: BaseException, target: Path) -> None:
    """Records on ``exc`` the output being written when it was raised (the innermost one), for ``cli.run``'s
    message: an ENOSPC from ``write`` names no file."""
    if getattr(exc, "covidct_output", None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            exc.covidct_output = target


class ParentGone(RuntimeError):
    """The process that started this one is gone: its output must not be written any more."""


def watch_parents() -> None:
    """Stops this process when the process that started it dies; ``atomic_path``/``atomic_dir`` refuse to rename
    from then on.

    Watched: the parent (dvc; torchrun's agent for a rank); the parent's parent when the parent is a ``sh -c``
    wrapper (DVC runs ``$SHELL -c cmd``, and dash waits for the command instead of exec-ing it, so killing dvc
    would leave the shell and us running); and whatever the parent watched (``COVIDCT_WATCH_PIDS``), so a torchrun
    rank stops with the stage process that launched torchrun. On Linux the parent's death sends us SIGKILL
    (PR_SET_PDEATHSIG) and a thread waits on the others' pidfds; elsewhere a thread polls.
    """
    global _parent
    if _parent is not None:
        return
    _parent = os.getppid()
    pids = [int(p) for p in os.environ.get(WATCH_ENV, "").split(",") if p.isdigit()] + [_parent]
    if _is_shell_wrapper(_parent):
        pids.append(_parent_of(_parent))
    for pid in dict.fromkeys(pids):
        if pid > 1 and pid != os.getpid():
            _watched[pid] = _pidfd(pid)
    os.environ[WATCH_ENV] = ",".join(str(pid) for pid in [*_watched, os.getpid()])
    set_death_signal()
    threading.Thread(target=_stop_when_orphaned, name="covidct-watch-parents", daemon=True).start()


def parents_alive() -> bool:
    """False once a process ``watch_parents`` watches has exited (always True if it was not called)."""
    if _parent is None:
        return True
    if os.getppid() != _parent:  # reparented: our parent exited
        return False
    for pid, fd in _watched.items():
        if fd is not None:
            if select.select([fd], [], [], 0)[0]:  # a pidfd turns readable when its process exits
                return False
        elif not _alive(pid):
            return False
    return True


def set_death_signal(sig: int = signal.SIGKILL) -> None:
    """Linux: ``sig`` is sent to this process when its parent (the thread that forked it) exits."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG


def _check_parents(target: Path) -> None:
    if not parents_alive():
        raise ParentGone(f"{target}: not written: the process that started this stage is gone "
                         "(a new `dvc repro` may be writing it now)")


def _stop_when_orphaned() -> None:
    while parents_alive():
        fds = [fd for fd in _watched.values() if fd is not None]
        if fds:
            select.select(fds, [], [], 1.0)
        else:
            threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGKILL)  # decode workers follow through their own death signal


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux >= 5.3, or already gone (then _alive says so)
        return None


def _proc_stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _parent_of(pid: int) -> int:
    try:
        return int(_proc_stat(pid)[1])
    except (OSError, IndexError, ValueError):
        return 0


def _is_shell_wrapper(pid: int) -> bool:
    """Whether ``pid`` is a non-interactive shell running a command line (``sh -c ...``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return False
    return bool(argv) and os.path.basename(argv[0]).lstrip("-") in SHELLS and "-c" in argv[1:]
