"""Whole-network training on the crop store: a registry backbone plus a linear layer, from scratch or ImageNet.

The second reference study's question: does transfer learning beat training from scratch on CT? Both arms
share everything but the initial weights: CT-friendly augmentation (random resized crop, small rotation,
flips), AdamW with linear warm-up then cosine decay per step, bf16 autocast on CUDA, early stopping on
validation loss. Per epoch it reports train / val / test loss and accuracy, as the study plots them; test
numbers are shown, never used for a choice. The best epoch (lowest val loss) is kept and saved as
safetensors + JSON, so a checkpoint never runs code when loaded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from covidct.backbones import REGISTRY, check_image_size
from covidct.classifier import INITS, Classifier, autocast, predict_split
from covidct.errors import ParamsError
from covidct.params import Problems, choice, device_name, integer, number, seed_int, unknown_keys, worker_count
from covidct.store import CropStore


class AugmentedSlices(torch.utils.data.Dataset):
    """One split of the crop store as augmented (image in [0, 1] of shape (1, size, size), label) pairs."""

    def __init__(self, store: CropStore, split: str, image_size: int, augment: dict):
        rows = store.rows(split)
        self.store = store
        self.shards, self.offsets = rows["shard"].to_numpy(), rows["offset"].to_numpy()
        self.labels = rows["label"].to_numpy().astype(np.int64)
        self.transform = augmentation(image_size, augment)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = np.array(self.store.shard(int(self.shards[i]))[int(self.offsets[i])])
        return self.transform(torch.from_numpy(image)[None].float().div_(255.0)), self.labels[i]


def augmentation(image_size: int, params: dict):
    """Random resized crop, small rotation and flips: plausible for axial CT slices, no intensity games."""
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


def train(model: Classifier, store: CropStore, params: dict, device: torch.device, class_weights=None,
          on_epoch=None, num_workers: int = 0) -> dict:
    """Trains in place and leaves the best (lowest val loss) weights loaded; returns the per-epoch logs."""
    p = params
    torch.manual_seed(p["seed"])
    train_set = AugmentedSlices(store, "train", model.image_size, p["augment"])
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=p["batch_size"], shuffle=True,
                                               drop_last=len(train_set) > p["batch_size"], num_workers=num_workers,
                                               pin_memory=device.type == "cuda",
                                               generator=torch.Generator().manual_seed(p["seed"]))
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
            with autocast(device):
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
        for split in ("val", "test"):
            probs, split_loss = predict_split(model, store, split, device, p["batch_size"], loss_fn)
            labels = store.rows(split)["label"].to_numpy()
            results[split] = (split_loss, float((probs.argmax(1) == labels).mean()))
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


def recipe(finetune_params: dict, run: str) -> dict:
    """One run's settings: ``finetune.train`` overlaid with the run's own keys (arch, init, image_size, and any
    recipe key it overrides, e.g. a lower ``lr`` for an ImageNet arm)."""
    runs = finetune_params.get("runs") or {}
    if run not in runs:
        raise ParamsError(f"no finetune.runs.{run} in params.yaml; configured: {sorted(runs)}")
    return {**finetune_params["train"], **runs[run]}


def check_params(finetune: dict) -> list[str]:
    """The ``finetune:`` section. ``runs`` may be empty (a study of frozen features only)."""
    problems = Problems(unknown_keys("finetune", finetune, ("device", "num_threads", "num_workers", "runs", "train")))
    train, runs = finetune.get("train"), finetune.get("runs")
    if not isinstance(train, dict) or not isinstance(runs, (dict, type(None))):
        return problems + [
            "finetune: needs train: {...} and runs: {<arch>-<init>: {arch, init, image_size}, ...} (may be {})"]
    problems += device_name("finetune.device", finetune.get("device"))
    problems += worker_count("finetune.num_threads", finetune.get("num_threads"))
    problems += worker_count("finetune.num_workers", finetune.get("num_workers"), " (0 = in the main process)")
    problems += unknown_keys("finetune.train", train, TRAIN_KEYS)
    for key, check in _RECIPE_CHECKS.items():
        problems += check(f"finetune.train.{key}", train.get(key))
    for name, run in (runs or {}).items():
        if not isinstance(run, dict):
            problems.append(f"finetune.runs.{name}={run!r}: a mapping with arch, init, image_size (and any "
                            "finetune.train key it overrides)")
            continue
        problems += unknown_keys(f"finetune.runs.{name}", run, ("arch", "init", "image_size", *TRAIN_KEYS))
        for key in set(run) & set(TRAIN_KEYS):  # a run's own recipe keys, checked as finetune.train's are
            problems += _RECIPE_CHECKS[key](f"finetune.runs.{name}.{key}", run[key])
        arch, init = run.get("arch"), run.get("init")
        if not (isinstance(arch, str) and arch in REGISTRY):
            problems.append(f"finetune.runs.{name}.arch={arch!r}: choose from {sorted(REGISTRY)}")
            continue
        problems += choice(f"finetune.runs.{name}.init", init, INITS)
        problems.require(name == f"{arch}-{init}",
                         f"finetune.runs.{name}: name the run {arch}-{init} (<arch>-<init>), as its outputs are")
        problems += check_image_size(arch, run.get("image_size"), f"finetune.runs.{name}.image_size")
    return problems


def _check_augment(key: str, augment) -> list[str]:
    if not isinstance(augment, dict):
        return [f"{key}={augment!r}: a mapping of scale_min, rotation, hflip, vflip"]
    problems = unknown_keys(key, augment, ("scale_min", "rotation", "hflip", "vflip"))
    problems += number(f"{key}.scale_min", augment.get("scale_min"), 0, 1, low_open=True)
    problems += number(f"{key}.rotation", augment.get("rotation", 0), 0, 180)
    for flip in ("hflip", "vflip"):
        problems += number(f"{key}.{flip}", augment.get(flip, 0), 0, 1)
    return problems


# finetune.train's keys (which a run may override) and their checks, given the dotted key and the value.
_RECIPE_CHECKS = {
    "epochs": lambda key, value: integer(key, value, 1),
    "batch_size": lambda key, value: integer(key, value, 1),
    "lr": lambda key, value: number(key, value, 0, low_open=True),
    "weight_decay": lambda key, value: number(key, value, 0),
    "warmup_epochs": lambda key, value: integer(key, value, 1),
    "patience": lambda key, value: integer(key, value, 1),
    "seed": seed_int,
    "augment": _check_augment,
}
TRAIN_KEYS = tuple(_RECIPE_CHECKS)
