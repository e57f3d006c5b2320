"""evaluate stage, one per backbone x head: val + test metrics with patient-bootstrap CIs, and plots.

Test data are touched here and only here. Writes metrics/<backbone>-<head>.json and, through dvclive,
ROC / PR / calibration / confusion data under dvclive/<backbone>-<head>/evaluate/.
"""

import json
import sys

import numpy as np

from covidct import cli, heads, metrics, params
from covidct.atomic import atomic_write_json
from covidct.features import read_features, read_metadata


def predictions(backbone: str, split: str, model, positive: int):
    rows, x, _ = read_features(f"data/features/{backbone}/{split}.parquet")
    return rows.assign(prob=model.predict_proba(x)[:, positive], label=(rows["label"] == positive).astype(int))


def main(backbone: str, head: str) -> None:
    from dvclive import Live

    p = params.load()["evaluate"]
    name = f"{backbone}-{head}"
    model = heads.load_head(f"models/{name}")
    label_names = json.loads(read_metadata(f"data/features/{backbone}/val.parquet")["label_names"])
    positive = label_names.index("COVID-19")
    val, test = (predictions(backbone, split, model, positive) for split in ("val", "test"))
    result = metrics.evaluate(val, test, p["bootstrap"], p["seed"], p["calibration_bins"])
    atomic_write_json(f"metrics/{name}.json", result)

    names = np.array(["not COVID-19", "COVID-19"])
    with Live(f"dvclive/{name}/evaluate", save_dvc_exp=False, dvcyaml=None, report=None) as live:
        live.log_sklearn_plot("roc", test["label"], test["prob"], name="roc/test.json")
        live.log_sklearn_plot("precision_recall", test["label"], test["prob"], name="precision_recall/test.json")
        live.log_sklearn_plot("calibration", test["label"], test["prob"], name="calibration/test.json",
                              n_bins=p["calibration_bins"])
        live.log_sklearn_plot("confusion_matrix", names[test["label"]], names[(test["prob"] >= 0.5).astype(int)],
                              name="confusion/test.json")
    t = result["test"]
    print(f"evaluate {name}: test accuracy {t['accuracy']['value']:.3f} "
          f"[{t['accuracy']['ci_low']:.3f}, {t['accuracy']['ci_high']:.3f}], ROC AUC {t['roc_auc']['value']:.3f}, "
          f"val-chosen threshold {result['threshold']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m stages.evaluate <backbone> <head>")
    cli.run(main, sys.argv[1], sys.argv[2])
