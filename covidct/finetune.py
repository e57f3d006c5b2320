"""Whole-network training on the crop store: a registry backbone plus a linear layer, from scratch or ImageNet.

The second reference study's question: does transfer learning beat training from scratch on CT? Both arms
share everything but the initial weights: CT-friendly augmentation (random resized crop, small rotation,
flips), AdamW with linear warm-up then cosine decay per step, bf16 autocast on CUDA, early stopping on
validation loss. Per epoch it reports train / val / test loss and accuracy, as the study plots them; test
numbers are shown, never used for a choice. The best epoch (lowest val loss) is kept and saved as
safetensors + JSON, so a checkpoint never runs code when loaded.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from covidct.backbones import get_spec
from covidct.features import to_model_input
from covidct.heads import read_safetensors
from covidct.store import CropStore

INITS = ("scratch", "imagenet")
CHECKPOINT, CONFIG = "model.safetensors", "model.json"


class Classifier(nn.Module):
    """Grayscale images in [0, 1], (N, 1, H, W) -> class logits.

    Resizing, the gray -> RGB expansion and the backbone's normalisation happen inside, so CAMs and input
    gradients refer to the image as it is stored, and ``predict`` needs nothing but this module.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, image_size: int, mean, std):
        super().__init__()
        self.backbone, self.head, self.image_size = backbone, head, image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(to_model_input(x, self.image_size, self.mean, self.std)))


def build_classifier(arch: str, init: str, n_classes: int, image_size: int) -> Classifier:
    if init not in INITS:
        raise ValueError(f"init={init!r} for {arch}; choose one of {INITS}")
    spec = get_spec(arch)
    backbone = spec.build(init == "imagenet", image_size)  # the registry's loader: same weights as extract
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # TF ports (EfficientNet-Lite) carry TF's 0.99 decay, i.e. momentum 0.01: over a few hundred steps the
            # running statistics stay ImageNet's while the weights adapt to CT, and eval mode predicts one class.
            module.momentum = 0.1
    return Classifier(backbone, nn.Linear(spec.feature_dim, n_classes), image_size, spec.mean, spec.std)


class SliceDataset(torch.utils.data.Dataset):
    """One split of the crop store as (image in [0, 1] of shape (1, size, size), label) pairs."""

    def __init__(self, store: CropStore, split: str, image_size: int, augment: dict | None = None):
        rows = store.rows(split)
        self.store, self.image_size = store, image_size
        self.shards, self.offsets = rows["shard"].to_numpy(), rows["offset"].to_numpy()
        self.labels = rows["label"].to_numpy().astype(np.int64)
        self.transform = augmentation(image_size, augment) if augment else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = np.array(self.store.shard(int(self.shards[i]))[int(self.offsets[i])])
        x = torch.from_numpy(image)[None].float().div_(255.0)
        if self.transform is not None:
            x = self.transform(x)
        elif x.shape[-1] != self.image_size:
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=x.shape[-1] > self.image_size)[0]
        return x, self.labels[i]


def augmentation(image_size: int, params: dict):
    """Random resized crop, small rotation and flips: plausible for axial CT slices, no intensity games."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(image_size, scale=(params["scale_min"], 1.0), ratio=(0.9, 1.1), antialias=True)]
    if params.get("rotation", 0):
        steps.append(v2.RandomRotation(params["rotation"]))
    if params.get("hflip", 0):
        steps.append(v2.RandomHorizontalFlip(params["hflip"]))
    if params.get("vflip", 0):
        steps.append(v2.RandomVerticalFlip(params["vflip"]))
    return v2.Compose(steps)


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak learning rate, then cosine decay to zero; stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochLog:
    epoch: int
    learning_rate: float
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    test_loss: float
    test_accuracy: float
    seconds: float

    def line(self, epochs: int) -> str:
        return (f"epoch {self.epoch:02d}/{epochs:02d} lr {self.learning_rate:.1e} | train loss {self.train_loss:.4f} "
                f"acc {self.train_accuracy:.2%} | val loss {self.val_loss:.4f} acc {self.val_accuracy:.2%} | "
                f"test loss {self.test_loss:.4f} acc {self.test_accuracy:.2%} | {self.seconds:.0f}s")


def _autocast(device: torch.device):
    import contextlib

    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, loss_fn=None) -> tuple[np.ndarray, float]:
    """(softmax probabilities (n, classes), mean loss) over a loader of (images, labels)."""
    model.eval()
    probs, total, seen = [], 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device):
            logits = model(x).float()
        if loss_fn is not None:
            total += float(loss_fn(logits, y)) * len(y)
        seen += len(y)
        probs.append(torch.softmax(logits, 1).cpu().numpy())
    return np.concatenate(probs).astype(np.float64), total / max(seen, 1)


def train(model: Classifier, store: CropStore, params: dict, device: torch.device, class_weights=None,
          on_epoch=None, num_workers: int = 0) -> dict:
    """Trains in place and leaves the best (lowest val loss) weights loaded; returns the per-epoch logs."""
    p = params
    torch.manual_seed(p["seed"])
    loader_args = {"batch_size": p["batch_size"], "num_workers": num_workers, "pin_memory": device.type == "cuda"}
    train_set = SliceDataset(store, "train", model.image_size, p["augment"])
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=True, drop_last=len(train_set) > p["batch_size"],
                                               generator=torch.Generator().manual_seed(p["seed"]), **loader_args)
    eval_loaders = {split: torch.utils.data.DataLoader(SliceDataset(store, split, model.image_size), **loader_args)
                    for split in ("val", "test")}
    model.to(device)
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    steps = p["epochs"] * len(train_loader)
    schedule = warmup_cosine(optimizer, p["warmup_epochs"] * len(train_loader), steps)

    logs, best, stale, start = [], (math.inf, 0, None), 0, time.perf_counter()
    for epoch in range(1, p["epochs"] + 1):
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        total, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device):
                logits = model(x).float()
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        results = {}
        for split, loader in eval_loaders.items():
            probs, split_loss = predict(model, loader, device, loss_fn)
            results[split] = (split_loss, float((probs.argmax(1) == loader.dataset.labels).mean()))
        log = EpochLog(epoch, lr, total / seen, correct / seen, *results["val"], *results["test"],
                       time.perf_counter() - start)
        logs.append(log)
        if on_epoch:
            on_epoch(log)
        if log.val_loss < best[0]:  # selection on validation loss only
            best, stale = (log.val_loss, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()}), 0
        else:
            stale += 1
            if stale >= p["patience"]:
                break
    model.load_state_dict(best[2])
    return {"best_epoch": best[1], "logs": logs, "stopped_epoch": logs[-1].epoch}


def predict_split(model: nn.Module, store: CropStore, split: str, device: torch.device,
                  batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities (n, classes) for one split of the store, in store order, without augmentation."""
    dataset = SliceDataset(store, split, getattr(model, "image_size", store.size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda")
    return predict(model.to(device), loader, device)[0]


RUN_KEYS = ("arch", "init", "image_size")


def recipe(finetune_params: dict, run: str) -> dict:
    """One run's settings: ``finetune.train`` overlaid with the run's own keys (arch, init, image_size, and any
    recipe key it overrides, e.g. a lower ``lr`` for an ImageNet arm)."""
    runs = finetune_params["runs"]
    if run not in runs:
        raise KeyError(f"no finetune.runs.{run} in params.yaml; configured: {sorted(runs)}")
    return {**finetune_params["train"], **runs[run]}


def save(model: Classifier, path: str | os.PathLike, config: dict) -> None:
    """``path/model.safetensors`` + ``path/model.json`` (arch, init, image size, classes, ...)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / CHECKPOINT))
    (path / CONFIG).write_text(json.dumps({**config, "image_size": model.image_size}, indent=2, sort_keys=True) + "\n")


def load(path: str | os.PathLike) -> tuple[Classifier, dict]:
    """The saved classifier in eval mode, and its config. Builds from scratch: loading downloads nothing."""
    path = Path(path)
    config = json.loads((path / CONFIG).read_text())
    model = build_classifier(config["arch"], "scratch", len(config["label_names"]), config["image_size"])
    model.load_state_dict(read_safetensors(path / CHECKPOINT, load_file, "checkpoint"))
    return model.eval(), config
