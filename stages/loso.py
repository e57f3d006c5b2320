"""loso stage, one per backbone x head: leave-one-source-out on frozen features (covidct.loso). For each source, the
head is fitted without it (train and val) and scores its test slices, beside the pipeline's model (in-source)."""

import argparse
import json
from pathlib import Path

from covidct import cli, featurefile, heads, loso, metrics, params
from covidct.atomic import atomic_write_json


def main(head: str, features_dir: str, model: str, out: str) -> None:
    p = params.load(heads=heads.check_params, evaluate=metrics.check_params)
    data, meta = {}, {}
    for split in ("train", "val", "test"):
        rows, x, meta = featurefile.read_features(Path(features_dir) / f"{split}.parquet")
        data[split] = (rows, x)
    weights = json.loads(meta["class_weights"]) if meta["balance"] == "weighted" else None
    positive = featurefile.label_names(meta).index("COVID-19")
    result = loso.leave_one_source_out(head, p["heads"][head], weights, positive, data, heads.load_head(model),
                                       p["evaluate"]["bootstrap"], p["evaluate"]["seed"])
    atomic_write_json(out, result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("head", help="an entry of heads: in params.yaml")
    parser.add_argument("--features", dest="features_dir", required=True, help="the extract stage's folder")
    parser.add_argument("--model", required=True, help="the train stage's model folder (every source)")
    parser.add_argument("--out", required=True, help="JSON to write")
    cli.run(main, **vars(parser.parse_args()))
