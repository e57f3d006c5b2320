"""Classifier heads: the reference recipe, learning on separable features, save/load round trip."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from covidct import heads

MLP_PARAMS = {"hidden": 64, "dropout": 0.5, "epochs": 10, "batch_size": 32, "base_lr": 5e-5, "max_lr": 1e-3,
              "step_epochs": 2, "weight_decay": 0.0, "seed": 0}


def separable(n: int, dim: int = 48, seed: int = 0):
    """Two classes split by a random hyperplane with a margin; features on very different scales."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    x = rng.normal(size=(4 * n, dim))
    margin = x @ w / np.linalg.norm(w)
    x = x[np.abs(margin) > 0.3][:n]
    y = (x @ w > 0).astype(np.int64)
    scale = np.logspace(-2, 2, dim)
    return (x * scale).astype(np.float32), y


def test_mlp_learns_linearly_separable_features_with_the_reference_schedule():
    x, y = separable(1200)
    rows = []
    head = heads.create_head("mlp", MLP_PARAMS)
    result = head.fit(x[:800], y[:800], x[800:], y[800:], positive=1, on_epoch=rows.append)
    assert [r.epoch for r in rows] == list(range(1, 11))
    # the reference study's table: triangular2, stepped once per epoch
    assert [f"{r.learning_rate:.1e}" for r in rows] == [
        "5.0e-05", "5.2e-04", "1.0e-03", "5.2e-04", "5.0e-05", "2.9e-04", "5.2e-04", "2.9e-04", "5.0e-05", "1.7e-04"]
    best = max(r.val_accuracy for r in rows)
    assert best > 90.0
    assert result["best_epoch"] == next(r.epoch for r in rows if r.val_accuracy == best)
    val_accuracy = 100 * (head.predict_proba(x[800:]).argmax(1) == y[800:]).mean()
    assert val_accuracy == pytest.approx(best), "the best epoch's weights are the ones kept"
    assert rows[-1].loss < rows[0].loss


def test_epoch_row_prints_the_reference_table_form():
    row = heads.EpochRow(3725.4, 3, 10, 1e-3, 0.24123, 84.4712, (39.7, 44.7, 5.3, 10.3))
    assert row.table_row() == "01:02:05 | 03/10 | 1.0e-03 | 0.2412 | 84.47% | 39.7%, 44.7%, 05.3%, 10.3% |"
    fields = row.csv_fields()
    assert "time" not in fields, "a saved table without wall-clock time: reruns write the same bytes"
    assert fields["epoch"] == 3 and fields["val_fn"] == 10.3
    assert heads.TABLE_HEADER.splitlines()[0] == "Time | Epoch | Learning rate | Loss | Val accuracy | Val (tp, tn, fp, fn) |"


def test_outcome_rates_are_percent_of_the_set():
    assert heads.outcome_rates([1, 1, 0, 0], [1, 0, 0, 1], positive=1) == (25.0, 25.0, 25.0, 25.0)
    assert heads.outcome_rates([2, 2, 0, 1], [2, 2, 2, 0], positive=2) == (50.0, 25.0, 25.0, 0.0)


def test_logreg_matches_scikit_learn_on_standardised_features():
    x, y = separable(300, dim=8, seed=1)
    y = np.where(np.random.default_rng(0).random(len(y)) < 0.15, 1 - y, y)  # label noise: finite weights
    head = heads.create_head("logreg", {"C": 0.5, "max_iter": 2000})
    head.fit(x, y, x, y, positive=1)
    scaler = StandardScaler().fit(x)
    # another solver run to a tight tolerance in float64: both must find the one minimum
    reference = LogisticRegression(C=0.5, max_iter=10000, tol=1e-12).fit(scaler.transform(x).astype(np.float64), y)
    np.testing.assert_allclose(head.predict_proba(x), reference.predict_proba(scaler.transform(x)), atol=1e-6)


def test_logreg_converges_and_gives_the_same_model_with_1_and_2_blas_threads():
    from threadpoolctl import threadpool_limits

    x, y = separable(400, dim=64, seed=3)
    y = np.where(np.random.default_rng(1).random(len(y)) < 0.2, 1 - y, y)
    probs = []
    for threads in (1, 2):
        head = heads.create_head("logreg", {"C": 1.0, "max_iter": 100})
        with threadpool_limits(threads):
            result = head.fit(x, y, x, y, positive=1)
        assert "Newton steps" in result["converged_in"] and 0 < head.n_iter < 100
        probs.append(head.predict_proba(x))
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-9)


def test_logreg_that_does_not_converge_says_which_param_to_change():
    from covidct.errors import DataError

    x, y = separable(200, dim=16, seed=4)
    with pytest.raises(DataError, match=r"heads.logreg.max_iter=1 "):
        heads.create_head("logreg", {"C": 1e6, "max_iter": 1}).fit(x, y, x, y, positive=1)


@pytest.mark.parametrize("name, params", [("mlp", {**MLP_PARAMS, "epochs": 2}), ("logreg", {"C": 1.0, "max_iter": 500})])
def test_saved_head_reloads_with_identical_predictions(tmp_path, name, params):
    x, y = separable(200, dim=12, seed=2)
    head = heads.create_head(name, params, class_weights=[0.7, 1.3])
    head.fit(x, y, x, y, positive=1)
    head.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["head.json", "head.safetensors"]
    again = heads.load_head(tmp_path / "model")
    np.testing.assert_array_equal(again.predict_proba(x), head.predict_proba(x))
    assert again.class_weights == [0.7, 1.3]


def test_class_weights_shift_the_decision_towards_the_weighted_class():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = (x[:, 0] + rng.normal(0, 1.5, 600) > 0).astype(np.int64)
    plain = heads.create_head("logreg", {"C": 1.0, "max_iter": 500})
    weighted = heads.create_head("logreg", {"C": 1.0, "max_iter": 500}, class_weights=[1.0, 4.0])
    for head in (plain, weighted):
        head.fit(x, y, x, y, positive=1)
    assert (weighted.predict_proba(x)[:, 1] >= 0.5).mean() > (plain.predict_proba(x)[:, 1] >= 0.5).mean() + 0.1


def test_unknown_head_lists_the_choices():
    with pytest.raises(KeyError, match="logreg"):
        heads.create_head("svm", {})
