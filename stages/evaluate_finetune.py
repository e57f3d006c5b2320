"""evaluate_finetune stage, one per fine-tuning run: the same metrics, CIs and plots as the heads get.

Writes metrics/finetune/<run>.json (plus the best epoch) and dvclive/finetune/<run>/evaluate/.
"""

import sys

from covidct import cli, finetune, metrics, params
from covidct.features import resolve_device
from covidct.store import CropStore


def main(run: str) -> None:
    p = params.load()
    model, config = finetune.load(f"models/finetune/{run}")
    store, device = CropStore("data/crops"), resolve_device(p["finetune"]["device"])
    positive = config["label_names"].index("COVID-19")
    frames = {}
    for split in ("val", "test"):
        rows = store.rows(split)
        probs = finetune.predict_split(model, store, split, device)
        frames[split] = rows[["fname", "patient"]].assign(label=(rows["label"] == positive).astype(int).to_numpy(),
                                                          prob=probs[:, positive])
    extra = {"best_epoch": config["best_epoch"], "stopped_epoch": config["stopped_epoch"]}
    result = metrics.evaluate_and_log(frames["val"], frames["test"], p["evaluate"], f"metrics/finetune/{run}.json",
                                      f"dvclive/finetune/{run}/evaluate", extra)
    print(metrics.headline(f"finetune-{run}", result))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.evaluate_finetune <arch>-<init>")
    cli.run(main, sys.argv[1])
