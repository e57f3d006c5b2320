"""What the report stage writes: one summary over every configured model, and the overlaid plot data.

- summary.md: one row per model, best first, with 95 % patient-bootstrap intervals;
- summary.json: the pipeline's only DVC metrics besides crop's counts: five headline test numbers per model
  (HEADLINE), so that ``dvc exp show`` stays narrow;
- combined curve files (ROC, precision-recall, calibration, confusion counts, per-epoch loss and accuracy) with a
  ``model`` column, which dvc.yaml's top-level plots draw one colour per model.

Models are named ``<backbone>-<head>`` and ``finetune-<arch>-<init>``; ``model_names(params)`` lists the
configured ones, so a folder may hold stale files of models since removed from params.yaml without them showing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CURVES = {  # dvclive's sklearn plot file below an evaluate stage's dvclive folder -> (x, y)
    "roc": ("plots/sklearn/roc/test.json", "fpr", "tpr"),
    "precision_recall": ("plots/sklearn/precision_recall/test.json", "recall", "precision"),
    "calibration": ("plots/sklearn/calibration/test.json", "prob_pred", "prob_true"),
}
CONFUSION = "plots/sklearn/confusion/test.json"


def model_names(params: dict) -> list[str]:
    """Every model the configured pipeline trains: frozen-feature heads, then fine-tuned networks."""
    names = [f"{b}-{h}" for b in params["backbones"] for h in params["heads"]]
    return names + [f"finetune-{run}" for run in (params.get("finetune", {}).get("runs") or {})]


def read_results(names: list[str], metrics_dir) -> dict[str, dict]:
    return {name: json.loads((Path(metrics_dir) / f"{name}.json").read_text()) for name in names}


def _points(path: Path) -> list[dict]:
    data = json.loads(path.read_text())
    return next(iter(data.values())) if isinstance(data, dict) else data


def _confusion_counts(points: list[dict]) -> pd.DataFrame:
    """Counts per (actual, predicted), zeros included: an empty cell is drawn as 0, not left blank."""
    pairs = pd.DataFrame(points)[["actual", "predicted"]]
    labels = sorted(set(pairs["actual"]) | set(pairs["predicted"]))
    full = pd.MultiIndex.from_product([labels, labels], names=["actual", "predicted"])
    return pairs.value_counts().reindex(full, fill_value=0).rename("count").reset_index()


def combined_curves(names: list[str], live_dir) -> dict[str, pd.DataFrame]:
    """Curve kind -> one table of every model's points (model, point, x, y), and confusion counts per model."""
    out = {}
    for kind, (file, x, y) in CURVES.items():
        frames = [pd.DataFrame(_points(Path(live_dir) / name / file))[[x, y]].assign(model=name) for name in names]
        table = pd.concat([f.assign(point=range(len(f))) for f in frames], ignore_index=True)
        out[kind] = table[["model", "point", x, y]]
    counts = [_confusion_counts(_points(Path(live_dir) / name / CONFUSION)).assign(model=name) for name in names]
    out["confusion"] = pd.concat(counts, ignore_index=True)[["model", "actual", "predicted", "count"]]
    return out


def epoch_curves(names: list[str], epochs_dir) -> dict[str, pd.DataFrame]:
    """Per-epoch loss and accuracy of every model trained over more than one epoch (one line per model and split)."""
    loss, accuracy = [], []
    for name in names:
        table = pd.read_csv(Path(epochs_dir) / f"{name}.csv")
        if len(table) < 2:  # logistic regression: one fit, no curve
            continue
        if "val_loss" in table:  # a fine-tuning run: train, val and test columns
            for split in ("train", "val", "test"):
                series = f"{name} ({split})"
                loss.append(pd.DataFrame({"model": series, "epoch": table["epoch"], "loss": table[f"{split}_loss"]}))
                accuracy.append(pd.DataFrame({"model": series, "epoch": table["epoch"],
                                              "accuracy": table[f"{split}_accuracy"]}))
        else:  # a head: training loss, validation accuracy in percent
            loss.append(pd.DataFrame({"model": f"{name} (train)", "epoch": table["epoch"], "loss": table["loss"]}))
            accuracy.append(pd.DataFrame({"model": f"{name} (val)", "epoch": table["epoch"],
                                          "accuracy": table["val_accuracy"] / 100.0}))
    columns = {"loss": ["model", "epoch", "loss"], "accuracy": ["model", "epoch", "accuracy"]}
    return {kind: pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns[kind])
            for kind, frames in (("loss", loss), ("accuracy", accuracy))}

COLUMNS = [("accuracy", "Accuracy"), ("balanced_accuracy", "Bal. acc."), ("sensitivity", "Sensitivity"),
           ("specificity", "Specificity"), ("f1", "F1"), ("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"),
           ("ece", "ECE")]


def _cell(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    if m["ci_low"] is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def sort_key(result: dict):
    test = result["test"]
    return (-(test["roc_auc"]["value"] or 0.0), -(test["accuracy"]["value"] or 0.0))


def summary_markdown(results: dict[str, dict], n_resamples: int) -> str:
    """``results``: model name -> metrics JSON (the evaluate stage's shape)."""
    lines = [
        "# Test results",
        "",
        f"Slice level, threshold 0.5, 95 % CI from {n_resamples:,} patient-bootstrap resamples; best test ROC AUC first. "
        "Patient level: mean slice probability per patient.",
        "",
        "| Model | " + " | ".join(title for _, title in COLUMNS) + " | Patient acc. | Patient ROC AUC | Val-chosen threshold |",
        "|---|" + "---|" * (len(COLUMNS) + 3),
    ]
    for name, result in sorted(results.items(), key=lambda kv: (sort_key(kv[1]), kv[0])):
        test, patient = result["test"], result["patient"]
        cells = [_cell(test[key]) for key, _ in COLUMNS]
        threshold = f"{result['threshold']:.3f}" + (" (fallback: one class in val)" if result.get("threshold_note") else "")
        cells += [_cell(patient["accuracy"]), _cell(patient["roc_auc"]), threshold]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# What `dvc exp show` lists per model: test slices at threshold 0.5, plus patient-level accuracy. Five numbers
# a model keep an experiment that changes one head (five or six models) under 40 columns; the intervals and every
# other metric are in metrics/models/<model>.json and summary.md, and `python -m covidct.compare` prints them.
HEADLINE = (("accuracy", "test", "accuracy"), ("roc_auc", "test", "roc_auc"), ("sensitivity", "test", "sensitivity"),
            ("specificity", "test", "specificity"), ("patient_accuracy", "patient", "accuracy"))


def summary_metrics(results: dict[str, dict]) -> dict:
    """{model: {metric: value}}: columns like ``vgg16-mlp.roc_auc`` in ``dvc exp show``."""
    return {name: {key: result[block][metric]["value"] for key, block, metric in HEADLINE}
            for name, result in results.items()}
