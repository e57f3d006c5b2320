"""What every stage shares: a clear one-paragraph error instead of a traceback for known failures."""

from __future__ import annotations

import os
import sys

from covidct.errors import KNOWN_ERRORS


def run(main, *args, **kwargs) -> None:
    """Runs a stage's ``main``; known failures print ``error: ...`` and exit 2 (COVIDCT_TRACEBACK=1 shows the trace)."""
    try:
        main(*args, **kwargs)
    except KNOWN_ERRORS as exc:
        if os.environ.get("COVIDCT_TRACEBACK"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def show_progress() -> bool:
    """Progress bars for people, not for CI logs."""
    return sys.stderr.isatty() and not os.environ.get("CI")
