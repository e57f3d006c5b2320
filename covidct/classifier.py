"""The one inference model every part of the pipeline shares: ``Classifier`` = a registry backbone + a head,
on grayscale images in [0, 1] exactly as the crop store holds them.

Fine-tuned networks are a backbone + a linear layer; frozen-feature models are the extract stage's backbone +
a fitted head (``models.load_model``). Resizing, the gray -> RGB expansion and the backbone's normalisation
happen inside (``to_model_input``, also what the extract stage runs), so fine-tuning, feature extraction,
evaluation, CAMs and ``predict`` all feed a backbone identical inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from covidct.backbones import get_spec
from covidct.errors import ParamsError
from covidct.store import CropStore
from covidct.tensorfile import read_safetensors

INITS = ("scratch", "imagenet")
CHECKPOINT, CONFIG = "model.safetensors", "model.json"


def resolve_device(device: str = "auto", key: str = "device") -> torch.device:
    """``auto`` (CUDA, else MPS, else CPU) or a named device, which must be there: a ``ParamsError`` naming ``key``
    (the params key it came from) otherwise, rather than torch's error deep inside the first batch."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ParamsError(f"{key}={device!r}: one of auto, cpu, cuda, cuda:<index>, mps") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ParamsError(f"{key}={device!r}: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                              "use auto or cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ParamsError(f"{key}={device!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif resolved.type == "mps" and not mps:
        raise ParamsError(f"{key}={device!r}: no Apple MPS device here; use auto or cpu")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ParamsError(f"{key}={device!r}: one of auto, cpu, cuda, cuda:<index>, mps")
    return resolved


def to_model_input(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Gray (N, 1, H, W) in [0, 1] -> resized to size x size, expanded to RGB, normalised: what every backbone eats."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return (x.expand(-1, 3, -1, -1) - mean) / std


class Classifier(nn.Module):
    """Grayscale images in [0, 1], (N, 1, H, W) -> class logits. ``arch`` names the registry backbone."""

    def __init__(self, arch: str, backbone: nn.Module, head: nn.Module, image_size: int):
        super().__init__()
        spec = get_spec(arch)
        self.arch, self.backbone, self.head, self.image_size = arch, backbone, head, image_size
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(to_model_input(x, self.image_size, self.mean, self.std)))


def build_classifier(arch: str, init: str, n_classes: int, image_size: int) -> Classifier:
    """A registry backbone (ImageNet weights or a fresh init) + a linear layer: what fine-tuning trains."""
    if init not in INITS:
        raise ValueError(f"init={init!r} for {arch}; choose one of {INITS}")
    spec = get_spec(arch)
    backbone = spec.build(init == "imagenet", image_size)  # the registry's loader: same weights as extract
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # TF ports (EfficientNet-Lite) carry TF's 0.99 decay, i.e. momentum 0.01: over a few hundred steps the
            # running statistics stay ImageNet's while the weights adapt to CT, and eval mode predicts one class.
            module.momentum = 0.1
    return Classifier(arch, backbone, nn.Linear(spec.feature_dim, n_classes), image_size)


def save(model: Classifier, path: str | os.PathLike, config: dict) -> None:
    """``path/model.safetensors`` + ``path/model.json`` (arch, init, image size, classes, ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / CHECKPOINT))
    config = {**config, "arch": model.arch, "image_size": model.image_size}
    (path / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """A saved classifier in eval mode, and its config. Builds from scratch: loading downloads nothing."""
    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    model = build_classifier(config["arch"], "scratch", len(config["label_names"]), config["image_size"])
    model.load_state_dict(read_safetensors(path / CHECKPOINT, load_file, "checkpoint"))
    return model.eval(), config


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, batches, device: torch.device, loss_fn=None) -> tuple[np.ndarray, float]:
    """(softmax probabilities (n, classes), mean loss) over an iterable of (images, labels) tensor batches."""
    model.eval()
    probs, total, seen = [], 0.0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            logits = model(x).float()
        if loss_fn is not None:
            total += float(loss_fn(logits, y)) * len(y)
        seen += len(y)
        probs.append(torch.softmax(logits, 1).cpu().numpy())
    return np.concatenate(probs).astype(np.float64), total / max(seen, 1)


def store_batches(store: CropStore, split: str, batch_size: int = 64):
    """(images in [0, 1] (n, 1, size, size), labels) tensor batches of one split, in store order."""
    for rows, images in store.batches(split, batch_size):
        yield (torch.from_numpy(images)[:, None].float().div_(255.0),
               torch.from_numpy(rows["label"].to_numpy().astype(np.int64)))


def predict_split(model: nn.Module, store: CropStore, split: str, device: torch.device, batch_size: int = 64,
                  loss_fn=None) -> tuple[np.ndarray, float]:
    """(softmax probabilities (n, classes) in store order, mean loss) for one split of the store, unaugmented."""
    return predict(model.to(device), store_batches(store, split, batch_size), device, loss_fn)
