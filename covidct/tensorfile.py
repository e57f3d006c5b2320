"""Reading safetensors files (plain arrays: loading one never runs code) with an error that says how to recover."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from covidct.errors import DataError


def read_safetensors(path: str | Path, load: Callable[[str], dict], what: str = "file") -> dict:
    """``load(path)`` (safetensors' numpy or torch ``load_file``), or a ``DataError`` naming the damaged file."""
    try:
        return load(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError for truncated or foreign files
        raise DataError(f"{path}: not a readable safetensors {what} ({type(exc).__name__}: {exc}). "
                        "Restore it with `dvc checkout` or retrain with `dvc repro`.") from None
