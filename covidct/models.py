"""Every trained model as one ``Classifier`` on grayscale images in [0, 1]: ``load_model(folder)``.

Two kinds of model folder, told apart by what they hold, so explaining and predicting need no per-kind code:

- a frozen-feature model (``head.json`` + ``backbone.json``): the backbone rebuilt exactly as the extract stage
  built it (weights, input size, seed of a random init), composed with the fitted head;
- a fine-tuned network (``model.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from covidct import classifier, heads
from covidct.backbones import create_backbone
from covidct.featurefile import BACKBONE_CONFIG


def load_model(path: str | Path) -> tuple[classifier.Classifier, dict]:
    """(classifier in eval mode, config with at least ``arch``, ``label_names`` and ``image_size``)."""
    path = Path(path)
    if (path / classifier.CONFIG).is_file():
        return classifier.load(path)
    if not (path / BACKBONE_CONFIG).is_file():
        raise FileNotFoundError(f"{path}/ is not a trained model folder (it needs {classifier.CONFIG}, or "
                                f"{BACKBONE_CONFIG} and head.json). Train it with dvc repro.")
    config = json.loads((path / BACKBONE_CONFIG).read_text())
    torch.manual_seed(config["seed"])  # the extract stage's seeding: a random-init backbone comes back identical
    backbone = create_backbone(config["backbone"], config["weights"], config["image_size"])
    head = heads.load_head(path).torch_module()
    model = classifier.Classifier(config["backbone"], backbone, head, config["image_size"]).eval()
    return model, {**config, "arch": config["backbone"]}
