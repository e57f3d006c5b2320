"""report stage: every configured model's metrics -> a summary table (best first) + compact metrics, and the
combined curve files that dvc.yaml's overlaid plots draw (one colour per model)."""

import argparse
import json
from pathlib import Path

from covidct import cli, confounding, params, report
from covidct.atomic import atomic_path, atomic_write_json, atomic_write_text


def main(metrics: str, live: str, epochs: str, summary: str, compact: str, curves: str, checks: str,
         loso: str) -> None:
    p = params.load(confounding=confounding.check_params)
    names = report.model_names(p)
    results = report.read_results(names, metrics)
    source_checks = {b: json.loads((Path(checks) / f"{b}.json").read_text()) for b in p["backbones"]}
    refits = report.read_results(report.head_model_names(p), loso)
    margin = p["confounding"]["margin"]
    text = report.summary_markdown(results, p["evaluate"]["bootstrap"], source_checks, refits, margin)
    atomic_write_text(summary, text)
    atomic_write_json(compact, report.summary_metrics(results))
    tables = {**report.combined_curves(names, live), **report.epoch_curves(names, epochs),
              "loso": report.loso_table(refits)}
    for kind, table in tables.items():
        with atomic_path(Path(curves) / f"{kind}.csv") as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
    print(text)
    for name in report.flagged_models(results, source_checks, margin):
        print(f"report: warning: {name} does no better than the source alone on test (see {summary}, Confounding check)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", required=True, help="folder of per-model metrics JSON (<model>.json)")
    parser.add_argument("--live", required=True, help="folder of per-model evaluate dvclive folders")
    parser.add_argument("--epochs", required=True, help="folder of per-model epoch tables (<model>.csv)")
    parser.add_argument("--summary", required=True, help="the Markdown table to write")
    parser.add_argument("--compact", required=True, help="the compact metrics JSON to write")
    parser.add_argument("--curves", required=True, help="folder for the combined curve CSVs")
    parser.add_argument("--confounding", dest="checks", required=True, help="folder of per-backbone confounding checks (<backbone>.json)")
    parser.add_argument("--loso", required=True, help="folder of per-model leave-one-source-out results (<model>.json)")
    cli.run(main, **vars(parser.parse_args()))
