"""Score CT slices with a trained model: ``python -m covidct.predict IMAGE... --model <name>``.

Prints the COVID-19 probability of each image and writes ``<image>.cam.png`` beside it: the slice with the
model's GradCAM for the COVID-19 logit laid over it. Any PNG or JPEG works: RGB(A), palette and 16-bit images
are turned into 8-bit grayscale exactly as the crop stage turned the training slices. Models are trained on slices cropped to the
body's bounding box (the split files' xmin ymin xmax ymax); pass ``--bbox`` to crop the same way.

    python -m covidct.predict slice.png --model models/finetune/resnet18-scratch
    python -m covidct.predict a.png b.jpg --model models/vgg16-mlp --bbox 10 40 500 470
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from covidct import explain, models
from covidct.images import Unusable, read_image


class ImageError(ValueError):
    """An input file is missing or is not an image we can read; the message names the file."""


# images.read_image's reasons, in words for someone scoring their own files
_WHY = {"missing_file": "no such file", "empty_file": "empty file (0 bytes); re-export or re-download it",
        "not_an_image": "not an image format PIL recognises (expected PNG or JPEG)"}


def read_grayscale(path: str | Path) -> np.ndarray:
    """float32 (H, W) in [0, 1], read and converted by the crop stage's ``read_image``, so a slice is
    scored exactly as training slices were made (16-bit scaled by its full range, transparency over black)."""
    try:
        gray = read_image(Path(path))
    except Unusable as exc:
        why = _WHY.get(exc.reason, f"{exc.detail}; the file is probably truncated or corrupt")
        raise ImageError(f"{path}: {why}") from None
    return np.asarray(gray, dtype=np.float32) / 255.0


def crop_to(image: np.ndarray, bbox, path) -> np.ndarray:
    xmin, ymin, xmax, ymax = (int(v) for v in bbox)
    h, w = image.shape
    if not (0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h):
        raise ImageError(f"{path}: --bbox {xmin} {ymin} {xmax} {ymax} is not inside the {w}x{h} image")
    return image[ymin:ymax, xmin:xmax]


def save_overlay(path: str | Path, image: np.ndarray, cam: np.ndarray, title: str) -> None:
    fig = explain.new_figure(4, 4.3)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    explain.save_figure(fig, path)


def predict_files(paths, model_dir, bbox=None, max_side: int = 512) -> list[dict]:
    """One dict per readable image: path, probability, overlay path; unreadable ones carry an ``error``."""
    model, config = models.load_model(model_dir)
    # the pipeline's model names: <backbone>-<head>, finetune-<arch>-<init>
    model_name = f"finetune-{config['arch']}-{config['init']}" if "init" in config else Path(model_dir).name
    positive = config["label_names"].index("COVID-19")
    results = []
    for path in paths:
        try:
            image = read_grayscale(path)
            if bbox is not None:
                image = crop_to(image, bbox, path)
        except ImageError as exc:
            results.append({"path": str(path), "error": str(exc)})
            continue
        x = torch.from_numpy(image)[None, None]
        if max(image.shape) > max_side:  # CAMs need gradients: bound memory for huge inputs
            scale = max_side / max(image.shape)
            size = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            prob = float(torch.softmax(model(x).double(), 1)[0, positive])
        cam = explain.class_activation_maps(model, x, positive, methods=("gradcam",))["gradcam"][0]
        overlay = Path(path).with_name(Path(path).stem + ".cam.png")
        save_overlay(overlay, x[0, 0].numpy(), cam, f"{Path(path).name}: P(COVID-19) = {prob:.3f} ({model_name})")
        results.append({"path": str(path), "prob": prob, "overlay": str(overlay)})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covidct.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--model", required=True, help="a trained model's folder, e.g. models/vgg16-mlp or "
                                                       "models/finetune/resnet18-scratch")
    parser.add_argument("--bbox", nargs=4, type=int, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help="crop every image to this box first, as the split files do")
    args = parser.parse_args(argv)
    try:
        results = predict_files(args.images, args.model, args.bbox)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for r in results:
        if "error" in r:
            print(f"error: {r['error']}", file=sys.stderr)
        else:
            print(f"{r['path']}\tP(COVID-19)={r['prob']:.4f}\tCAM: {r['overlay']}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
