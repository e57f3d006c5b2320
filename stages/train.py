"""train stage, one per backbone x head: features -> a fitted head in models/<backbone>-<head>/.

Prints and saves the reference study's per-epoch table (plots/<backbone>-<head>/epochs.csv, the one file with
wall-clock times) and logs the same curves through dvclive. Model selection uses validation only.
"""

import json
import sys

import pandas as pd

from covidct import cli, heads, models, params
from covidct.atomic import atomic_dir, atomic_path
from covidct.features import read_features


def main(backbone: str, head: str) -> None:
    from dvclive import Live

    p = params.load()
    name = f"{backbone}-{head}"
    train, x_train, meta = read_features(f"data/features/{backbone}/train.parquet")
    val, x_val, _ = read_features(f"data/features/{backbone}/val.parquet")
    label_names = json.loads(meta["label_names"])
    weights = json.loads(meta["class_weights"]) if meta["balance"] == "weighted" else None
    model = heads.create_head(head, p["heads"][head], weights)

    print(f"train {name}: {len(train)} train / {len(val)} val slices, labels {label_names}, "
          f"class weights {weights}")
    print(heads.TABLE_HEADER)
    with Live(f"dvclive/{name}/train", save_dvc_exp=False, dvcyaml=None, report=None) as live:

        def on_epoch(row: heads.EpochRow) -> None:
            print(row.table_row(), flush=True)
            live.log_metric("train/loss", row.loss)
            live.log_metric("val/accuracy", row.val_accuracy)
            if row.learning_rate == row.learning_rate:  # logistic regression has no learning rate
                live.log_metric("learning_rate", row.learning_rate)
            live.next_step()

        result = model.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(),
                           positive=label_names.index("COVID-19"), on_epoch=on_epoch)
    print(f"train {name}: best epoch {result['best_epoch']} (by val accuracy)")

    with atomic_path(f"plots/{name}/epochs.csv") as tmp:
        pd.DataFrame([r.csv_fields() for r in result["rows"]]).to_csv(tmp, index=False)
    with atomic_dir(f"models/{name}") as tmp:
        model.save(tmp)
        models.save_backbone_config(tmp, meta)  # so explain and predict can rebuild backbone + head as one module


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m stages.train <backbone> <head>")
    cli.run(main, sys.argv[1], sys.argv[2])
