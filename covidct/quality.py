"""Data-quality reports: what a stage skipped, why, and whether that is too much to go on.

Each stage that skips bad items writes a JSON summary (counts by reason, the fraction, the limit) and a CSV with
one row per skipped item (split-file line, file, reason), at the paths dvc.yaml gives it, then fails if more than
``max_skipped_fraction`` of its items were skipped. The report is written before that check, so a failed run
still says what went wrong.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from covidct.atomic import atomic_path, atomic_write_json
from covidct.errors import DataError

COLUMNS = ["where", "fname", "split", "reason", "detail"]


def report(stage: str, total: int, skipped: list[dict], max_fraction: float, json_path, csv_path) -> dict:
    fraction = len(skipped) / total if total else 0.0
    summary = {"items": total, "kept": total - len(skipped), "skipped": len(skipped),
               "skipped_fraction": round(fraction, 6), "max_skipped_fraction": max_fraction,
               "by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items()))}
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(skipped, columns=COLUMNS).to_csv(tmp, index=False)
    atomic_write_json(json_path, summary)
    if skipped:
        print(f"{stage}: skipped {len(skipped)} of {total} ({fraction:.2%}): {summary['by_reason']}; "
              f"each listed in {csv_path}")
    if fraction > max_fraction:
        examples = "; ".join(f"{s['where']}: {s['fname']}: {s['detail']}" for s in skipped[:3])
        raise DataError(
            f"{stage}: {len(skipped)} of {total} items unusable ({fraction:.2%} > {stage}.max_skipped_fraction="
            f"{max_fraction}), by reason {summary['by_reason']}. First: {examples}. All of them: {csv_path}. "
            f"Fix or re-download those files, or raise {stage}.max_skipped_fraction if losing them is acceptable."
        )
    return summary
