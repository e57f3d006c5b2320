"""explain stage, one per model (frozen backbone + head, or fine-tuned): what the network looks at.

<out>/cams.png: seeded TP / TN / FP / FN test slices with GradCAM, HiResCAM, EigenCAM and the input gradient for
the COVID-19 logit; kernels.png: the first conv layer's filters (ViT: patch embedding); examples.json: which
slices were shown.
"""

import argparse

from covidct import cli, explain, models, params
from covidct.atomic import atomic_dir
from covidct.store import CropStore


def main(name: str, model: str, store: str, out: str) -> None:
    p = params.load(explain=explain.check_params)["explain"]
    network, config = models.load_model(model)
    with atomic_dir(out) as tmp:
        examples = explain.explain_model(network, CropStore(store), tmp, config["label_names"], name, p["per_kind"],
                                         p["seed"], p["methods"])
    print(f"explain {name}: " + ", ".join(f"{len(v)} {k}" for k, v in examples.items()) + f" -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the model's name, for figure titles (e.g. vgg16-mlp)")
    parser.add_argument("--model", required=True, help="a trained model's folder")
    parser.add_argument("--store", required=True, help="the crop store (test slices are explained)")
    parser.add_argument("--out", required=True, help="folder to (re)write with cams.png, kernels.png, examples.json")
    cli.run(main, **vars(parser.parse_args()))
