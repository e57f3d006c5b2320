"""evaluate stage, one per backbone x head: val + test metrics with patient-bootstrap CIs, and plot data.

Test data are touched here and only here. Writes --metrics (JSON) and, through dvclive, ROC / PR / calibration /
confusion data under --live.
"""

import argparse
import json
from pathlib import Path

from covidct import cli, featurefile, heads, metrics, params


def predictions(features_dir: str, split: str, model, positive: int):
    rows, x, _ = featurefile.read_features(Path(features_dir) / f"{split}.parquet")
    return rows.assign(prob=model.predict_proba(x)[:, positive], label=(rows["label"] == positive).astype(int))


def main(features_dir: str, model: str, out: str, live: str) -> None:
    p = params.load(evaluate=metrics.check_params)["evaluate"]
    fitted = heads.load_head(model)
    label_names = json.loads(featurefile.read_metadata(Path(features_dir) / "val.parquet")["label_names"])
    positive = label_names.index("COVID-19")
    val, test = (predictions(features_dir, split, fitted, positive) for split in ("val", "test"))
    result = metrics.evaluate_and_log(val, test, p, out, live)
    print(metrics.headline(Path(model).name, result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", dest="features_dir", required=True, help="the extract stage's folder")
    parser.add_argument("--model", required=True, help="the train stage's model folder")
    parser.add_argument("--metrics", dest="out", required=True, help="metrics JSON to write")
    parser.add_argument("--live", required=True, help="dvclive folder for the plot data")
    cli.run(main, **vars(parser.parse_args()))
