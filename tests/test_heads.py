"""Classifier heads: the reference recipe, learning on separable features, save/load round trip."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from covidct import heads

ROOT = Path(__file__).resolve().parents[1]

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


# --- grids: heads pick C, hidden and dropout on validation (issue "Stronger recipes, chosen on val only") ---

TINY_MLP = {**MLP_PARAMS, "epochs": 3, "batch_size": 16}


def noise(n: int, dim: int, seed: int):
    """Labels independent of the features: anything a head learns from the training set is noise."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.integers(0, 2, n).astype(np.int64)


def chosen_by_refitting(name: str, params: dict, key: str, values, x, y, x_val, y_val):
    """The grid's answer worked out independently: fit each value as a scalar setting, lowest val log loss."""
    losses = {}
    for v in values:
        head = heads.create_head(name, {**params, key: v})
        head.fit(x, y, x_val, y_val, positive=1)
        proba = head.predict_proba(x_val)
        losses[v] = -np.mean(np.log(np.clip(proba[np.arange(len(y_val)), y_val], 1e-15, None)))
    return min(losses, key=losses.get), losses


def test_logreg_grid_keeps_the_strong_penalty_when_the_features_are_noise():
    x, y = noise(40, 200, seed=0)  # 200 features, 40 slices: any weak penalty fits the noise perfectly
    x_val, y_val = noise(400, 200, seed=1)
    grid = [100.0, 1.0, 0.001]  # listed weakest first: the order in params.yaml does not matter
    head = heads.create_head("logreg", {"C": grid, "max_iter": 200})
    result = head.fit(x, y, x_val, y_val, positive=1)
    expected, losses = chosen_by_refitting("logreg", {"max_iter": 200}, "C", grid, x, y, x_val, y_val)
    assert expected == 0.001 and result["grid"]["chosen"] == {"C": 0.001}
    assert [c["C"] for c in result["grid"]["candidates"]] == [0.001, 1.0, 100.0], "strongest penalty first"
    for c in result["grid"]["candidates"]:
        assert c["val_log_loss"] == pytest.approx(losses[c["C"]], abs=1e-6)
    assert losses[100.0] > losses[0.001] + 0.1, "the problem separates the candidates"
    assert head.fitted_params() == {"C": 0.001, "max_iter": 200} and head.params["C"] == grid
    # selection uses the validation set it is given: scored on its own training data, the weakest penalty wins
    on_train = heads.create_head("logreg", {"C": grid, "max_iter": 200}).fit(x, y, x, y, positive=1)
    assert on_train["grid"]["chosen"] == {"C": 100.0}


def test_logreg_grid_picks_the_weak_penalty_when_the_data_are_plentiful():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 2)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=3000) > 0).astype(np.int64)  # a clean signal, many slices, two features
    grid = [1e-4, 0.01, 100.0]
    result = heads.create_head("logreg", {"C": grid, "max_iter": 200}).fit(x[:2000], y[:2000], x[2000:], y[2000:], 1)
    expected, _ = chosen_by_refitting("logreg", {"max_iter": 200}, "C", grid, x[:2000], y[:2000], x[2000:], y[2000:])
    assert expected == 100.0 and result["grid"]["chosen"] == {"C": 100.0}


def test_mlp_grid_keeps_the_candidate_with_the_lowest_val_log_loss_and_reports_only_its_epochs():
    x, y = separable(240, dim=12, seed=5)
    y = np.where(np.random.default_rng(3).random(len(y)) < 0.2, 1 - y, y)  # label noise: candidates differ
    params = {**TINY_MLP, "hidden": [32, 4], "dropout": [0.0, 0.5]}
    rows = []
    head = heads.create_head("mlp", params)
    result = head.fit(x[:160], y[:160], x[160:], y[160:], positive=1, on_epoch=rows.append)
    grid = result["grid"]
    assert [(c["hidden"], c["dropout"]) for c in grid["candidates"]] == [(4, 0.5), (4, 0.0), (32, 0.5), (32, 0.0)]
    best = min(grid["candidates"], key=lambda c: c["val_log_loss"])
    assert grid["chosen"] == {"hidden": best["hidden"], "dropout": best["dropout"]}
    assert len({c["val_log_loss"] for c in grid["candidates"]}) == 4
    # the kept model, its epochs and its best epoch are exactly what the chosen setting gives as a scalar
    alone = heads.create_head("mlp", {**TINY_MLP, **grid["chosen"]})
    alone_rows = []
    alone_result = alone.fit(x[:160], y[:160], x[160:], y[160:], positive=1, on_epoch=alone_rows.append)
    np.testing.assert_array_equal(head.predict_proba(x), alone.predict_proba(x))
    assert [r.csv_fields() for r in rows] == [r.csv_fields() for r in alone_rows] and len(rows) == 3
    assert result["best_epoch"] == alone_result["best_epoch"] == best["best_epoch"]


@pytest.mark.parametrize("name, params, strongest", [
    ("logreg", {"C": [1.0, 0.01, 0.1], "max_iter": 200}, {"C": 0.01}),
    ("mlp", {**TINY_MLP, "hidden": [8, 4], "dropout": [0.0, 0.5]}, {"hidden": 4, "dropout": 0.5}),
])
def test_a_tie_goes_to_the_stronger_regularisation_and_smaller_model(monkeypatch, name, params, strongest):
    monkeypatch.setattr(heads, "val_log_loss", lambda proba, y, class_weights=None: 0.5)
    x, y = separable(120, dim=6, seed=6)
    result = heads.create_head(name, params).fit(x[:80], y[:80], x[80:], y[80:], positive=1)
    assert result["grid"]["chosen"] == strongest


def test_val_log_loss_weights_slices_by_class_and_is_finite_for_confident_mistakes():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    y = np.array([0, 1, 1])
    expected = -(np.log(0.9) + np.log(0.8) + np.log(1e-15)) / 3
    assert heads.val_log_loss(proba, y) == pytest.approx(expected)
    assert heads.val_log_loss(proba, y, [2.0, 1.0]) == pytest.approx(-(2 * np.log(0.9) + np.log(0.8) + np.log(1e-15)) / 4)


def test_a_scalar_setting_searches_nothing_and_saves_what_it_always_saved(tmp_path):
    x, y = separable(200, dim=12, seed=2)
    for name, params in (("logreg", {"C": 1.0, "max_iter": 500}), ("mlp", {**TINY_MLP, "hidden": 8})):
        head = heads.create_head(name, params)
        result = head.fit(x[:150], y[:150], x[150:], y[150:], positive=1)
        assert "grid" not in result and head.grid is None
        head.save(tmp_path / name)
        config = json.loads((tmp_path / name / "head.json").read_text())
        assert "grid" not in config and config["params"] == params
        # a one-value grid is a search (recorded) that gives the scalar's model
        single = heads.create_head(name, {k: [v] if k in heads.HEADS[name].GRID else v for k, v in params.items()})
        assert single.fit(x[:150], y[:150], x[150:], y[150:], positive=1)["grid"]["chosen"]
        np.testing.assert_array_equal(single.predict_proba(x), head.predict_proba(x))


@pytest.mark.parametrize("name, params", [("logreg", {"C": [0.01, 10.0], "max_iter": 500}),
                                          ("mlp", {**TINY_MLP, "hidden": [4, 16], "dropout": 0.5})])
def test_head_json_records_the_grid_and_load_head_restores_the_chosen_model(tmp_path, name, params):
    x, y = separable(200, dim=12, seed=7)
    head = heads.create_head(name, params, class_weights=[0.8, 1.2])
    head.fit(x[:150], y[:150], x[150:], y[150:], positive=1)
    head.save(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "head.json").read_text())
    grid = config["grid"]
    assert grid["criterion"] == "val_log_loss" and len(grid["candidates"]) == 2
    assert grid["searched"] == {k: v for k, v in params.items() if isinstance(v, list)}
    assert config["params"] == {**params, **grid["chosen"]}, "params: what the saved model was trained with"
    assert all({"val_log_loss", "val_accuracy", "best_epoch"} <= set(c) for c in grid["candidates"])
    again = heads.load_head(tmp_path / "model")
    np.testing.assert_array_equal(again.predict_proba(x), head.predict_proba(x))
    assert again.grid == grid
    again.save(tmp_path / "again")
    assert (tmp_path / "again" / "head.json").read_bytes() == (tmp_path / "model" / "head.json").read_bytes()


def test_grid_table_lists_every_candidate_and_marks_the_chosen_one():
    grid = {"searched": {"C": [0.01, 1.0]}, "chosen": {"C": 0.01},
            "candidates": [{"C": 0.01, "val_log_loss": 0.41, "val_accuracy": 83.5, "best_epoch": 1},
                           {"C": 1.0, "val_log_loss": 1.2, "val_accuracy": 79.0, "best_epoch": 1}]}
    assert heads.grid_table(grid).splitlines() == [
        "C | val log loss | val accuracy | best epoch | chosen |", "---|---|---|---|---|",
        "0.01 | 0.4100 | 83.50% | 1 | yes |", "1 | 1.2000 | 79.00% | 1 |  |"]


def test_the_train_stage_prints_the_candidates_and_logs_only_the_chosen_ones_epochs(tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from covidct import featurefile, params
    from stages import train

    features = tmp_path / "features"
    features.mkdir()
    metadata = {"backbone": "vgg16", "weights": "none", "image_size": 64, "seed": 0,
                "label_names": ["Normal", "COVID-19"], "balance": "undersample", "class_weights": None}
    x, y = separable(160, dim=8, seed=8)
    for split, rows in (("train", slice(0, 100)), ("val", slice(100, 160))):
        n = len(y[rows])
        table = pa.table({"fname": [f"{split}{i}.png" for i in range(n)], "patient": [f"p{i // 3}" for i in range(n)],
                          "source": ["site_a"] * n, "label": y[rows], "features": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), 8)},
                         schema=featurefile.schema_for(8, metadata))
        pq.write_table(table, features / f"{split}.parquet")
    p = params.read(ROOT / "params.yaml")
    p["heads"]["mlp"].update(hidden=[4, 16], dropout=0.5, epochs=2)
    (tmp_path / "params.yaml").write_text(yaml.dump(p, Dumper=params.Dumper))
    monkeypatch.chdir(tmp_path)
    train.main("mlp", str(features), "model", "epochs.csv", "live")
    out = capsys.readouterr().out
    assert "searching 2 candidates of hidden [4, 16] by val log loss" in out
    assert "hidden | val log loss | val accuracy | best epoch | chosen |" in out
    config = json.loads((tmp_path / "model" / "head.json").read_text())
    chosen = config["grid"]["chosen"]["hidden"]
    assert f"\n{chosen} | " in out and out.count(" | yes |") == 1 and f"chose hidden={chosen} " in out
    assert len((tmp_path / "epochs.csv").read_text().splitlines()) == 1 + 2, "the chosen candidate's 2 epochs"
    assert len((tmp_path / "live" / "plots" / "metrics" / "val" / "accuracy.tsv").read_text().splitlines()) == 1 + 2


def test_wide_logistic_regression_is_fitted_in_the_rows_span_and_matches_the_direct_fit():
    """More features than slices: the fit runs on the rows' coordinates (covidct.heads.row_space) and reaches the
    direct fit's optimum: the same weights and probabilities to rounding error."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from covidct.heads import Standardizer, create_head, row_space

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 300)).astype(np.float32)
    y = (x[:, :5].sum(1) + rng.normal(size=60) > 0).astype(int)
    head = create_head("logreg", {"C": 0.1, "max_iter": 500})
    head.fit(x, y, x[:10], y[:10], positive=1)
    scaler = Standardizer().fit(x)
    direct = LogisticRegression(C=0.1, max_iter=500, solver="newton-cholesky", tol=1e-10)
    direct.fit(scaler(x).astype(np.float64), y)
    assert head.coef.shape == (1, 300)
    assert np.abs(head.coef - direct.coef_).max() < 1e-8
    assert np.abs(head.predict_proba(x) - direct.predict_proba(scaler(x).astype(np.float64))).max() < 1e-8
    basis = row_space(scaler(x).astype(np.float64))
    assert basis.shape == (60, 300) and np.allclose(basis @ basis.T, np.eye(60), atol=1e-10)
    assert row_space(np.ones((5, 3))) is None, "as many rows as columns or more: no basis, the direct fit"
