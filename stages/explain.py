"""explain stage, one per model (frozen backbone + head, or fine-tuned): what the network looks at.

plots/explain/<model>/cams.png: seeded TP / TN / FP / FN test slices with GradCAM, HiResCAM, EigenCAM and the
input gradient for the COVID-19 logit; kernels.png: the first conv layer's filters (ViT: patch embedding);
examples.json: which slices were shown.
"""

import sys

from covidct import cli, explain, models, params
from covidct.atomic import atomic_dir
from covidct.store import CropStore


def main(name: str) -> None:
    p = params.load()["explain"]
    model, config = models.load_model(name)
    with atomic_dir(f"plots/explain/{name}") as tmp:
        examples = explain.explain_model(model, config["arch"], CropStore("data/crops"), tmp, config["label_names"],
                                         name, p["per_kind"], p["seed"], p["methods"])
    print(f"explain {name}: " + ", ".join(f"{len(v)} {k}" for k, v in examples.items()) + f" -> plots/explain/{name}/")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.explain <model>   (e.g. vgg16-mlp or finetune-resnet18-scratch)")
    cli.run(main, sys.argv[1])
