"""evaluate stage, one per backbone x head: val + test metrics with patient-bootstrap CIs, and plots.

Test data are touched here and only here. Writes metrics/<backbone>-<head>.json and, through dvclive,
ROC / PR / calibration / confusion data under dvclive/<backbone>-<head>/evaluate/.
"""

import json
import sys

from covidct import cli, heads, metrics, params
from covidct.features import read_features, read_metadata


def predictions(backbone: str, split: str, model, positive: int):
    rows, x, _ = read_features(f"data/features/{backbone}/{split}.parquet")
    return rows.assign(prob=model.predict_proba(x)[:, positive], label=(rows["label"] == positive).astype(int))


def main(backbone: str, head: str) -> None:
    p = params.load()["evaluate"]
    name = f"{backbone}-{head}"
    model = heads.load_head(f"models/{name}")
    label_names = json.loads(read_metadata(f"data/features/{backbone}/val.parquet")["label_names"])
    positive = label_names.index("COVID-19")
    val, test = (predictions(backbone, split, model, positive) for split in ("val", "test"))
    result = metrics.evaluate_and_log(val, test, p, f"metrics/{name}.json", f"dvclive/{name}/evaluate")
    print(metrics.headline(name, result))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m stages.evaluate <backbone> <head>")
    cli.run(main, sys.argv[1], sys.argv[2])
