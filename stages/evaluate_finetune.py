"""evaluate_finetune stage, one per fine-tuning run: the same metrics, CIs and plot data as the heads get."""

import argparse

from covidct import classifier, cli, metrics, params
from covidct.store import CropStore


def main(model: str, store: str, out: str, live: str) -> None:
    p = params.load(evaluate=metrics.check_params)
    network, config = classifier.load(model)
    section = p.get("finetune") if isinstance(p.get("finetune"), dict) else {}
    crops, device = CropStore(store), classifier.resolve_device(section.get("device", "auto"), "finetune.device")
    positive = config["label_names"].index("COVID-19")
    frames = {}
    for split in ("val", "test"):
        rows = crops.rows(split)
        probs = classifier.predict_split(network, crops, split, device)[0]
        frames[split] = rows[[c for c in ("fname", "patient", "source") if c in rows]].assign(label=(rows["label"] == positive).astype(int).to_numpy(),
                                                          prob=probs[:, positive])
    extra = {"best_epoch": config["best_epoch"], "stopped_epoch": config["stopped_epoch"]}
    result = metrics.evaluate_and_log(frames["val"], frames["test"], p["evaluate"], out, live, extra)
    print(metrics.headline(f"finetune-{config['arch']}-{config['init']}", result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the finetune stage's model folder")
    parser.add_argument("--store", required=True, help="the crop store")
    parser.add_argument("--metrics", dest="out", required=True, help="metrics JSON to write")
    parser.add_argument("--live", required=True, help="dvclive folder for the plot data")
    cli.run(main, **vars(parser.parse_args()))
