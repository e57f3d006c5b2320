"""Score CT slices with a trained model: ``python -m covidct.predict IMAGE... --model <folder>``.

Models are trained on slices cropped to the body's bounding box (the split files' xmin ymin xmax ymax) and have
never seen a whole slice, so every slice is cropped the same way first: to ``--bbox`` if given, else to the body
box found in the pixels (``covidct.bodybox``). Each line printed names the box used and where it came from. A
slice that looks unlike the training crops (no body found, tiny, intensities far from training: see
``covidct.inputstats``) gets a warning on stderr and in the CSV: its probability is not to be trusted.

Any PNG or JPEG works: RGB(A), palette and 16-bit images are turned into 8-bit grayscale exactly as the crop stage
turned the training slices. The slice with the model's GradCAM for the COVID-19 logit laid over it goes to
``--out-dir`` (default ``predictions/``, never beside the input: inputs may be DVC-tracked data) as
``<image name>.<model>.cam.png``, so ``a.png`` and ``a.jpg`` keep one overlay each. Unreadable files are named,
skipped and counted; the exit status is 1 if any was skipped.

    python -m covidct.predict slice.png --model models/finetune/resnet18-scratch
    python -m covidct.predict scans/*.png --model models/vgg16-mlp --csv predictions/scores.csv
    python -m covidct.predict a.png b.jpg --model models/vgg16-mlp --bbox 10 40 500 470
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from covidct import bodybox, explain, inputstats, models
from covidct.atomic import atomic_path
from covidct.crop import crop_box
from covidct.errors import KNOWN_ERRORS
from covidct.images import Unusable, read_image

THRESHOLD = 0.5  # the decision printed and written; the pipeline's default threshold (evaluate's first one)
MIN_SIDE = 64  # px; a box shorter than this is "tiny" when the model folder has no training statistics
# Memory one image may take to decode, judged from its header before decoding: a CT slice (512x512, even 16-bit)
# needs ~3 MiB, while a 300 KB "decompression bomb" PNG can ask for gigabytes and take the other images down with
# the process. Finding the body and the CAM need several float copies more, hence a tighter budget than crop's.
DECODE_BUDGET = 128 * 2**20
CSV_FIELDS = ("file", "model", "box_source", "xmin", "ymin", "xmax", "ymax", "p_covid19", "decision", "warnings",
              "overlay", "error")


class ImageError(ValueError):
    """An input file is missing or is not an image we can read; the message names the file."""


# images.read_image's reasons, in words for someone scoring their own files
_WHY = {"missing_file": "no such file", "empty_file": "empty file (0 bytes); re-export or re-download it",
        "not_an_image": "not an image format PIL recognises (expected PNG or JPEG)"}
_TOO_LARGE = ("far larger than a CT slice (512x512): refused before decoding, so it cannot exhaust memory; "
              "downscale it, or check it is the file you meant")


def read_grayscale(path: str | Path) -> np.ndarray:
    """float32 (H, W) in [0, 1], read and converted by the crop stage's ``read_image``, so a slice is
    scored exactly as training slices were made (16-bit scaled by its full range, transparency over black)."""
    try:
        gray = read_image(Path(path), DECODE_BUDGET)
    except Unusable as exc:
        if exc.reason == "too_large":
            raise ImageError(f"{path}: {exc.detail.rstrip('.')}; {_TOO_LARGE}") from None
        why = _WHY.get(exc.reason, f"{exc.detail}; the file is probably truncated or corrupt: re-export it")
        raise ImageError(f"{path}: {why}") from None
    return np.asarray(gray, dtype=np.float32) / 255.0


def choose_box(image: np.ndarray, bbox, path) -> tuple[tuple[int, int, int, int], str, list[str]]:
    """(box, where it came from: given | auto | whole image, warnings). A given box must lie inside the image."""
    h, w = image.shape
    if bbox is not None:
        xmin, ymin, xmax, ymax = (int(v) for v in bbox)
        if not (0 <= xmin < xmax <= w and 0 <= ymin < ymax <= h):
            raise ImageError(f"{path}: --bbox {xmin} {ymin} {xmax} {ymax} is not inside the {w}x{h} image; "
                             "give a box inside it, or leave --bbox out to find the body")
        return (xmin, ymin, xmax, ymax), "given", []
    found = bodybox.find_body_box(image)
    if found is None:
        why = "no body found: scored the whole image, unlike any training crop; check it is a CT slice, or pass --bbox"
        return (0, 0, w, h), "whole image", [why]
    return found, "auto", []


def tiny_warning(crop: np.ndarray, reference: dict | None) -> list[str]:
    """Upscaled more than twice as much as the smallest training box, a crop is blurrier than any the model saw."""
    h, w = crop.shape
    limit = reference["side"]["low"] / 2 if reference else MIN_SIDE
    if min(h, w) >= limit:
        return []
    why = " (half the training boxes' shortest side)" if reference else ""
    return [f"tiny image: the box is {w}x{h} px, under {limit:.0f} px{why}"]


def intensity_warning(crop: np.ndarray, reference: dict | None) -> list[str]:
    """Statistics far from the training crops', measured as those were: at the crop store's size, in 8 bits."""
    if not reference:
        return []
    h, w = crop.shape
    size = reference["size"]
    resized = Image.fromarray(np.rint(crop * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    unlike = inputstats.unlike(np.asarray(resized), w, h, reference)
    return ["unlike the training crops: " + "; ".join(unlike)] if unlike else []


def model_input(crop: np.ndarray, max_side: int) -> torch.Tensor:
    """(1, 1, H, W); huge crops are shrunk first, as CAMs need gradients and memory grows with the pixels."""
    x = torch.from_numpy(np.ascontiguousarray(crop))[None, None]
    if max(crop.shape) > max_side:
        scale = max_side / max(crop.shape)
        size = (max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale)))
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def model_name_of(model_dir, config: dict) -> str:
    """The pipeline's model names: <backbone>-<head>, finetune-<arch>-<init>."""
    return f"finetune-{config['arch']}-{config['init']}" if "init" in config else Path(model_dir).name


def overlay_path(out_dir: Path, path, model_name: str, taken: dict) -> Path:
    """``<out_dir>/<file name>.<model>.cam.png``: the extension stays in the name, so a.png and a.jpg do not
    collide; other inputs of the same name in one run (x/a.png, y/a.png) get .2, .3, ... (``taken``: overlay ->
    the input it shows)."""
    name, number, source = f"{Path(path).name}.{model_name}", 1, Path(path).resolve()
    candidate = out_dir / f"{name}.cam.png"
    while taken.get(candidate, source) != source:
        number += 1
        candidate = out_dir / f"{name}.{number}.cam.png"
    taken[candidate] = source
    return candidate


def save_overlay(path: Path, image: np.ndarray, box, box_source: str, crop: np.ndarray, cam: np.ndarray,
                 title: str) -> None:
    """Left: the whole slice and the box used (check it holds the body); right: the crop with the CAM."""
    fig = explain.new_figure(7.5, 4.3)
    left, right = fig.subplots(1, 2)
    left.imshow(image, cmap="gray", vmin=0, vmax=1)
    xmin, ymin, xmax, ymax = box
    left.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin, fill=False,
                             edgecolor="lime" if box_source == "auto" else "orange", linewidth=1.5))
    left.set_title(f"box: {box_source} {xmin} {ymin} {xmax} {ymax}", fontsize=8)
    right.imshow(crop, cmap="gray", vmin=0, vmax=1)
    right.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    right.set_title("GradCAM, COVID-19 logit", fontsize=8)
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88, wspace=0.04)  # tight_layout: 30 ms an image
    with atomic_path(path) as tmp:  # PNG's fastest compression: half the time of the default, ~10 % larger files
        fig.savefig(tmp, format="png", dpi=fig.dpi, pil_kwargs={"compress_level": 1})


class Predictor:
    """A model loaded once, scoring one file at a time."""

    def __init__(self, model_dir, out_dir="predictions", cams: bool = True, max_side: int = 512):
        self.model, config = models.load_model(model_dir)
        self.name = model_name_of(model_dir, config)
        self.positive = config["label_names"].index("COVID-19")
        others = [n for n in config["label_names"] if n != "COVID-19"]
        self.negative = others[0] if len(others) == 1 else "not COVID-19"
        self.reference = inputstats.load(model_dir)
        # the crop stage grew every box by crop.margin; the same growth here gives the crops the model saw
        self.margin = self.reference.get("margin", 0.0) if self.reference else 0.0
        self.out_dir, self.cams, self.max_side, self.taken = Path(out_dir), cams, max_side, {}

    def score(self, path, bbox=None) -> dict:
        """One CSV row as a dict (``prob`` and ``warnings`` as numbers and a list); ImageError if unreadable."""
        image = read_grayscale(path)
        box, source, warnings = choose_box(image, bbox, path)
        box = crop_box(image.shape[1], image.shape[0], box, self.margin)
        crop = image[box[1]:box[3], box[0]:box[2]]
        warnings += tiny_warning(crop, self.reference) + intensity_warning(crop, self.reference)
        x = model_input(crop, self.max_side)
        with torch.no_grad():
            prob = float(torch.softmax(self.model(x).double(), 1)[0, self.positive])
        row = {"file": str(path), "model": self.name, "box": box, "box_source": source, "prob": prob,
               "decision": "COVID-19" if prob >= THRESHOLD else self.negative, "warnings": warnings, "overlay": ""}
        if self.cams:
            row["overlay"] = str(self.overlay(path, image, box, source, x, prob))
        return row

    def overlay(self, path, image, box, source, x, prob) -> Path:
        cam = explain.class_activation_maps(self.model, x, self.positive, methods=("gradcam",))["gradcam"][0]
        target = overlay_path(self.out_dir, path, self.name, self.taken)
        save_overlay(target, image, box, source, x[0, 0].numpy(), cam,
                     f"{Path(path).name}: P(COVID-19) = {prob:.3f} ({self.name})")
        return target


def predict_files(paths, model_dir, bbox=None, out_dir="predictions", cams: bool = True,
                  max_side: int = 512) -> list[dict]:
    """One dict per file: its CSV row (see ``Predictor.score``), or ``file`` and ``error`` if it was skipped."""
    predictor = Predictor(model_dir, out_dir, cams, max_side)
    return [score_or_skip(predictor, path, bbox) for path in paths]


def score_or_skip(predictor: Predictor, path, bbox) -> dict:
    try:
        return predictor.score(path, bbox)
    except ImageError as exc:
        return {"file": str(path), "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - anything unforeseen skips this file, named; the rest are scored
        return {"file": str(path), "error": f"{path}: could not be scored ({type(exc).__name__}: {exc})"}


def csv_row(result: dict) -> dict:
    box = result.get("box", ("",) * 4)
    row = {**dict(zip(("xmin", "ymin", "xmax", "ymax"), box)), **result}
    row["p_covid19"] = f"{result['prob']:.6f}" if "prob" in result else ""
    row["warnings"] = " | ".join(result.get("warnings", ()))
    return {field: row.get(field, "") for field in CSV_FIELDS}


def write_csv(path, results: list[dict]) -> None:
    """All rows at once, through a temporary file: a killed run leaves the previous CSV or none, never half."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_row(r) for r in results)


def print_result(result: dict) -> None:
    if "error" in result:
        print(f"error: {result['error']}", file=sys.stderr)
        return
    box = " ".join(str(v) for v in result["box"])
    overlay = f"\tCAM: {result['overlay']}" if result["overlay"] else ""
    print(f"{result['file']}\tP(COVID-19)={result['prob']:.4f}\t{result['decision']}\t"
          f"box {result['box_source']} {box}{overlay}", flush=True)
    for warning in result["warnings"]:
        print(f"warning: {result['file']}: {warning}", file=sys.stderr)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m covidct.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="PNG or JPEG files")
    parser.add_argument("--model", required=True, help="a trained model's folder, e.g. models/vgg16-mlp or "
                                                       "models/finetune/resnet18-scratch")
    parser.add_argument("--bbox", nargs=4, type=int, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                        help="crop every image to this box (as the split files give it) instead of finding the body")
    parser.add_argument("--out-dir", default="predictions", help="folder for the CAM overlays (default: %(default)s)")
    parser.add_argument("--csv", help="also write one row per image here: file, model, box, P(COVID-19), decision "
                                      f"at {THRESHOLD}, warnings, overlay, error")
    parser.add_argument("--no-cam", action="store_true", help="no overlays: scores only, several times faster")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    return parser.parse_args(argv)


def open_predictor(args) -> Predictor | None:
    """The model, loaded once, with its output folders made; None, after one error line, if that fails."""
    try:
        predictor = Predictor(args.model, args.out_dir, cams=not args.no_cam)
    except KNOWN_ERRORS as exc:  # their messages name the file and what to do
        print(f"error: {exc}", file=sys.stderr)
        return None
    except Exception as exc:  # noqa: BLE001 - a damaged folder: one clear line, not a traceback
        print(f"error: cannot load the model in {args.model}/ ({type(exc).__name__}: {exc}); "
              "restore it with `dvc checkout` or retrain with `dvc repro`", file=sys.stderr)
        return None
    folders = ([args.out_dir] if not args.no_cam else []) + ([Path(args.csv).parent] if args.csv else [])
    for folder in folders:  # now, not after an hour of scoring
        problem = unwritable(Path(folder))
        if problem:
            print(f"error: cannot write to the output folder {folder}: {problem}; choose another with "
                  f"{'--csv' if args.csv and Path(folder) == Path(args.csv).parent else '--out-dir'}", file=sys.stderr)
            return None
    if predictor.reference is None:
        print(f"note: {args.model} has no {inputstats.STATS_FILE} (trained before it was recorded): intensities "
              "are not compared with the training crops'; retrain (dvc repro) to get the check", file=sys.stderr)
    return predictor


def unwritable(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (made if missing), or None: by trying, as permissions, read-only
    mounts and full disks all say no only then."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".predict-probe-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    # One image at a time is too little work to share between threads, and on a busy machine threads waiting for
    # each other made scoring 4-12x slower than one thread (measured on 2 cores: 0.5 vs 5.7 images/s).
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    predictor = open_predictor(args)
    if predictor is None:
        return 2
    loaded = time.perf_counter()
    results = []
    for path in args.images:
        results.append(score_or_skip(predictor, path, args.bbox))
        print_result(results[-1])
    seconds = time.perf_counter() - loaded
    if args.csv:
        try:
            write_csv(args.csv, results)
        except OSError as exc:
            print(f"error: cannot write --csv {args.csv}: {exc}", file=sys.stderr)
            return 2
    print(summary(results, seconds, loaded - started), file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


def summary(results: list[dict], seconds: float, load_seconds: float) -> str:
    scored = sum("error" not in r for r in results)
    warned = sum(bool(r.get("warnings")) for r in results)
    return (f"{scored} scored, {len(results) - scored} skipped (errors above), {warned} with warnings; "
            f"{scored / max(seconds, 1e-9):.2f} images/s ({seconds:.1f} s, model loaded once in {load_seconds:.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
