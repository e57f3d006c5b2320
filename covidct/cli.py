"""What every stage shares: a clear one-paragraph error instead of a traceback for known failures."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

from covidct import atomic
from covidct.errors import KNOWN_ERRORS


def run(main, *args, **kwargs) -> None:
    """Runs a stage's ``main``; known failures print ``error: ...`` and exit 2 (COVIDCT_TRACEBACK=1 shows the trace).

    A full disk, wherever it is hit (an ``OSError`` with ENOSPC, or a library's error that wraps one), is a known
    failure too: ``error: no space left on <output>``; the output's temporaries are gone by then (``atomic``).
    Run by DVC (which sets DVC_STAGE) or as a torchrun rank of such a stage, it stops when the process that started
    it dies (``atomic.watch_parents``): no orphan overwrites the output of the next ``dvc repro``. Run by hand
    (``nohup python -m stages.crop ...``), it outlives its shell as any program does.
    """
    if os.environ.get("DVC_STAGE") or os.environ.get(atomic.WATCH_ENV):
        atomic.watch_parents()
    try:
        main(*args, **kwargs)
    except KNOWN_ERRORS + (atomic.ParentGone,) as exc:
        if os.environ.get("COVIDCT_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        full = no_space(exc)
        if full is None or os.environ.get("COVIDCT_TRACEBACK"):
            raise
        print(f"error: {no_space_message(exc, full)}", file=sys.stderr)
        sys.exit(2)


def no_space(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that says the disk (or a quota) is full, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if any(text in str(exc) for text in ("No space left on device", "Disk quota exceeded")):
            return exc  # pyarrow, safetensors, torch: the errno survives only in the message
        exc = exc.__cause__ or exc.__context__
    return None


def no_space_message(exc: BaseException, full: BaseException) -> str:
    output = getattr(exc, "covidct_output", None) or getattr(full, "covidct_output", None)
    filename = getattr(full, "filename", None)
    where = output or filename
    if where is None:
        return f"no space left on the device ({full}). Free some space and rerun."
    text = f"no space left on {where}"
    if filename and output and Path(filename) != Path(output):
        text += f" (writing {filename})"
    free = _free_bytes(Path(where))
    if free is not None:
        text += f"; {_size(free)} free there"
    if output:
        text += ". Nothing was written there and the partial output is removed"
    return text + ". Free some space (`dvc gc -w` drops cache objects the workspace does not use) and rerun."


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def show_progress() -> bool:
    """Progress bars for people, not for CI logs."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"
