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

from covidct.confounding import flagged

CURVES = {  # dvclive's sklearn plot file below an evaluate stage's dvclive folder -> (x, y)
    "roc": ("plots/sklearn/roc/test.json", "fpr", "tpr"),
    "precision_recall": ("plots/sklearn/precision_recall/test.json", "recall", "precision"),
    "calibration": ("plots/sklearn/calibration/test.json", "prob_pred", "prob_true"),
}
CONFUSION = "plots/sklearn/confusion/test.json"


def model_names(params: dict) -> list[str]:
    """Every model the configured pipeline trains: frozen-feature heads, then fine-tuned networks."""
    return head_model_names(params) + [f"finetune-{run}" for run in (params.get("finetune", {}).get("runs") or {})]


def read_results(names: list[str], metrics_dir) -> dict[str, dict]:
    return {name: json.loads((Path(metrics_dir) / f"{name}.json").read_text()) for name in names}


def head_model_names(params: dict) -> list[str]:
    """The frozen-feature models (``<backbone>-<head>``): the ones leave-one-source-out refits."""
    return [f"{b}-{h}" for b in params["backbones"] for h in params["heads"]]


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


def summary_markdown(results: dict[str, dict], n_resamples: int, checks: dict | None = None,
                     loso: dict | None = None, margin: float = 0.05) -> str:
    """``results``: model name -> metrics JSON (the evaluate stage's shape); ``checks``: backbone -> the confounding
    stage's JSON; ``loso``: model -> the loso stage's JSON."""
    flags = flagged_models(results, checks or {}, margin)
    lines = [
        "# Test results",
        "",
        f"Slice level, threshold 0.5, 95 % CI from {n_resamples:,} patient-bootstrap resamples; best test ROC AUC first. "
        "Patient level: mean slice probability per patient.",
        "",
        "| Model | " + " | ".join(title for _, title in COLUMNS) + " | Patient acc. | Patient ROC AUC | Val-chosen threshold "
        "| Worst source: accuracy |",
        "|---|" + "---|" * (len(COLUMNS) + 4),
    ]
    ranked = sorted(results.items(), key=lambda kv: (sort_key(kv[1]), kv[0]))
    for name, result in ranked:
        test, patient = result["test"], result["patient"]
        cells = [_cell(test[key]) for key, _ in COLUMNS]
        threshold = f"{result['threshold']:.3f}" + (" (fallback: one class in val)" if result.get("threshold_note") else "")
        worst = result.get("worst_source")
        cells += [_cell(patient["accuracy"]), _cell(patient["roc_auc"]), threshold,
                  f"{worst}: {_cell(result['by_source'][worst]['accuracy'])}" if worst else "n/a"]
        lines.append(f"| {name}{' ⚠' if name in flags else ''} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + "\n" + per_source_markdown(ranked) + confounding_markdown(checks or {}, flags, margin)
            + loso_markdown(loso or {}))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def per_source_markdown(ranked: list[tuple[str, dict]]) -> str:
    """Test accuracy of every model on each source's slices: one pooled number hides a source the model fails."""
    sources = sorted({source for _, result in ranked for source in result.get("by_source", {})})
    if not sources:
        return ""
    first = next(result["by_source"] for _, result in ranked if result.get("by_source"))
    sizes = [f"{s}: {_count(first[s]['slices'], 'slice')} of {_count(first[s]['patients'], 'patient')} "
             f"({first[s]['per_class']['COVID-19']} COVID-19)" if s in first else s for s in sources]
    lines = ["", "## Per source (test)", "",
             "Accuracy at 0.5 on each source's test slices, 95 % CI from patient-bootstrap resamples within the source; "
             "**bold**: the model's worst source. A source of one class shows what the model does on that class "
             "alone (sensitivity or specificity: `metrics/models/<model>.json`, `by_source`). " + "; ".join(sizes) + ".",
             "", "| Model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for name, result in ranked:
        by_source = result.get("by_source", {})
        cells = []
        for source in sources:
            cell = _cell(by_source[source]["accuracy"]) if source in by_source else "n/a"
            cells.append(f"**{cell}**" if source == result.get("worst_source") else cell)
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


def source_only_check(checks: dict) -> dict | None:
    """The source-only baseline (the same rows under every backbone: any backbone's check has it)."""
    return next((check["source_only"] for check in checks.values()), None)


def flagged_models(results: dict[str, dict], checks: dict, margin: float) -> list[str]:
    """Models whose test accuracy the source alone comes within ``margin`` of (``confounding.flagged``)."""
    baseline = source_only_check(checks)
    if baseline is None:
        return []
    return [name for name, result in results.items() if flagged(result["test"]["accuracy"]["value"], baseline, margin)]


def confounding_markdown(checks: dict, flags: list[str], margin: float) -> str:
    baseline = source_only_check(checks)
    if baseline is None:
        return ""
    lines = ["", "## Confounding check", "",
             "How much of the label the source alone gives away: each slice scored by its source's share of COVID-19 "
             "slices in train, nothing else (accuracy at 0.5, ROC AUC; majority class: what a constant answer gets).",
             "", "| Split | Source alone: accuracy | Source alone: ROC AUC | Majority class |", "|---|---|---|---|"]
    for split in ("train", "val", "test"):
        row = baseline[split]
        lines.append(f"| {split} | {_cell(row['accuracy'])} | {_cell(row['roc_auc'])} | {row['majority_class']:.3f} |")
    lines += ["", "How visible the source is to each backbone: a linear probe on its features predicting the source "
              "(test accuracy; chance = the largest source's share).", "", "| Backbone | Source probe accuracy | Chance |",
              "|---|---|---|"]
    for backbone, check in checks.items():
        probe = check["source_probe"]
        accuracy = f"{probe['accuracy']:.3f}" if probe["accuracy"] is not None else f"n/a ({probe.get('note', '')})"
        lines.append(f"| {backbone} | {accuracy} | {probe['chance']:.3f} |")
    test = baseline["test"]
    if flags:
        lines += ["", f"**⚠ Flagged: {', '.join(flags)}.** On test the source alone reaches accuracy "
                  f"{test['accuracy']['value']:.3f} against {test['majority_class']:.3f} for the majority class, and "
                  f"these models do not beat it by more than {margin:.2f}: their accuracy may be the source's, not the "
                  "disease's. Read the per-source table and leave-one-source-out before trusting them."]
    else:
        lines += ["", f"No model flagged: the source alone reaches {test['accuracy']['value']:.3f} on test (majority "
                  f"class {test['majority_class']:.3f}); a model is flagged when the source alone beats the majority "
                  f"class by {margin:.2f} or more and the model does not beat the source alone by more than {margin:.2f}."]
    return "\n".join(lines) + "\n"


def loso_table(loso: dict) -> pd.DataFrame:
    """One row per (model, held-out source): test accuracy in-source and held out (plots/compare/loso.csv)."""
    rows = [{"model": model, "source": source, "in_source": entry["in_source"]["accuracy"]["value"],
             "held_out": entry["held_out"]["accuracy"]["value"]}
            for model, result in loso.items() for source, entry in result.items() if "held_out" in entry]
    return pd.DataFrame(rows, columns=["model", "source", "in_source", "held_out"])


def loso_markdown(loso: dict) -> str:
    if not loso:
        return ""
    sources = sorted({source for result in loso.values() for source in result})
    lines = ["", "## Leave one source out (test accuracy)", "",
             "Each cell: the model trained on every source → the same head refitted without that source (train and "
             "val), on that source's test slices. The drop is what a collection the model never saw costs.", "",
             "| Model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for model, result in loso.items():
        cells = []
        for source in sources:
            entry = result.get(source)
            if entry is None:
                cells.append("n/a")
            elif "held_out" not in entry:
                cells.append(f"{entry['in_source']['accuracy']['value']:.3f} → skipped ({entry['skipped']})")
            else:
                cells.append(f"{entry['in_source']['accuracy']['value']:.3f} → {_cell(entry['held_out']['accuracy'])}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
