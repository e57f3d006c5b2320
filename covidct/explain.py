"""What the fine-tuned networks look at: class activation maps, input gradients, first-layer kernels.

All functions take a ``classifier.Classifier`` and grayscale images in [0, 1] of shape (N, 1, H, W), the
way the crop store holds them. The classifier resizes and normalises inside, so every map comes back at
the size of the images passed in and can be laid straight over them. Figures are drawn with matplotlib's
Agg canvas (no pyplot, no global backend switch) and written atomically, so a killed stage never leaves
half a PNG for DVC to cache.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam import EigenCAM, GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from covidct.atomic import atomic_path, atomic_write_json
from covidct.backbones import get_spec
from covidct.classifier import predict_split
from covidct.params import Problems, is_positive_int, seed_int, unknown_keys

CAMS = {"gradcam": GradCAM, "hirescam": HiResCAM, "eigencam": EigenCAM}
CAM_METHODS = tuple(CAMS)
KINDS = ("TP", "TN", "FP", "FN")


def check_params(explain: dict) -> list[str]:
    """The ``explain:`` section."""
    problems = Problems(unknown_keys("explain", explain, ("per_kind", "seed", "methods")))
    methods = explain.get("methods")
    problems.require(isinstance(methods, list) and bool(methods) and all(m in CAM_METHODS for m in methods)
                     and all(isinstance(m, str) for m in methods),
                     f"explain.methods={methods!r}: a non-empty list from {list(CAM_METHODS)}")
    problems.require(is_positive_int(explain.get("per_kind")),
                     f"explain.per_kind={explain.get('per_kind')!r}: a positive integer")
    problems += seed_int("explain.seed", explain.get("seed"))
    return problems

def cam_target(model: nn.Module):
    """([target layer], reshape transform or None) of a ``Classifier``, as its backbone's registry entry says."""
    spec = get_spec(model.arch)
    return [spec.cam_layer(model.backbone)], spec.cam_reshape


# -----------------------------------------------------------------------------------------------------------------
# maps


@contextlib.contextmanager
def _explaining(model: nn.Module):
    """Eval mode for the duration (dropout off, BatchNorm on running stats), then the caller's mode back.

    Leaves no parameter gradients behind: a frozen backbone should not grow 100M+ ``.grad`` tensors (VGG16)
    just because someone looked at a saliency map.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def _as_input(images) -> torch.Tensor:
    """A float (N, 1, H, W) leaf tensor that requires grad, on no device other than the one it came on.

    Requiring grad on the *input* is what makes frozen models work: every activation after it then carries
    a graph, so grad-cam's hooks see gradients without touching any parameter's ``requires_grad``, and
    backward never computes weight gradients nobody asked for.
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim == 3:
        x = x[:, None]
    return x.detach().clone().requires_grad_(True)


def class_activation_maps(model: nn.Module, images, target_class: int,
                          methods=CAM_METHODS) -> dict[str, np.ndarray]:
    """method -> float32 (N, H, W) in [0, 1] at the input's size: where ``target_class``'s logit comes from.

    GradCAM weights channels by their mean gradient; HiResCAM multiplies gradients and activations
    element-wise (faithful to the logit for conv heads); EigenCAM is the first principal component of the
    activations, class-agnostic and gradient-free, a sanity check on the other two.
    grad-cam resizes each map to the width and height of the tensor it is given, so handing it the original
    images (not the classifier's resized copy) yields maps at the stored image size.
    """
    unknown = [m for m in methods if m not in CAMS]
    if unknown:
        raise KeyError(f"unknown CAM method(s) {unknown}; choose from {sorted(CAMS)}")
    layers, reshape = cam_target(model)
    x = _as_input(images)
    targets = [ClassifierOutputTarget(int(target_class))] * len(x)
    maps = {}
    with _explaining(model):
        for method in methods:
            cam = CAMS[method](model=model, target_layers=layers, reshape_transform=reshape)
            try:  # not ``with cam``: its __exit__ swallows IndexError and would hide a wrong target layer
                out = cam(input_tensor=x, targets=targets)
            finally:
                cam.activations_and_grads.release()  # remove the hooks, or every later forward pays for them
            maps[method] = np.clip(np.nan_to_num(out.astype(np.float32)), 0.0, 1.0)
    return maps


def input_gradients(model: nn.Module, images, labels) -> np.ndarray:
    """|d cross-entropy / d input| as float32 (N, H, W), the plainest saliency map, at the input's size.

    The loss is summed over the batch, not averaged, so one image's map does not depend on how many others
    share its batch. Channels (if any) are reduced by their maximum.
    """
    x = _as_input(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    with _explaining(model):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad.abs().amax(dim=1).float().numpy()


# -----------------------------------------------------------------------------------------------------------------
# first-layer filters


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` in the backbone (ViT: its patch embedding), found without per-arch code."""
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError(f"{type(model.backbone).__name__} has no Conv2d")


def first_layer_kernels(model: nn.Module) -> np.ndarray:
    """The first convolution's kernels tiled in a square grid: (H, W, 3) for RGB kernels, else (H, W).

    Each kernel is min-max scaled on its own (over all its channels, keeping their colour balance), because
    kernels differ in scale by orders of magnitude and one shared scale would leave most of them flat grey.
    Tiles are separated by a 1-px white gap.
    """
    w = first_conv(model).weight.detach().float().cpu()  # (out, in, kh, kw)
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)  # gray (or grouped) input: one plane per kernel
    lo = w.amin(dim=(1, 2, 3), keepdim=True)
    hi = w.amax(dim=(1, 2, 3), keepdim=True)
    w = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # (out, kh, kw, c)
    n, kh, kw, c = w.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (kh + 1) - 1, cols * (kw + 1) - 1, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * (kh + 1):r * (kh + 1) + kh, q * (kw + 1):q * (kw + 1) + kw] = w[i]
    return grid if c == 3 else grid[..., 0]


# -----------------------------------------------------------------------------------------------------------------
# which slices to show


def pick_examples(probs, labels, per_kind: int, seed: int, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Seeded, sorted choices of up to ``per_kind`` indices for each of TP, TN, FP, FN (binary problems).

    ``probs`` is P(positive) per example (an (n, 2) softmax output is accepted too). Random rather than
    most-confident picks, so the figures show typical cases, not only the extremes.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels).astype(int)
    if probs.ndim == 2:
        probs = probs[:, 1]
    predicted = probs >= threshold
    masks = {"TP": predicted & (labels == 1), "TN": ~predicted & (labels == 0),
             "FP": predicted & (labels == 0), "FN": ~predicted & (labels == 1)}
    rng = np.random.default_rng(seed)
    picks = {}
    for kind in KINDS:
        candidates = np.flatnonzero(masks[kind])
        chosen = rng.choice(candidates, size=min(per_kind, len(candidates)), replace=False)
        picks[kind] = np.sort(chosen).astype(np.int64)
    return picks


# -----------------------------------------------------------------------------------------------------------------
# figures


def save_figure(fig, path: str | os.PathLike) -> None:
    """PNG through a temporary file; ``format`` is explicit because the temporary name has no suffix."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)


def new_figure(width: float, height: float):
    """A pyplot-free Agg figure: nothing global to switch or close, freed when it goes out of scope."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_cam_grid(path: str | os.PathLike, images, maps: dict[str, np.ndarray], titles) -> None:
    """One row per example: the image, then each method's map over it (jet, alpha 0.4); row titles e.g. "TP p=0.93"."""
    images = np.asarray(images, dtype=np.float32)
    images = images.reshape(-1, *images.shape[-2:])  # (N, 1, H, W) or (N, H, W) -> (N, H, W)
    methods = list(maps)
    cols = 1 + len(methods)
    fig = new_figure(1.8 * cols, 1.9 * len(images))
    axes = fig.subplots(len(images), cols, squeeze=False)
    for i, image in enumerate(images):
        axes[i, 0].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, method in enumerate(methods, start=1):
            axes[i, j].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(maps[method][i], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            if i == 0:
                axes[i, j].set_title(method, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


def save_image_grid(path: str | os.PathLike, image: np.ndarray, title: str) -> None:
    """One image (e.g. ``first_layer_kernels``' tiling) with a title, nearest-neighbour so kernels stay crisp."""
    image = np.asarray(image, dtype=np.float32)
    aspect = image.shape[1] / image.shape[0]
    fig = new_figure(5 * min(aspect, 2), 5 / max(aspect, 0.5) + 0.4)
    ax = fig.add_subplot()
    ax.imshow(image, cmap=None if image.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    save_figure(fig, path)


# -----------------------------------------------------------------------------------------------------------------
# one model, end to end: what the explain stage writes


def _unit_scale(maps: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Each map divided by its own high percentile and clipped to [0, 1]: one hot pixel does not wash out the rest."""
    top = np.percentile(maps.reshape(len(maps), -1), percentile, axis=1).reshape(-1, 1, 1)
    return np.clip(maps / np.maximum(top, 1e-12), 0.0, 1.0).astype(np.float32)


def explain_model(model: nn.Module, store, out_dir, label_names, title: str, per_kind: int = 2,
                  seed: int = 0, methods=CAM_METHODS, device: torch.device | None = None) -> dict:
    """Test-set CAMs, input gradients and first-layer kernels of one model -> PNGs + examples.json in ``out_dir``.

    ``model`` is any ``classifier.Classifier`` (a fine-tuned network or a frozen backbone + head composed by
    ``models.load_model``). Examples: ``per_kind`` seeded picks each of TP, TN, FP and FN on the test split,
    COVID-19 as the positive class; every map is for the COVID-19 logit.
    """
    device = device or torch.device("cpu")
    out_dir = Path(out_dir)
    positive = list(label_names).index("COVID-19")
    rows = store.rows("test")
    probs = predict_split(model, store, "test", device)[0][:, positive]
    model.cpu()
    labels = (rows["label"].to_numpy() == positive).astype(int)
    picks = pick_examples(probs, labels, per_kind, seed)
    order = np.concatenate([picks[kind] for kind in KINDS]).astype(np.int64)
    kinds = [kind for kind in KINDS for _ in picks[kind]]
    images = store.read(rows.iloc[order]).astype(np.float32)[:, None] / 255.0
    maps = class_activation_maps(model, images, positive, methods)
    maps["input gradient"] = _unit_scale(input_gradients(model, images, labels[order]))
    titles = [f"{kind} p={probs[i]:.2f}" for kind, i in zip(kinds, order)]
    save_cam_grid(out_dir / "cams.png", images, maps, titles)
    kernels = first_layer_kernels(model)
    layer = "patch embedding" if model.arch.startswith("vit") else "first conv layer"
    save_image_grid(out_dir / "kernels.png", kernels, f"{title}: {layer}, {len(first_conv(model).weight)} filters")
    examples = {kind: [{"fname": rows["fname"].iat[i], "prob": round(float(probs[i]), 6)} for i in picks[kind]]
                for kind in KINDS}
    atomic_write_json(out_dir / "examples.json", examples)
    return examples
