"""Evaluation metrics against scikit-learn, and the patient bootstrap's intervals."""

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from covidct import metrics


@pytest.fixture
def known():
    """Noisy scores for 400 slices, positives scoring higher on average."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 400), 0, 1)
    return y, p


def test_threshold_and_ranking_metrics_match_scikit_learn(known):
    y, p = known
    pred = (p >= 0.5).astype(int)
    got = metrics.all_metrics(y, p)
    expected = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "sensitivity": recall_score(y, pred),
        "specificity": recall_score(y, pred, pos_label=0),
        "ppv": precision_score(y, pred),
        "npv": precision_score(y, pred, pos_label=0),
        "f1": f1_score(y, pred),
        "roc_auc": roc_auc_score(y, p),
        "pr_auc": average_precision_score(y, p),
        "log_loss": log_loss(y, p),
        "brier": brier_score_loss(y, p),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert set(got) == set(metrics.METRICS)


def test_ece_uses_calibration_curve_bins(known):
    y, p = known
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ids = np.searchsorted(np.linspace(0, 1, 11)[1:-1], p)
    counts = np.bincount(ids, minlength=10)
    counts = counts[counts > 0]
    expected = float(np.sum(np.abs(prob_true - prob_pred) * counts) / len(p))
    assert metrics.expected_calibration_error(y, p, 10) == pytest.approx(expected, abs=1e-12)
    assert metrics.expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_sample_weights_equal_repeated_rows(known):
    """The bootstrap weights slices by how often their patient was drawn: same as repeating the rows."""
    y, p = known
    w = np.random.default_rng(0).integers(0, 3, len(y))
    repeated = metrics.all_metrics(np.repeat(y, w), np.repeat(p, w))
    weighted = metrics.all_metrics(y, p, sample_weight=w.astype(float))
    for name in metrics.METRICS:
        assert weighted[name] == pytest.approx(repeated[name], abs=1e-9), name


def cohort(n_patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        label = i % 2
        skill = rng.normal(0.25, 0.2)  # patients differ: slices of one patient are not independent
        for _ in range(8):
            rows.append((f"P{i}", label, float(np.clip(0.5 + (skill if label else -skill) + rng.normal(0, 0.2), 0, 1))))
    return pd.DataFrame(rows, columns=["patient", "label", "prob"])


def test_bootstrap_interval_contains_point_and_narrows_with_more_patients():
    widths = {}
    for n in (20, 320):
        frame = cohort(n)
        result = metrics.bootstrap(frame["label"], frame["prob"], frame["patient"], n_resamples=300, seed=0)
        for name in ("accuracy", "sensitivity", "roc_auc", "brier"):
            m = result[name]
            assert m["ci_low"] <= m["value"] <= m["ci_high"], (n, name, m)
        widths[n] = {k: v["ci_high"] - v["ci_low"] for k, v in result.items()}
    for name in ("accuracy", "roc_auc", "f1"):
        assert widths[320][name] < 0.5 * widths[20][name], name


def test_bootstrap_is_seeded():
    frame = cohort(30)
    a = metrics.bootstrap(frame["label"], frame["prob"], frame["patient"], n_resamples=50, seed=1)
    b = metrics.bootstrap(frame["label"], frame["prob"], frame["patient"], n_resamples=50, seed=1)
    assert a == b


def test_youden_threshold_separates_shifted_scores():
    y = np.array([0] * 50 + [1] * 50)
    p = np.concatenate([np.linspace(0.6, 0.7, 50), np.linspace(0.75, 0.9, 50)])  # all above 0.5
    t = metrics.youden_threshold(y, p)
    assert 0.7 < t <= 0.75
    assert metrics.all_metrics(y, p, threshold=t)["accuracy"] == 1.0
    assert metrics.all_metrics(y, p, threshold=0.5)["accuracy"] == 0.5


def test_patient_level_mean_score_any_positive():
    frame = pd.DataFrame({"patient": ["a", "a", "b", "b"], "label": [0, 1, 0, 0], "prob": [0.2, 0.6, 0.1, 0.3]})
    out = metrics.patient_level(frame).set_index("patient")
    assert out.loc["a", "label"] == 1 and out.loc["b", "label"] == 0
    assert out.loc["a", "prob"] == pytest.approx(0.4) and out.loc["b", "prob"] == pytest.approx(0.2)


def test_evaluate_shape():
    val, test = cohort(12, seed=1), cohort(12, seed=2)
    result = metrics.evaluate(val, test, n_resamples=20)
    assert set(result) == {"val", "test", "test_at_threshold", "patient", "threshold"}
    for part in ("val", "test", "patient"):
        assert set(result[part]) == set(metrics.METRICS)
        for m in result[part].values():
            assert set(m) == {"value", "ci_low", "ci_high"}
    assert 0.0 <= result["threshold"] <= 1.0


@pytest.mark.parametrize("threshold", [0.5, 0.62])
def test_vectorised_resamples_match_scikit_learn_weighted_metrics(known, threshold):
    y, p = known
    p = np.round(p, 2)  # ties, as real scores have
    p[:5] = [0.0, 1.0, 0.0, 1.0, 0.5]
    weights = np.random.default_rng(1).integers(0, 3, (6, len(y))).astype(float)
    fast = metrics.resampled_metrics(y, p, weights, threshold, n_bins=10)
    for r, w in enumerate(weights):
        slow = metrics.all_metrics(y, p, threshold, sample_weight=w, n_bins=10)
        for name in metrics.METRICS:
            assert fast[name][r] == pytest.approx(slow[name], abs=1e-9), (name, r)


def test_resamples_without_one_class_give_nan_ranking_metrics():
    y, p = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.6, 0.9])
    out = metrics.resampled_metrics(y, p, np.array([[1.0, 2.0, 0.0, 0.0]]))
    assert np.isnan(out["roc_auc"][0]) and np.isnan(out["pr_auc"][0]) and np.isnan(out["sensitivity"][0])
    assert out["specificity"][0] == 1.0



def test_youden_ties_go_to_the_highest_threshold_whatever_the_rounding():
    """Against the rule computed in exact fractions: the highest cut among those with the largest J."""
    from fractions import Fraction

    def rule(y, p):
        best = None
        for cut in [np.inf, *sorted(set(p), reverse=True)]:  # inf: call nothing positive, J = 0
            hit = p >= cut
            j = Fraction(int((hit & (y == 1)).sum()), int((y == 1).sum())) - \
                Fraction(int((hit & (y == 0)).sum()), int((y == 0).sum()))
            if best is None or j > best[0]:
                best = (j, cut)
        return min(best[1], 1.0)

    rng = np.random.default_rng(0)
    for _ in range(300):  # few distinct scores and 10 of each class: ties of J (0.3 - 0.1 vs 0.5 - 0.3) abound
        y = np.array([1] * 10 + [0] * 10)
        p = rng.integers(1, 8, 20) / 8
        assert metrics.youden_threshold(y, p) == rule(y, p), (y, p)
