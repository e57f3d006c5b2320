"""Does ``covidct.predict``'s own body box stand in for the split files' box? Measured on the demo's trained models
and the sample's test slices (Normal and COVID-19, the ones the models are evaluated on), after `dvc repro`.

    python -m bench.predict_boxes                       # every model under models/
    python -m bench.predict_boxes --models models/vgg16-mlp --limit 100

Each slice is scored three ways: cropped to its split-file box (what evaluate measures), to the box predict finds
itself, and uncropped. Per model: agreement of the decision at 0.5 and mean / max |delta p| between the given box and
the auto box (and, for scale, between the given box and the whole slice), the boxes' IoU, and how many slices each
way gets an out-of-distribution warning. Each model folder is scored from a scratch copy holding the statistics of
``--crops``' training split (``input_stats.json``, as the training stages write it; folders trained before lack it).
Also times scoring (images/s, CAM overlays on and off, one torch thread as predict uses) for the first model.
Results go to bench/results/predict-boxes.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from covidct import bodybox, inputstats, predict
from covidct.atomic import atomic_write_json
from covidct.layout import IMAGES_DIR, read_split_file, split_filename
from covidct.store import CropStore

ROOT = Path(__file__).resolve().parents[1]


def model_dirs(paths) -> list[Path]:
    """Trained model folders among ``paths`` and their subfolders (models/ holds models/finetune/<run>/)."""
    found = []
    for path in map(Path, paths):
        candidates = [path, *sorted(p.parent for p in path.rglob("*.json"))]
        found += [p for p in candidates if (p / "model.json").is_file() or (p / "backbone.json").is_file()]
    return sorted(set(found))


def with_reference(model_dir: Path, reference: dict, scratch: Path) -> Path:
    copy = scratch / model_dir.name
    shutil.copytree(model_dir, copy)
    inputstats.save(copy, reference)
    return copy


def boxes_of(row, path: Path) -> dict:
    """The ways one slice is cropped: its split-file box, none (predict finds one), the whole slice, and the split
    file's box 2 px wider on each side. The split files' own margin varies by 5 px (2-7 px at 512), so the model's
    answer to that wider box is the noise floor any box found from the pixels is up against."""
    with Image.open(path) as image:
        width, height = image.size
    box = (row.xmin, row.ymin, row.xmax, row.ymax)
    wider = (max(box[0] - 2, 0), max(box[1] - 2, 0), min(box[2] + 2, width), min(box[3] + 2, height))
    return {"given": box, "auto": None, "whole": (0, 0, width, height), "wider": wider}


def compare(given: np.ndarray, other: np.ndarray) -> dict:
    """Decision agreement at 0.5 and |delta p| of ``other`` against the given box's probabilities."""
    return {"agreement": round(float(np.mean((given >= 0.5) == (other >= 0.5))), 4),
            "mean_abs_dp": round(float(np.mean(np.abs(given - other))), 4),
            "max_abs_dp": round(float(np.max(np.abs(given - other))), 4)}


def measure(model_dir: Path, slices, images_dir: Path) -> dict:
    predictor = predict.Predictor(model_dir, cams=False)
    probs, warned, ious = {}, {}, []
    for row in slices:
        path = images_dir / row.fname
        for way, box in boxes_of(row, path).items():
            result = predictor.score(path, box)
            probs.setdefault(way, []).append(result["prob"])
            warned[way] = warned.get(way, 0) + bool(result["warnings"])
            if way == "auto":
                ious.append(bodybox.box_iou((row.xmin, row.ymin, row.xmax, row.ymax), result["box"]))
    probs = {way: np.array(p) for way, p in probs.items()}
    return {"model": predictor.name, "slices": len(slices),
            **{way: compare(probs["given"], probs[way]) for way in ("auto", "wider", "whole")},
            "iou_mean": round(float(np.mean(ious)), 4), "iou_min": round(float(np.min(ious)), 4), "warned": warned}


def throughput(model_dir: Path, paths, out_dir: Path) -> dict:
    started = time.perf_counter()
    predictor = predict.Predictor(model_dir, out_dir)
    loaded = time.perf_counter()
    rates = {"load_s": round(loaded - started, 2)}
    for cams in (False, True):
        predictor.cams = cams
        start = time.perf_counter()
        for path in paths:
            predictor.score(path)
        rates["images_per_s_cam" if cams else "images_per_s_no_cam"] = round(len(paths) / (time.perf_counter() - start), 2)
    return rates


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[str(ROOT / "models")])
    parser.add_argument("--raw", default=str(ROOT / "data/raw"), help="the split files")
    parser.add_argument("--images", default=str(ROOT / "data/sample"), help="the images root")
    parser.add_argument("--crops", default=str(ROOT / "data/crops"), help="the crop store the models were trained on")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N test slices")
    parser.add_argument("--timed", type=int, default=40, help="slices to time scoring on")
    parser.add_argument("--out", default=str(ROOT / "bench/results/predict-boxes.json"))
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # the machine is shared; one thread gives steadier timings
    slices = [r for r in read_split_file(Path(args.raw) / split_filename("test"), "test") if r.cls != 1]
    slices = slices[:args.limit] if args.limit else slices
    images_dir = Path(args.images) / IMAGES_DIR
    reference = inputstats.from_store(CropStore(args.crops))
    report = {"slices": len(slices), "torch_threads": 1, "models": []}
    with tempfile.TemporaryDirectory() as scratch:
        dirs = [with_reference(d, reference, Path(scratch)) for d in model_dirs(args.models)]
        report["throughput"] = {"model": dirs[0].name, "slices": args.timed,
                                **throughput(dirs[0], [images_dir / r.fname for r in slices[:args.timed]],
                                             Path(scratch) / "overlays")}
        print(report["throughput"], flush=True)
        for model_dir in dirs:
            report["models"].append(measure(model_dir, slices, images_dir))
            print(report["models"][-1], flush=True)
    atomic_write_json(args.out, report)
    print_table(report)
    return report


def print_table(report: dict) -> None:
    print("| model | auto vs given: agreement at 0.5, mean (max) abs dp | given box 2 px wider: same | "
          "uncropped: same | IoU mean (min) | warned given / auto / uncropped |")
    print("|---|---|---|---|---|---|")
    for m in report["models"]:
        cells = [f"{m[w]['agreement']:.1%}, {m[w]['mean_abs_dp']:.3f} ({m[w]['max_abs_dp']:.3f})"
                 for w in ("auto", "wider", "whole")]
        warned = " / ".join(str(m["warned"][w]) for w in ("given", "auto", "whole"))
        print(f"| {m['model']} | {' | '.join(cells)} | {m['iou_mean']:.3f} ({m['iou_min']:.3f}) | {warned} |")


if __name__ == "__main__":
    main()
