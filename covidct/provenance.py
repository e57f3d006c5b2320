"""Which public collection each slice comes from: its *source* (CNCB, MosMedData, LIDC-IDRI, ...).

COVIDx CT pools many collections, several of them single-class, so a model can score well by recognising the
scanner or the reconstruction instead of the disease. Per-source metrics, leave-one-source-out and the
confounding check all start here:

1. the release's ``metadata.csv`` (COVIDNet-CT's format: ``patient id,source,country,...``, one row per patient;
   the patient id is the one ``layout.patient_id`` derives from a slice's name, e.g. ``CP_1068``), when present;
2. else (and for any patient it does not list) the first of ``crop.source_rules`` whose regular expression is
   found in the slice's file name, its source written as in ``re.Match.expand`` (``\\1`` is the first group);
3. else ``unknown``, counted and reported, never an error: per-source numbers are a report, not a gate.

The default rules fit CT-3A's names: CNCB's ``NCP_``, ``CP_`` and ``Normal_`` are one source, and any other name's
leading words (``LIDC-IDRI-0001_...`` -> ``LIDC-IDRI``, ``radiopaedia_10_...`` -> ``radiopaedia``) name its source.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pandas as pd

from covidct.errors import DataError
from covidct.params import Problems

METADATA_CSV = "metadata.csv"
UNKNOWN = "unknown"
DEFAULT_RULES = [["^(NCP|CP|Normal)_", "CNCB"], ["^([A-Za-z]+(?:-[A-Za-z]+)*)", "\\1"]]
ASSIGNED_BY = ("metadata.csv", "file-name rule", "unknown")


def check_rules(key: str, rules) -> list[str]:
    """``rules``: a list of ``[regex, source]`` pairs; every regex must compile and every source be non-empty."""
    problems = Problems()
    if not isinstance(rules, list) or not rules:
        problems.append(f"{key}={rules!r}: a list of [regex, source] pairs, e.g. {DEFAULT_RULES!r}")
        return problems
    for number, rule in enumerate(rules):
        if not (isinstance(rule, list) and len(rule) == 2 and all(isinstance(v, str) and v for v in rule)):
            problems.append(f"{key}[{number}]={rule!r}: a pair [regex, source] of two non-empty strings")
            continue
        try:
            _check_template(re.compile(rule[0]), rule[1])
        except re.error as exc:
            problems.append(f"{key}[{number}]={rule!r}: {exc}")
    return problems


def _check_template(compiled: re.Pattern, template: str) -> None:
    """Raises re.error if ``template`` refers to a group ``compiled`` lacks (found before any name is read)."""
    for ref in re.findall(r"\\(\d+)|\\g<(\w+)>", template):
        group = ref[0] or ref[1]
        if group.isdigit() and int(group) > compiled.groups or not group.isdigit() and group not in compiled.groupindex:
            raise re.error(f"the source refers to group {group}, which the regex does not have")


def read_metadata(path: str | os.PathLike, shown_as: str | os.PathLike | None = None) -> dict[str, str]:
    """{patient id: source} from a COVIDNet-CT style ``metadata.csv``; a problem is a DataError naming file:line."""
    path, shown = Path(path), Path(shown_as) if shown_as is not None else Path(path)
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "patient id" not in header or "source" not in header:
        raise DataError(f"{shown}:1: expected a header with 'patient id' and 'source' columns (COVIDNet-CT's "
                        f"metadata.csv), got {header[:6]!r}. Fix the header, or remove the file to take sources "
                        "from file names (crop.source_rules)")
    pid, src = header.index("patient id"), header.index("source")
    sources: dict[str, tuple[str, int]] = {}
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(pid, src) or not row[pid].strip() or not row[src].strip():
            raise DataError(f"{shown}:{number}: no patient id or source: {','.join(row)!r}. Fix or delete the line")
        patient, source = row[pid].strip(), row[src].strip()
        if patient in sources and sources[patient][0] != source:
            raise DataError(f"{shown}:{number}: patient {patient!r} is listed again with source {source!r} "
                            f"(line {sources[patient][1]}: {sources[patient][0]!r}). Keep one source per patient")
        sources.setdefault(patient, (source, number))
    return {patient: source for patient, (source, _) in sources.items()}


def by_name(fname: str, rules) -> str | None:
    """The source the first matching rule gives ``fname`` (its base name), or None."""
    base = fname.rpartition("/")[2]
    for pattern, template in rules:
        found = re.search(pattern, base)
        if found:
            return found.expand(template)
    return None


def assign(table: pd.DataFrame, metadata: dict[str, str] | None, rules) -> tuple[pd.Series, dict]:
    """(source per row of ``table`` (columns fname, patient), slices per way of finding it: ASSIGNED_BY)."""
    metadata = metadata or {}
    compiled = [(re.compile(pattern), template) for pattern, template in rules]
    found, how = [], dict.fromkeys(ASSIGNED_BY, 0)
    for fname, patient in zip(table["fname"], table["patient"]):
        source = metadata.get(patient)
        way = "metadata.csv"
        if source is None:
            source, way = by_name(fname, compiled), "file-name rule"
        if source is None:
            source, way = UNKNOWN, "unknown"
        found.append(source)
        how[way] += 1
    return pd.Series(found, index=table.index, name="source"), how


def counts(index: pd.DataFrame, label_names) -> dict:
    """{split: {source: {label name: slices}}}: the table meta.json keeps and the report shows."""
    out = {}
    for (split, source), part in index.groupby(["split", "source"], sort=True):
        labels = part["label"].value_counts()
        out.setdefault(split, {})[source] = {name: int(labels.get(k, 0)) for k, name in enumerate(label_names)}
    return out
