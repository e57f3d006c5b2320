"""finetune stage, one per run <arch>-<init>: the whole network trained on the crop store.

Prints one line per epoch and logs train / val / test loss and accuracy through dvclive (test is shown,
never used for a choice); plots/finetune/<run>/epochs.csv holds the same rows with wall-clock seconds.
The lowest-val-loss epoch is kept and saved to models/finetune/<run>/ (safetensors + JSON).
"""

import os
import sys
from dataclasses import asdict

import pandas as pd
import torch

from covidct import cli, finetune, params
from covidct.atomic import atomic_dir, atomic_path
from covidct.features import resolve_device
from covidct.store import CropStore


def main(run: str) -> None:
    from dvclive import Live

    p = params.load()["finetune"]
    cfg = finetune.recipe(p, run)
    torch.set_num_threads(p["num_threads"] or os.cpu_count() or 1)
    device = resolve_device(p["device"])
    store = CropStore("data/crops")
    label_names = store.meta["label_names"]
    weights = store.meta["class_weights"] if store.meta["balance"] == "weighted" else None
    torch.manual_seed(cfg["seed"])  # the scratch arm's initial weights
    model = finetune.build_classifier(cfg["arch"], cfg["init"], len(label_names), cfg["image_size"])
    print(f"finetune {run}: {cfg['arch']} from {cfg['init']} at {cfg['image_size']} px on {device}, "
          f"{len(store.rows('train'))} train / {len(store.rows('val'))} val slices, up to {cfg['epochs']} epochs")

    with Live(f"dvclive/finetune/{run}/train", save_dvc_exp=False, dvcyaml=None, report=None) as live:

        def on_epoch(log: finetune.EpochLog) -> None:
            print(log.line(cfg["epochs"]), flush=True)
            for split in ("train", "val", "test"):
                live.log_metric(f"{split}/loss", getattr(log, f"{split}_loss"))
                live.log_metric(f"{split}/accuracy", getattr(log, f"{split}_accuracy"))
            live.log_metric("learning_rate", log.learning_rate)
            live.next_step()

        result = finetune.train(model, store, cfg, device, weights, on_epoch, num_workers=p["num_workers"])
        live.summary["best_epoch"] = result["best_epoch"]
    best = result["logs"][result["best_epoch"] - 1]
    print(f"finetune {run}: best epoch {result['best_epoch']} of {result['stopped_epoch']} by val loss "
          f"(val loss {best.val_loss:.4f}, val accuracy {best.val_accuracy:.2%})")

    with atomic_path(f"plots/finetune/{run}/epochs.csv") as tmp:
        pd.DataFrame([asdict(log) for log in result["logs"]]).round(6).to_csv(tmp, index=False)
    config = {"arch": cfg["arch"], "init": cfg["init"], "label_names": label_names, "recipe": cfg,
              "best_epoch": result["best_epoch"], "stopped_epoch": result["stopped_epoch"]}
    with atomic_dir(f"models/finetune/{run}") as tmp:
        finetune.save(model.cpu(), tmp, config)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.finetune <arch>-<init>")
    cli.run(main, sys.argv[1])
