"""finetune stage, one per run <arch>-<init>: the whole network trained on the crop store.

Prints one line per epoch and logs train / val / test loss and accuracy through dvclive (test is shown, never
used for a choice); --epochs holds the same rows (timings only in the log, so reruns write identical bytes). The lowest-val-loss epoch is kept and
saved to --model (safetensors + JSON), with the training crops' statistics (input_stats.json: predict warns when a
new slice is far from them).
"""

import argparse
import os
from dataclasses import asdict

import pandas as pd
import torch
from dvclive import Live

from covidct import classifier, cli, finetune, inputstats, params
from covidct.atomic import atomic_dir, atomic_path
from covidct.store import CropStore


def main(run: str, store: str, model: str, epochs: str, live: str) -> None:
    p = params.load(finetune=finetune.check_params)["finetune"]
    cfg = finetune.recipe(p, run)
    torch.set_num_threads(p["num_threads"] or os.cpu_count() or 1)
    device = classifier.resolve_device(p["device"], "finetune.device")
    crops = CropStore(store)
    label_names = crops.meta["label_names"]
    weights = crops.meta["class_weights"] if crops.meta["balance"] == "weighted" else None
    torch.manual_seed(cfg["seed"])  # the scratch arm's initial weights
    network = classifier.build_classifier(cfg["arch"], cfg["init"], len(label_names), cfg["image_size"])
    print(f"finetune {run}: {cfg['arch']} from {cfg['init']} at {cfg['image_size']} px on {device}, "
          f"{len(crops.rows('train'))} train / {len(crops.rows('val'))} val slices, up to {cfg['epochs']} epochs")

    with Live(live, save_dvc_exp=False, dvcyaml=None, report=None) as logger:

        def on_epoch(log: finetune.EpochLog) -> None:
            print(log.line(cfg["epochs"]), flush=True)
            for split in ("train", "val", "test"):
                logger.log_metric(f"{split}/loss", getattr(log, f"{split}_loss"))
                logger.log_metric(f"{split}/accuracy", getattr(log, f"{split}_accuracy"))
            logger.log_metric("learning_rate", log.learning_rate)
            logger.next_step()

        result = finetune.train(network, crops, cfg, device, weights, on_epoch, num_workers=p["num_workers"])
        logger.summary["best_epoch"] = result["best_epoch"]
    best = result["logs"][result["best_epoch"] - 1]
    print(f"finetune {run}: best epoch {result['best_epoch']} of {result['stopped_epoch']} by val loss "
          f"(val loss {best.val_loss:.4f}, val accuracy {best.val_accuracy:.2%})")

    with atomic_path(epochs) as tmp:  # without wall-clock seconds (printed above): reruns give identical bytes
        pd.DataFrame([asdict(log) for log in result["logs"]]).drop(columns="seconds").round(6).to_csv(tmp, index=False)
    config = {"init": cfg["init"], "label_names": label_names, "recipe": cfg,
              "best_epoch": result["best_epoch"], "stopped_epoch": result["stopped_epoch"]}
    with atomic_dir(model) as tmp:
        classifier.save(network.cpu(), tmp, config)
        inputstats.save(tmp, inputstats.from_store(crops))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="an entry of finetune.runs in params.yaml, <arch>-<init>")
    parser.add_argument("--store", required=True, help="the crop store")
    parser.add_argument("--model", required=True, help="model folder to (re)write")
    parser.add_argument("--epochs", required=True, help="per-epoch table (CSV) to write")
    parser.add_argument("--live", required=True, help="dvclive folder for the training curves")
    cli.run(main, **vars(parser.parse_args()))
