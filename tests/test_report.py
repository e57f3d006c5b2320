"""The summary table and the compact metrics for `dvc exp show`."""

from covidct import metrics, report


def result(auc: float, accuracy: float) -> dict:
    part = {k: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6} for k in metrics.METRICS}
    test = {**part, "roc_auc": {"value": auc, "ci_low": auc - 0.1, "ci_high": auc + 0.05},
            "accuracy": {"value": accuracy, "ci_low": None, "ci_high": None}}
    return {"val": part, "test": test, "patient": part, "threshold": 0.42}


def test_summary_is_sorted_best_first_with_intervals():
    results = {"vgg16-mlp": result(0.81, 0.70), "vit_b16-mlp": result(0.93, 0.85), "resnet18-logreg": result(0.81, 0.75)}
    text = report.summary_markdown(results, 1000)
    rows = [line.split(" | ")[0].strip("| ") for line in text.splitlines() if line.startswith("| ") and "Model" not in line]
    assert rows == ["vit_b16-mlp", "resnet18-logreg", "vgg16-mlp"]
    assert "0.930 [0.830, 0.980]" in text and "1,000 patient-bootstrap resamples" in text
    assert "| 0.850 |" in text, "a metric without an interval prints its value alone"


def test_summary_metrics_give_five_short_columns_per_model():
    results = {"vgg16-mlp": result(0.81, 0.70), "vit_b16-mlp": result(0.93, 0.85)}
    results["vgg16-mlp"]["patient"] = {**results["vgg16-mlp"]["patient"], "accuracy": {"value": 0.9}}
    compact = report.summary_metrics(results)
    assert compact["vit_b16-mlp"]["roc_auc"] == 0.93
    assert compact["vgg16-mlp"]["accuracy"] == 0.70
    assert compact["vgg16-mlp"]["patient_accuracy"] == 0.9
    assert list(compact["vgg16-mlp"]) == ["accuracy", "roc_auc", "sensitivity", "specificity", "patient_accuracy"]


def test_confusion_counts_include_empty_cells():
    points = [{"actual": "COVID-19", "predicted": "COVID-19"}] * 3 + [{"actual": "not COVID-19",
                                                                       "predicted": "not COVID-19"}] * 2
    counts = report._confusion_counts(points)
    assert counts.to_dict("records") == [
        {"actual": "COVID-19", "predicted": "COVID-19", "count": 3},
        {"actual": "COVID-19", "predicted": "not COVID-19", "count": 0},
        {"actual": "not COVID-19", "predicted": "COVID-19", "count": 0},
        {"actual": "not COVID-19", "predicted": "not COVID-19", "count": 2}]
