"""metrics/summary.md (one row per model, best first, with 95 % patient-bootstrap intervals) and
metrics/summary.json (a few headline test numbers per model under short, unique keys, so that
``dvc exp show`` can put every model side by side in a terminal-wide table)."""

from __future__ import annotations

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
        cells += [_cell(patient["accuracy"]), _cell(patient["roc_auc"]), f"{result['threshold']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


HEADLINE = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")


def summary_metrics(results: dict[str, dict]) -> dict:
    """{"test": {model: {metric: value}}}: columns like ``test.vgg16-mlp.roc_auc`` in ``dvc exp show``."""
    return {"test": {name: {key: result["test"][key]["value"] for key in HEADLINE} for name, result in results.items()}}
