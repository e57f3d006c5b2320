"""params.yaml: read once per stage; each section it uses is checked by the module that consumes it, before any work.

A stage names its sections and their checks: ``params.load(crop=crop.check_params)``. Each check returns a list of
problems, each naming the key and what it accepts; all of them are reported together in one ``ParamsError``.
This module imports nothing of the project but the errors, so reading parameters never loads torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import yaml

from covidct.errors import ParamsError


def load(path: str | os.PathLike = "params.yaml", **checks: Callable[[dict], list[str]]) -> dict:
    """The parsed params.yaml; ``section=check`` runs ``check(params[section])`` and raises on any problem."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run stages from the repository root (dvc repro does).") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    problems = []
    for section, check in checks.items():
        if not isinstance(params.get(section), dict):
            problems.append(f"{section}: missing, or not a mapping of keys")
        else:
            problems += check(params[section])
    if problems:
        raise ParamsError(f"{path}: " + "; ".join(problems))
    return params


class Problems(list):
    """What a check found: ``problems.require(condition, message)`` records ``message`` when the condition fails."""

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.append(message)


def is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
