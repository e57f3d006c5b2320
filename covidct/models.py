"""Every trained model as one torch module on grayscale images in [0, 1]: ``load_model(name)``.

Two kinds share the ``finetune.Classifier`` interface, so explaining and predicting need no per-kind code:

- ``<backbone>-<head>`` (``models/<backbone>-<head>/``): the frozen backbone, rebuilt exactly as the extract
  stage built it (weights, input size, seed of a random init), composed with the fitted head;
- ``finetune-<arch>-<init>`` (``models/finetune/<arch>-<init>/``): a fine-tuned network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from covidct import finetune, heads
from covidct.backbones import create_backbone, get_spec

FINETUNE_PREFIX = "finetune-"
BACKBONE_CONFIG = "backbone.json"


def model_dir(name: str, root: str | Path = "models") -> Path:
    if name.startswith(FINETUNE_PREFIX):
        return Path(root) / "finetune" / name[len(FINETUNE_PREFIX):]
    return Path(root) / name


def available(root: str | Path = "models") -> list[str]:
    root = Path(root)
    names = [p.parent.name for p in root.glob(f"*/{BACKBONE_CONFIG}")]
    names += [FINETUNE_PREFIX + p.parent.name for p in root.glob(f"finetune/*/{finetune.CONFIG}")]
    return sorted(names)


def save_backbone_config(path: str | Path, features_metadata: dict) -> None:
    """What ``load_model`` needs to rebuild a head's backbone, taken from its features' Parquet metadata."""
    keys = ("backbone", "weights", "image_size", "seed", "label_names")
    config = {k: json.loads(features_metadata[k]) if k in ("image_size", "seed", "label_names") else features_metadata[k]
              for k in keys}
    (Path(path) / BACKBONE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model(name: str, root: str | Path = "models") -> tuple[finetune.Classifier, dict]:
    """(classifier in eval mode, config with at least ``arch``, ``label_names`` and ``image_size``)."""
    path = model_dir(name, root)
    if not path.is_dir():
        raise FileNotFoundError(f"no model {name!r} at {path}/. Trained models: {available(root) or 'none'} "
                                f"(run dvc repro first).")
    if name.startswith(FINETUNE_PREFIX):
        return finetune.load(path)
    config = json.loads((path / BACKBONE_CONFIG).read_text())
    spec = get_spec(config["backbone"])
    torch.manual_seed(config["seed"])  # the extract stage's seeding: a random-init backbone comes back identical
    backbone = create_backbone(config["backbone"], config["weights"], config["image_size"])
    head = heads.load_head(path).torch_module()
    model = finetune.Classifier(backbone, head, config["image_size"], spec.mean, spec.std).eval()
    return model, {**config, "arch": config["backbone"]}
