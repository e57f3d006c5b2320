"""Evaluation: slice- and patient-level metrics with patient-bootstrap confidence intervals.

Slices of one patient are not independent, so intervals resample *patients* (with replacement) and weight
each slice by how often its patient was drawn. scikit-learn computes what it has (confusion matrix, ROC AUC,
average precision, log loss, Brier score, ROC curve) for the point values; the confusion-matrix ratios and
the expected calibration error (binned as ``sklearn.calibration.calibration_curve`` bins) are derived here.
The 1,000 resamples run vectorised (``resampled_metrics``), checked against scikit-learn's weighted metrics.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from dvclive import Live
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from covidct.atomic import atomic_write_json
from covidct.params import Problems, is_positive_int, seed_int, unknown_keys

THRESHOLD_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
RANKING_METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")
METRICS = THRESHOLD_METRICS + RANKING_METRICS


def check_params(evaluate: dict) -> list[str]:
    """The ``evaluate:`` section."""
    problems = Problems(unknown_keys("evaluate", evaluate, ("bootstrap", "seed", "calibration_bins")))
    for key in ("bootstrap", "calibration_bins"):
        problems.require(is_positive_int(evaluate.get(key)),
                         f"evaluate.{key}={evaluate.get(key)!r}: a positive integer")
    problems += seed_int("evaluate.seed", evaluate.get("seed"))
    return problems


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def expected_calibration_error(y, p, n_bins: int = 10, sample_weight=None) -> float:
    """Sum over probability bins of |fraction positive - mean probability|, weighted by the bin's share."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    w = np.ones_like(p) if sample_weight is None else np.asarray(sample_weight, float)
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(bins[1:-1], p)  # exactly calibration_curve's "uniform" binning
    total = np.bincount(ids, w, minlength=n_bins)
    gap = np.abs(np.bincount(ids, w * y, minlength=n_bins) - np.bincount(ids, w * p, minlength=n_bins))
    return float(gap.sum() / total.sum())


def threshold_metrics(y, p, threshold: float = 0.5, sample_weight=None) -> dict:
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1], sample_weight=sample_weight).ravel()
    sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (sensitivity + specificity) / 2,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def ranking_metrics(y, p, sample_weight=None, n_bins: int = 10) -> dict:
    y, p = np.asarray(y), np.clip(np.asarray(p, float), 0.0, 1.0)
    both = len(np.unique(y[sample_weight > 0] if sample_weight is not None else y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p, sample_weight=sample_weight)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p, sample_weight=sample_weight)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1], sample_weight=sample_weight)),
        "brier": float(brier_score_loss(y, p, sample_weight=sample_weight, pos_label=1)),
        "ece": expected_calibration_error(y, p, n_bins, sample_weight),
    }


def all_metrics(y, p, threshold=0.5, sample_weight=None, n_bins=10, which=METRICS) -> dict:
    out = {}
    if set(which) & set(THRESHOLD_METRICS):
        out.update(threshold_metrics(y, p, threshold, sample_weight))
    if set(which) & set(RANKING_METRICS):
        out.update(ranking_metrics(y, p, sample_weight, n_bins))
    return {k: out[k] for k in which}


def resampled_metrics(y, p, weights, threshold=0.5, n_bins=10) -> dict:
    """Every metric for each row of ``weights`` (resamples x slices) at once, without a Python loop.

    The same definitions as scikit-learn's weighted metrics (a test checks them against it); the bootstrap
    needs them a thousand times, and sklearn's per-call overhead would make that minutes per model.
    """
    y, p = np.asarray(y).astype(bool), np.clip(np.asarray(p, float), 0.0, 1.0)
    w = np.asarray(weights, float)
    pred = p >= threshold
    tp, fn, fp, tn = (w @ (y & pred), w @ (y & ~pred), w @ (~y & pred), w @ (~y & ~pred))
    positives, negatives = tp + fn, tn + fp
    out = {}
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> nan, as _ratio does
        out["accuracy"] = (tp + tn) / (positives + negatives)
        out["sensitivity"], out["specificity"] = tp / positives, tn / negatives
        out["balanced_accuracy"] = (out["sensitivity"] + out["specificity"]) / 2
        out["ppv"], out["npv"] = tp / (tp + fp), tn / (tn + fn)
        out["f1"] = 2 * tp / (2 * tp + fp + fn)

        # Ranking metrics over the distinct scores, ascending: cumulative weights at the end of each tie group.
        order = np.argsort(p, kind="stable")
        ends = np.flatnonzero(np.r_[np.diff(p[order]) > 0, True])
        w_sorted = w[:, order]
        cum_pos = np.cumsum(w_sorted * y[order], axis=1)[:, ends]
        cum_neg = np.cumsum(w_sorted * ~y[order], axis=1)[:, ends]
        pos_in = np.diff(cum_pos, axis=1, prepend=0.0)
        neg_in = np.diff(cum_neg, axis=1, prepend=0.0)
        neg_below = cum_neg - neg_in
        both = (positives > 0) & (negatives > 0)
        auc = (pos_in * (neg_below + 0.5 * neg_in)).sum(1) / (positives * negatives)
        out["roc_auc"] = np.where(both, auc, np.nan)
        # Precision at each threshold counts the slices scoring at or above it.
        above_pos, above_neg = positives[:, None] - cum_pos + pos_in, negatives[:, None] - cum_neg + neg_in
        precision = np.where(pos_in > 0, above_pos / (above_pos + above_neg), 0.0)
        out["pr_auc"] = np.where(both, (pos_in * precision).sum(1) / positives, np.nan)

    total = positives + negatives
    eps = np.finfo(float).eps
    q = np.clip(p, eps, 1 - eps)
    out["log_loss"] = -(w @ np.where(y, np.log(q), np.log1p(-q))) / total
    out["brier"] = (w @ (y - p) ** 2) / total
    bins = np.eye(n_bins, dtype=bool)[np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)]
    out["ece"] = np.abs(w @ (bins * y[:, None]) - w @ (bins * p[:, None])).sum(1) / total
    return out


def bootstrap(y, p, groups, threshold=0.5, n_resamples=1000, seed=0, n_bins=10, which=METRICS, level=0.95,
              chunk=100) -> dict:
    """{metric: {value, ci_low, ci_high}}: point value on all data, percentile CI over resampled groups."""
    y, p = np.asarray(y), np.asarray(p, float)
    point = all_metrics(y, p, threshold, None, n_bins, which)
    codes, uniques = pd.factorize(np.asarray(groups))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in which}
    for start in range(0, n_resamples, chunk):  # bounded memory: chunk x slices weights at a time
        n = min(chunk, n_resamples - start)
        drawn = rng.integers(0, len(uniques), (n, len(uniques)))
        counts = np.zeros((n, len(uniques)))
        np.add.at(counts, (np.arange(n)[:, None], drawn), 1.0)
        resampled = resampled_metrics(y, p, counts[:, codes], threshold, n_bins)
        for k in which:
            draws[k].append(resampled[k])
    alpha = (1 - level) / 2
    out = {}
    for k in which:
        values = np.concatenate(draws[k])
        values = values[np.isfinite(values)]
        low, high = (np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan, np.nan))
        out[k] = {"value": _round(point[k]), "ci_low": _round(low), "ci_high": _round(high)}
        if out[k]["value"] is None:
            out[k]["undefined"] = undefined_reason(k, y, p, threshold)
    return out


def _round(v) -> float | None:
    v = float(v)
    return round(v, 6) if np.isfinite(v) else None


def undefined_reason(metric: str, y, p, threshold: float = 0.5) -> str:
    """Why ``metric`` has no value on these labels and scores: the ``undefined`` key beside its null ``value``."""
    y, called = np.asarray(y).astype(bool), np.asarray(p, float) >= threshold
    lacking = [f"no {name} case" for name, present in (("COVID-19", y.any()), ("non-COVID", (~y).any())) if not present]
    needs = {"roc_auc": "both classes", "pr_auc": "both classes", "balanced_accuracy": "both classes",
             "sensitivity": "a COVID-19 case", "specificity": "a non-COVID case", "f1": "a COVID-19 case or call",
             "ppv": f"a case called COVID-19 at threshold {threshold:g}",
             "npv": f"a case called non-COVID at threshold {threshold:g}"}
    if metric in ("ppv", "npv") and not lacking:
        lacking = [f"no case scores {'at or above' if metric == 'ppv' else 'below'} {threshold:g}"]
    if metric == "f1" and called.any():
        lacking = []
    return f"needs {needs.get(metric, 'both classes')}; these data have " + (" and ".join(lacking) or "too few cases")


def youden_threshold(y, p) -> float:
    """The probability cut maximising sensitivity + specificity - 1 (Youden's J) on these data.

    Ties are broken by a rule, not by rounding: J is compared at 12 decimals (0.3 - 0.1 and 0.5 - 0.3 are one
    value), and among equal J the highest cut wins (the most specific of the equally good operating points).
    """
    fpr, tpr, thresholds = roc_curve(y, p)  # thresholds in decreasing order: argmax's first hit is the highest
    return float(np.clip(thresholds[int(np.argmax(np.round(tpr - fpr, 12)))], 0.0, 1.0))


def chosen_threshold(y, p, fallback: float = 0.5) -> tuple[float, str | None]:
    """Youden's threshold on val, or (``fallback``, why) when val lacks a class and no threshold can be chosen."""
    present = set(np.unique(np.asarray(y)).tolist())
    if present == {0, 1}:
        return youden_threshold(y, p), None
    missing = "COVID-19" if 1 not in present else "non-COVID"
    return fallback, (f"val has no {missing} slice, so no threshold can be chosen on it: {fallback:g} is used "
                      "instead, and test_at_threshold is the same as test")


def patient_level(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: score = mean slice probability, label = positive if any slice is."""
    return frame.groupby("patient", sort=True).agg(label=("label", "max"), prob=("prob", "mean")).reset_index()


# Per source: what can be said of a few hundred slices of one collection, often of one class (sensitivity or
# specificity then, with the other undefined and the reason given).
SOURCE_METRICS = ("accuracy", "sensitivity", "specificity", "roc_auc")


def per_source(test: pd.DataFrame, threshold=0.5, n_resamples=1000, seed=0, n_bins=10) -> dict:
    """{source: {slices, patients, per_class, accuracy, sensitivity, specificity, roc_auc}} on ``test``'s rows of
    each source (column ``source``), with patient-bootstrap intervals within the source."""
    out = {}
    for source, part in test.groupby("source", sort=True):
        covid = int(part["label"].sum())
        out[str(source)] = {
            "slices": len(part), "patients": int(part["patient"].nunique()),
            "per_class": {"COVID-19": covid, "not COVID-19": len(part) - covid},
            **bootstrap(part["label"], part["prob"], part["patient"], threshold, n_resamples, seed, n_bins,
                        which=SOURCE_METRICS),
        }
    return out


def worst_source(by_source: dict) -> str | None:
    """The source with the lowest test accuracy (ties: the larger one, then by name); None without sources."""
    if not by_source:
        return None
    return min(by_source, key=lambda s: (by_source[s]["accuracy"]["value"], -by_source[s]["slices"], s))


def evaluate(val: pd.DataFrame, test: pd.DataFrame, n_resamples=1000, seed=0, n_bins=10) -> dict:
    """``val``/``test``: columns patient, label (0/1), prob (of the positive class), and optionally source (then
    ``by_source`` holds the test metrics of each source)."""
    threshold, note = chosen_threshold(val["label"], val["prob"])
    patients = patient_level(test)
    by_source = per_source(test, 0.5, n_resamples, seed, n_bins) if "source" in test else {}
    return {**({"threshold_note": note} if note else {}),
        "val": bootstrap(val["label"], val["prob"], val["patient"], 0.5, n_resamples, seed, n_bins),
        "test": bootstrap(test["label"], test["prob"], test["patient"], 0.5, n_resamples, seed, n_bins),
        "test_at_threshold": bootstrap(test["label"], test["prob"], test["patient"], threshold, n_resamples, seed,
                                       n_bins, which=THRESHOLD_METRICS),
        "patient": bootstrap(patients["label"], patients["prob"], patients["patient"], 0.5, n_resamples, seed,
                             n_bins),
        "threshold": round(threshold, 6),
        **({"by_source": by_source, "worst_source": worst_source(by_source)} if by_source else {}),
    }


def evaluate_and_log(val: pd.DataFrame, test: pd.DataFrame, params: dict, metrics_path, live_dir,
                     extra: dict | None = None) -> dict:
    """``evaluate`` -> ``metrics_path`` (JSON, plus ``extra`` keys), and the test ROC / PR / calibration /
    confusion data through dvclive into ``live_dir``: what every evaluate stage writes, heads or fine-tuned.

    ``val`` and ``test`` hold one row per slice: ``patient``, ``label`` (1 = COVID-19) and ``prob``.
    """
    result = evaluate(val, test, params["bootstrap"], params["seed"], params["calibration_bins"])
    atomic_write_json(metrics_path, {**result, **(extra or {})})
    names = np.array(["not COVID-19", "COVID-19"])
    y, p = test["label"].to_numpy(), test["prob"].to_numpy()
    with Live(str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_sklearn_plot("roc", y, p, name="roc/test.json")
        live.log_sklearn_plot("precision_recall", y, p, name="precision_recall/test.json")
        live.log_sklearn_plot("calibration", y, p, name="calibration/test.json", n_bins=params["calibration_bins"])
        live.log_sklearn_plot("confusion_matrix", names[y], names[(p >= 0.5).astype(int)], name="confusion/test.json")
    return result


def headline(name: str, result: dict) -> str:
    """One log line; an undefined metric (one class in the data) is shown with its reason, never a crash."""

    def show(m: dict, interval: bool = True) -> str:
        if m["value"] is None:
            return f"undefined ({m.get('undefined', 'no value')})"
        if m["ci_low"] is None or not interval:
            return f"{m['value']:.3f}"
        return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    t = result["test"]
    line = (f"evaluate {name}: test accuracy {show(t['accuracy'])}, ROC AUC {show(t['roc_auc'], interval=False)}, "
            f"{'fallback' if result.get('threshold_note') else 'val-chosen'} threshold {result['threshold']:.3f}")
    if result.get("worst_source"):
        worst = result["worst_source"]
        line += f"; worst source {worst}: accuracy {show(result['by_source'][worst]['accuracy'])}"
    if result.get("threshold_note"):
        line += f"\nevaluate {name}: warning: {result['threshold_note']}"
    return line
