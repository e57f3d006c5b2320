"""Is the label learnable from the source alone? The confounding check of a pooled dataset.

Two numbers per backbone's features, and a rule for the report:

- **source only**: score every slice with its source's share of COVID-19 slices in train, and nothing else. Its
  accuracy (at 0.5) and ROC AUC per split say how much of the label the source alone gives away; beside them, the
  majority class's share (what a constant answer gets).
- **source probe**: a linear probe (logistic regression, ``C`` chosen on val) predicting the source from the frozen
  features; its test accuracy against the largest source's share says how visible the source is to the backbone.
- **flag** (``flagged``): a model is flagged when the source alone beats the constant answer by at least
  ``margin`` on test *and* the model's test accuracy is no more than ``margin`` above the source alone's: then the
  model's score may be the source's, and only a per-source or leave-one-source-out result can tell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from covidct.metrics import bootstrap
from covidct.params import Problems, is_number, unknown_keys

PROBE_C = (0.01, 0.1, 1.0)  # inverse L2 strengths the source probe picks from, by val accuracy


def check_params(confounding: dict) -> list[str]:
    """The ``confounding:`` section."""
    problems = Problems(unknown_keys("confounding", confounding, ("margin",)))
    margin = confounding.get("margin")
    problems.require(is_number(margin) and 0 <= margin <= 1,
                     f"confounding.margin={margin!r}: accuracy points as a fraction in [0, 1], e.g. 0.05")
    return problems


def source_rates(train: pd.DataFrame) -> tuple[dict, float]:
    """({source: share of COVID-19 among its train slices}, the share over all train slices: for unseen sources)."""
    return train.groupby("source")["label"].mean().to_dict(), float(train["label"].mean())


def source_only(frames: dict[str, pd.DataFrame], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Per split: accuracy and ROC AUC of scoring each slice by its source's train COVID-19 share (95 % patient
    bootstrap intervals), and the majority class's share. ``frames``: split -> rows with source, label, patient."""
    rates, overall = source_rates(frames["train"])
    out = {"train_rates": {source: round(rate, 6) for source, rate in sorted(rates.items())}}
    for split, rows in frames.items():
        p = rows["source"].map(rates).fillna(overall).to_numpy(float)
        scores = bootstrap(rows["label"], p, rows["patient"], 0.5, n_resamples, seed, which=("accuracy", "roc_auc"))
        share = float(rows["label"].mean())
        out[split] = {**scores, "majority_class": round(max(share, 1 - share), 6), "slices": len(rows)}
    return out


def source_probe(x: dict[str, np.ndarray], sources: dict[str, pd.Series]) -> dict:
    """Test accuracy of a linear probe predicting the source from the features, ``C`` chosen on val, against the
    largest source's test share (chance). Needs two sources or more in train."""
    names = sorted(set(sources["train"]))
    largest = float(sources["test"].value_counts(normalize=True).max())
    if len(names) < 2:
        return {"accuracy": None, "chance": round(largest, 6), "note": f"one source in train ({names}): nothing to probe"}
    scaler = StandardScaler().fit(x["train"])
    scaled = {split: scaler.transform(values) for split, values in x.items()}
    fits = []
    for c in PROBE_C:
        probe = LogisticRegression(C=c, max_iter=2000).fit(scaled["train"], sources["train"])
        fits.append((float((probe.predict(scaled["val"]) == sources["val"].to_numpy()).mean()), -c, probe))
    val_accuracy, neg_c, probe = max(fits, key=lambda f: f[:2])  # ties: the stronger regularisation
    accuracy = float((probe.predict(scaled["test"]) == sources["test"].to_numpy()).mean())
    return {"accuracy": round(accuracy, 6), "chance": round(largest, 6), "C": -neg_c,
            "val_accuracy": round(val_accuracy, 6), "sources": names}


def flagged(model_accuracy: float | None, check: dict, margin: float) -> bool:
    """True when the source alone tells the label (beats the constant answer by ``margin`` on test) and the model
    does not clearly beat the source alone (its test accuracy is within ``margin`` of it, or below)."""
    test = check["test"]
    source = test["accuracy"]["value"]
    if model_accuracy is None or source is None:
        return False
    return source - test["majority_class"] >= margin and model_accuracy <= source + margin
