"""report stage: every configured model's metrics -> a summary table (best first) + compact metrics, and the
combined curve files that dvc.yaml's overlaid plots draw (one colour per model)."""

import argparse
from pathlib import Path

from covidct import cli, params, report
from covidct.atomic import atomic_path, atomic_write_json, atomic_write_text


def main(metrics: str, live: str, epochs: str, summary: str, compact: str, curves: str) -> None:
    p = params.load()
    names = report.model_names(p)
    results = report.read_results(names, metrics)
    text = report.summary_markdown(results, p["evaluate"]["bootstrap"])
    atomic_write_text(summary, text)
    atomic_write_json(compact, report.summary_metrics(results))
    tables = {**report.combined_curves(names, live), **report.epoch_curves(names, epochs)}
    for kind, table in tables.items():
        with atomic_path(Path(curves) / f"{kind}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    print(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="folder of per-model metrics JSON (<model>.json)")
    parser.add_argument("--live", required=True, help="folder of per-model evaluate dvclive folders")
    parser.add_argument("--epochs", required=True, help="folder of per-model epoch tables (<model>.csv)")
    parser.add_argument("--summary", required=True, help="the Markdown table to write")
    parser.add_argument("--compact", required=True, help="the compact metrics JSON to write")
    parser.add_argument("--curves", required=True, help="folder for the combined curve CSVs")
    cli.run(main, **vars(parser.parse_args()))
