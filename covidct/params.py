"""params.yaml: read once per stage; each section it uses is checked by the module that consumes it, before any work.

A stage names its sections and their checks: ``params.load(crop=crop.check_params)``. Each check returns a list of
problems, each naming the key and what it accepts; all of them are reported together in one ``ParamsError``.
This module imports nothing of the project but the errors, so reading parameters never loads torch.

Numbers are read as numbers however they are spelled: ``dvc exp run -S heads.mlp.base_lr=6e-5`` writes ``6e-05``,
which YAML 1.1 (PyYAML's default) reads as a string; ``Loader`` adds YAML 1.2's floats (``1e3``, ``6e-05``,
``1.0e3``; ``.5`` and ``1_000`` already were numbers) and ``0o17`` octal ints, as DVC's own YAML 1.2 parser reads
them. Keys no check knows are reported, with the closest known key, so a typo is never silently ignored.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from covidct.errors import ParamsError

# The sections of params.yaml, each checked by the module that consumes it (tests/test_params.py keeps this list
# and the file in step).
SECTIONS = ("data", "sample", "crop", "extract", "backbones", "heads", "evaluate", "confounding", "finetune", "explain")
MAX_WORKERS = 1024  # processes or threads a key may ask for
MAX_SEED = 2**32 - 1  # numpy's and pandas' limit


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2 numbers: ``6e-05``, ``1e3``, ``1.0e3``, ``0o17``."""


class Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes the strings ``Loader`` would read as numbers (``'1e3'``): a round trip."""


for _cls, _base in ((Loader, yaml.SafeLoader), (Dumper, yaml.SafeDumper)):
    # Copies, so that adding ours leaves PyYAML's own classes as they were.
    _cls.yaml_implicit_resolvers = {k: list(v) for k, v in _base.yaml_implicit_resolvers.items()}
    _cls.add_implicit_resolver(  # YAML 1.1 wants a dot and a signed exponent (1.0e+3); 1.2 wants neither
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    _cls.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?0o[0-7_]+$"), list("-+0"))


def _construct_int(loader: Loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    if text.lstrip("+-").startswith("0o"):
        return int(text, 0)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read(path: str | os.PathLike = "params.yaml") -> dict:
    """params.yaml as a dict of sections, numbers read as numbers (``Loader``), no section checked."""
    path = Path(path)
    try:
        params = yaml.load(path.read_text(), Loader=Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run stages from the repository root (dvc repro does).") from None
    except IsADirectoryError:
        raise ParamsError(f"{path} is a folder, not the params file") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: undecodable bytes, an int of over 4300 digits
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def load(path: str | os.PathLike = "params.yaml", **checks: Callable[[dict], list[str]]) -> dict:
    """The parsed params.yaml; ``section=check`` runs ``check(params[section])`` and raises on any problem.

    A section no module reads (a typo such as ``evalute:``) is a problem too, whatever is checked."""
    path = Path(path)
    params = read(path)
    problems = unknown_keys("", params, SECTIONS)
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
    """An int or a finite float (not a bool, nan or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(value, int)
                                                                                or math.isfinite(value))


def is_int(value, low: int = 0, high: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)


def integer(key: str, value, low: int = 0, high: int | None = None, note: str = "") -> list[str]:
    """The problem, if any, with ``key=value`` as an integer in [low, high]."""
    if is_int(value, low, high):
        return []
    if low in (0, 1):
        what = ("a non-negative integer", "a positive integer")[low] + (f" <= {high}" if high is not None else "")
    else:
        what = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return [f"{key}={value!r}: {what}{note}"]


def seed_int(key: str, value) -> list[str]:
    return integer(key, value, 0, MAX_SEED)


def worker_count(key: str, value, note: str = " (0 = all cores)") -> list[str]:
    return integer(key, value, 0, MAX_WORKERS, note)


def number(key: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> list[str]:
    """The problem, if any, with ``key=value`` as a finite number in the interval given (open ends where asked)."""
    ok = is_number(value) and (low is None or (value > low if low_open else value >= low)) \
        and (high is None or (value < high if high_open else value <= high))
    if ok:
        return []
    if low == 0 and low_open and high is None:
        what = "a positive number"
    elif high is None:
        what = f"a number {'>' if low_open else '>='} {low}" if low is not None else "a number"
    else:
        what = f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return [f"{key}={value!r}: {what}"]


def choice(key: str, value, choices) -> list[str]:
    """The problem, if any, with ``key=value`` as one of ``choices`` (strings; a list or dict value never is)."""
    if isinstance(value, str) and value in choices:
        return []
    return [f"{key}={value!r}: choose one of {list(choices)}"]


def device_name(key: str, value) -> list[str]:
    """A torch device name this project runs on; whether it is there is checked when it is used (resolve_device)."""
    if isinstance(value, str) and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]{1,3})?", value):
        return []
    return [f"{key}={value!r}: one of auto, cpu, cuda, cuda:<index>, mps"]


def flag(key: str, value) -> list[str]:
    return [] if isinstance(value, bool) else [f"{key}={value!r}: true or false"]


def unknown_keys(prefix: str, section: dict, known) -> list[str]:
    """A problem for each key of ``section`` not in ``known``, naming the closest known keys (typos)."""
    known = [str(k) for k in known]
    problems = []
    for key in section:
        if key in known:
            continue
        lowered = {k.lower(): k for k in known}  # so that c finds C
        close = [lowered[k] for k in difflib.get_close_matches(str(key).lower(), lowered, n=2, cutoff=0.6)]
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        where = f"{prefix}.{key}" if prefix else f"{key}"
        problems.append(f"{where}: unknown key; {hint}known keys: {sorted(known)}")
    return problems
