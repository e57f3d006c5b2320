"""Every backbone x head, across experiments, with 95 % CIs, in a terminal: ``python -m covidct.compare``.

``dvc exp show`` lists one number per column and no intervals; this prints, for the workspace and each of its
experiments (``dvc exp show``'s rows), one table with a row per backbone (VGG16 and ViT-B/16 next to each other)
and a column per head, each cell ``value [95 % CI]`` from the model's full metrics JSON at that revision (the
report stage's ``--metrics`` folder in dvc.yaml).
Fine-tuned networks get a table of their own. Lines stay within ``--width`` (tables wrap by head).

    python -m covidct.compare                       # ROC AUC and accuracy, test slices
    python -m covidct.compare --metrics roc_auc sensitivity specificity --block patient
    python -m covidct.compare --metrics accuracy --block worst_source   # each model on the source it does worst on
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from covidct import report

LABELS = {"roc_auc": "ROC AUC", "accuracy": "accuracy", "balanced_accuracy": "bal. acc.", "sensitivity": "sensitivity",
          "specificity": "specificity", "pr_auc": "PR AUC", "f1": "F1", "ece": "ECE", "brier": "Brier"}
CELL = len("0.000 [0.000, 0.000]")
FINETUNE = "finetune-"


def cell(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    if metric.get("ci_low") is None:
        return f"{metric['value']:.3f}"
    return f"{metric['value']:.3f} [{metric['ci_low']:.3f}, {metric['ci_high']:.3f}]"


def split_name(model: str) -> tuple[str, str]:
    """``vgg16-mlp`` -> (vgg16, mlp); ``finetune-resnet18-scratch`` -> (resnet18-scratch, fine-tuned)."""
    if model.startswith(FINETUNE):
        return model[len(FINETUNE):], "fine-tuned"
    backbone, _, head = model.rpartition("-")
    return backbone, head


def metrics_of(result: dict, block: str) -> dict:
    """One block of a model's metrics JSON; ``worst_source``: the test metrics of its worst source."""
    if block == "worst_source":
        worst = result.get("worst_source")
        return result["by_source"][worst] if worst else {}
    return result.get(block, {})


def table(results: dict[str, dict], block: str, metrics: list[str], width: int, title: str = "backbone") -> list[str]:
    """Rows: backbones in first-seen order; columns: (head, metric), wrapped to ``width``."""
    rows, columns, cells = [], [], {}
    for model, result in results.items():
        row, head = split_name(model)
        rows += [row] if row not in rows else []
        for metric in metrics:
            columns += [(head, metric)] if (head, metric) not in columns else []
            cells[row, head, metric] = cell(metrics_of(result, block).get(metric))
    label = max(len(title), *(len(r) for r in rows))
    per_line = max(1, (width - label) // (CELL + 2))
    lines = []
    for start in range(0, len(columns), per_line):
        chunk = columns[start:start + per_line]
        heads = [f"{h}: {LABELS.get(m, m)}" if i == 0 or chunk[i - 1][0] != h else LABELS.get(m, m)
                 for i, (h, m) in enumerate(chunk)]
        lines.append("  ".join([f"{title:<{label}}"] + [f"{h:<{CELL}}" for h in heads]).rstrip())
        for row in rows:
            values = [cells.get((row, h, m), "") for h, m in chunk]
            lines.append("  ".join([f"{row:<{label}}"] + [f"{v:<{CELL}}" for v in values]).rstrip())
    return lines


def models_in(row: dict) -> list[str]:
    """Model names from ``dvc exp show``'s columns of metrics/summary.json (``<model>.roc_auc``)."""
    models = []
    for key, value in row.items():
        name = key.split(":", 1)[-1]
        if not isinstance(value, (int, float)):  # a column only another revision has ("None" there)
            continue
        if name.endswith(".roc_auc"):
            models.append(name[: -len(".roc_auc")])
    return models


def git_show(repo: str, rev: str, path: str) -> str:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=repo, capture_output=True, text=True,
                           check=False)
    if shown.returncode != 0:
        raise FileNotFoundError(2, shown.stderr.strip(), f"{rev}:{path}")
    return shown.stdout


def read_text(repo: str, path: str, rev: str | None) -> str:
    """A git-tracked file at a revision (experiments' commits included), or in the workspace when ``rev`` is None."""
    return (Path(repo) / path).read_text() if rev is None else git_show(repo, rev, path)


def metrics_folder(dvc_yaml: str) -> str:
    """The per-model metrics folder, as dvc.yaml passes it to the report stage (dvc.yaml names every data path)."""
    return re.search(r"--metrics\s+(\S+)", yaml.safe_load(dvc_yaml)["stages"]["report"]["cmd"]).group(1)


def in_params_order(models: list[str], params_text: str) -> list[str]:
    """params.yaml's order (VGG16 next to ViT-B/16 as configured), then anything it does not name."""
    try:
        configured = report.model_names(yaml.safe_load(params_text))
    except (yaml.YAMLError, KeyError, TypeError):
        configured = []
    return [m for m in configured if m in models] + sorted(set(models) - set(configured))


def experiments(repo: str, revs: list[str] | None) -> list[tuple[str, str | None, list[str]]]:
    """(title, rev or None for the workspace, model names) for every row ``dvc exp show`` gives."""
    import dvc.api
    out = []
    for row in dvc.api.exp_show(repo=repo, revs=revs or None):
        if row["rev"] == "workspace":
            out.append(("workspace", None, models_in(row)))
        else:
            title = f"{row['Experiment']} ({row['rev']})" if row.get("Experiment") else row["rev"]
            out.append((title, row["rev"], models_in(row)))
    return out


def compare(repo: str = ".", revs: list[str] | None = None, metrics=("roc_auc", "accuracy"), block: str = "test",
            width: int = 120) -> str:
    lines = [f"{block} metrics, 95 % patient-bootstrap CI ({', '.join(LABELS.get(m, m) for m in metrics)})"]
    for title, rev, models in experiments(repo, revs):
        if not models:
            lines += ["", f"== {title}: no metrics/summary.json"]
            continue
        try:
            models = in_params_order(models, read_text(repo, "params.yaml", rev))
        except FileNotFoundError:
            pass
        try:
            folder = metrics_folder(read_text(repo, "dvc.yaml", rev))
        except (FileNotFoundError, KeyError, TypeError, AttributeError, yaml.YAMLError):
            lines += ["", f"== {title}: no report stage with --metrics in its dvc.yaml"]
            continue
        results, missing = {}, []
        for model in models:
            try:
                results[model] = json.loads(read_text(repo, f"{folder}/{model}.json", rev))
            except FileNotFoundError:  # e.g. a revision from before metrics/models/ existed
                missing.append(model)
        if missing:
            lines += ["", f"== {title}: {len(missing)} model(s) without <model>.json in {folder} (an older layout?)"]
            if not results:
                continue
        heads_models = {m: r for m, r in results.items() if not m.startswith(FINETUNE)}
        tuned = {m: r for m, r in results.items() if m.startswith(FINETUNE)}
        lines += ["", f"== {title}"]
        for group, rows_title in ((heads_models, "backbone"), (tuned, "network-init")):
            if group:
                lines += table(group, block, list(metrics), width, rows_title)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covidct.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="*", help="git revisions whose experiments to show (default: HEAD's, as "
                                                "`dvc exp show`)")
    parser.add_argument("--metrics", nargs="+", default=["roc_auc", "accuracy"], choices=sorted(LABELS))
    parser.add_argument("--block", default="test", choices=["test", "val", "patient", "worst_source"],
                        help="test slices, validation slices, patients (mean slice probability), or the test slices "
                             "of each model's worst source (docs/sources.md)")
    parser.add_argument("--width", type=int, default=120, help="wrap tables to this many characters a line")
    parser.add_argument("--repo", default=".")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(compare(args.repo, args.revs, args.metrics, args.block, args.width))
    except FileNotFoundError as exc:
        print(f"error: {exc.filename or exc}: not found; run `dvc repro` (or `dvc exp apply`) first", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
