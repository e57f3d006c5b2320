"""train stage, one per backbone x head: features -> a fitted head (+ how to rebuild its backbone).

Prints the reference study's per-epoch table (with wall-clock times), saves it without them (--epochs: a rerun
writes identical bytes) and logs the same curves through dvclive (--live). Model selection uses validation only; test features are never read.
When heads.<head> gives a grid (a list for C, hidden or dropout), the head fits each candidate and keeps the one
with the lowest validation log loss; the table and curves are the kept candidate's, and a table of every candidate
follows (head.json records it under "grid").
With --store (the crop store the features came from), the model folder also gets the training crops' statistics
(input_stats.json: predict warns when a new slice is far from them).
"""

import argparse
import json
import math
from pathlib import Path

import pandas as pd
from dvclive import Live

from covidct import cli, featurefile, heads, inputstats, params
from covidct.atomic import atomic_dir, atomic_path
from covidct.errors import ParamsError
from covidct.store import CropStore


def main(head: str, features_dir: str, model: str, epochs: str, live: str, store: str | None = None) -> None:
    p = params.load(heads=heads.check_params)
    if head not in p["heads"]:
        raise ParamsError(f"no heads.{head} in params.yaml; configured: {sorted(p['heads'])}")
    train, x_train, meta = featurefile.read_features(Path(features_dir) / "train.parquet")
    val, x_val, _ = featurefile.read_features(Path(features_dir) / "val.parquet")
    label_names = json.loads(meta["label_names"])
    weights = json.loads(meta["class_weights"]) if meta["balance"] == "weighted" else None
    fitted = heads.create_head(head, p["heads"][head], weights)

    print(f"train {meta['backbone']}-{head}: {len(train)} train / {len(val)} val slices, labels {label_names}, "
          f"class weights {weights}")
    grids = heads.searched(head, p["heads"][head])
    if grids:
        print(f"train {meta['backbone']}-{head}: searching {math.prod(map(len, grids.values()))} candidates of "
              + ", ".join(f"{k} {v}" for k, v in grids.items())
              + " by val log loss; the epochs below are the chosen candidate's", flush=True)
    print(heads.TABLE_HEADER)
    with Live(live, save_dvc_exp=False, dvcyaml=None, report=None) as logger:

        def on_epoch(row: heads.EpochRow) -> None:
            print(row.table_row(), flush=True)
            logger.log_metric("train/loss", row.loss)
            logger.log_metric("val/accuracy", row.val_accuracy)
            if row.learning_rate == row.learning_rate:  # logistic regression has no learning rate
                logger.log_metric("learning_rate", row.learning_rate)
            logger.next_step()

        result = fitted.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(),
                            positive=label_names.index("COVID-19"), on_epoch=on_epoch)
    if "grid" in result:
        print(heads.grid_table(result["grid"]))
        chosen = ", ".join(f"{k}={v}" for k, v in result["grid"]["chosen"].items())
        edges = [f"{k}={v}" for k, v in result["grid"]["chosen"].items()
                 if len(grids[k]) >= 3 and v in (min(grids[k]), max(grids[k]))]
        edge = f"; {', '.join(edges)} is at the end of its grid: a wider grid may do better" if edges else ""
        print(f"train {meta['backbone']}-{head}: chose {chosen} (lowest val log loss){edge}")
    converged = f"; converged in {result['converged_in']}" if "converged_in" in result else ""
    print(f"train {meta['backbone']}-{head}: best epoch {result['best_epoch']} (by val accuracy){converged}")

    with atomic_path(epochs) as tmp:
        pd.DataFrame([r.csv_fields() for r in result["rows"]]).to_csv(tmp, index=False)
    with atomic_dir(model) as tmp:
        fitted.save(tmp)
        featurefile.save_backbone_config(tmp, meta)  # so explain and predict can rebuild backbone + head as one module
        if store:
            inputstats.save(tmp, inputstats.from_store(CropStore(store)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("head", help="an entry of heads: in params.yaml")
    parser.add_argument("--features", dest="features_dir", required=True, help="the extract stage's folder")
    parser.add_argument("--model", required=True, help="model folder to (re)write")
    parser.add_argument("--epochs", required=True, help="per-epoch table (CSV) to write")
    parser.add_argument("--live", required=True, help="dvclive folder for the training curves")
    parser.add_argument("--store", help="the crop store the features came from: its training crops' statistics are "
                                        "saved with the model, for predict's warnings")
    cli.run(main, **vars(parser.parse_args()))
