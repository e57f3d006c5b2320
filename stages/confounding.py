"""confounding stage, one per backbone: how well the source alone predicts the label (per split), and how well a
linear probe on the backbone's features predicts the source (covidct.confounding). The report flags models that
do no better than the source alone."""

import argparse
from pathlib import Path

from covidct import cli, confounding, featurefile, metrics, params
from covidct.atomic import atomic_write_json


def main(features_dir: str, out: str) -> None:
    p = params.load(evaluate=metrics.check_params)["evaluate"]
    frames, x = {}, {}
    for split in ("train", "val", "test"):
        rows, x[split], meta = featurefile.read_features(Path(features_dir) / f"{split}.parquet")
        positive = featurefile.label_names(meta).index("COVID-19")
        frames[split] = rows.assign(label=(rows["label"] == positive).astype(int))
    check = {"source_only": confounding.source_only(frames, p["bootstrap"], p["seed"]),
             "source_probe": confounding.source_probe(x, {s: f["source"] for s, f in frames.items()})}
    atomic_write_json(out, check)
    test, probe = check["source_only"]["test"], check["source_probe"]
    probe_text = (f"{probe['accuracy']:.3f} (largest source {probe['chance']:.3f})" if probe["accuracy"] is not None
                  else probe["note"])
    print(f"confounding {meta['backbone']}: source alone on test: accuracy {test['accuracy']['value']:.3f} "
          f"(majority class {test['majority_class']:.3f}); source probe on the features: {probe_text}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", dest="features_dir", required=True, help="the extract stage's folder")
    parser.add_argument("--out", required=True, help="JSON to write")
    cli.run(main, **vars(parser.parse_args()))
