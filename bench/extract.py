"""Extraction throughput: model-only ceiling vs the extract stage end to end vs a seed-style loop.

    python -m bench.extract --slices 20000 --backbones vgg16,vit_b16     # GPU: native sizes, bf16 + compile
    python -m bench.extract --slices 2000 --image-size 64 --device cpu   # CPU: small inputs, fp32

One process, one run, the same data for the three:
- ceiling: the backbone alone on a ready batch already on the device (random weights; bf16 autocast,
  channels-last and torch.compile on CUDA, as extract uses them), no I/O;
- extract: ``covidct.features.extract`` from the crop store to Parquet files on disk (the stage's code path,
  with the compiled model warmed up beforehand: compiling is reported on its own line);
- baseline: the reference studies' loop: PIL decode + bbox crop + resize per PNG in a DataLoader
  (one worker per core), fp32, batch 32, features collected and written at the end.
Also the crop stage's rate (decode + crop + resize into the store), per core. Prints a Markdown table and
writes everything to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from bench.data import build_crop_store, make_raw
from covidct import features
from covidct.backbones import REGISTRY, create_backbone, get_spec
from covidct.classifier import resolve_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ceiling(engine: features.Engine, batch_size: int, batches: int) -> float:
    size = engine.image_size
    x = engine.model_input(torch.randint(0, 256, (batch_size, size, size), dtype=torch.uint8, device=engine.device))
    for _ in range(3):
        engine.forward(x)
    sync(engine.device)
    start = time.perf_counter()
    for _ in range(batches):
        engine.forward(x)
    sync(engine.device)
    return batches * batch_size / (time.perf_counter() - start)


def time_extract(engine: features.Engine, store: Path, out: Path, backbone: str, batch_size: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stats = features.extract(store, out, backbone, "none", engine.image_size, batch_size=batch_size,
                             device=str(engine.device), progress=False, engine=engine)
    seconds = time.perf_counter() - start
    return sum(s["images"] for s in stats.values()) / seconds


class SeedStyleSlices(torch.utils.data.Dataset):
    """One PNG per item: PIL decode, bbox crop, resize, to tensor, normalise (as the reference notebooks)."""

    def __init__(self, raw: Path, table, image_size: int, mean, std):
        from torchvision import transforms

        self.paths = [raw / "3A_images" / f for f in table["fname"]]
        self.boxes = table[["xmin", "ymin", "xmax", "ymax"]].to_numpy()
        self.transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                             transforms.Normalize(mean, std)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB").crop(tuple(int(v) for v in self.boxes[i]))
        return self.transform(image)


@torch.inference_mode()
def time_baseline(raw: Path, backbone: str, image_size: int, device: torch.device, workers: int, limit: int,
                  out: Path) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from covidct import crop

    table = crop.slice_table(raw)
    table = table[table["cls"] != 1].iloc[:limit]
    spec = get_spec(backbone)
    loader = torch.utils.data.DataLoader(SeedStyleSlices(raw, table, image_size, spec.mean, spec.std),
                                         batch_size=32, num_workers=workers, pin_memory=device.type == "cuda")
    model = create_backbone(backbone, "none", image_size).to(device)
    start, feats = time.perf_counter(), []
    for x in loader:
        feats.append(model(x.to(device)).cpu().numpy())
    feats = np.concatenate(feats)
    pq.write_table(pa.table({"features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)),
                                                                           feats.shape[1])}), out)
    return len(table) / (time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=20000, help="dataset size (rows over the three splits)")
    parser.add_argument("--unique", type=int, default=512, help="distinct phantoms rendered; the rest are links")
    parser.add_argument("--backbones", default=",".join(REGISTRY), help="comma-separated subset")
    parser.add_argument("--image-size", type=int, help="model input side for every backbone (default: native)")
    parser.add_argument("--crop-size", type=int, help="crop store side (default: the largest input size)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile (default: on for CUDA)")
    parser.add_argument("--ceiling-batches", type=int, default=30)
    parser.add_argument("--baseline-slices", type=int, default=0, help="cap the baseline's slices (0 = all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="crop and baseline workers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/covidct-bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/extract.json"))
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    compile_ = device.type == "cuda" if args.compile is None else args.compile
    backbones = args.backbones.split(",")
    sizes = {b: args.image_size or get_spec(b).native_size for b in backbones}
    crop_size = args.crop_size or max(sizes.values())
    torch.set_num_threads(os.cpu_count() or 1)

    raw = make_raw(args.work / f"raw-{args.slices}", args.slices, args.unique)
    store = args.work / f"crops-{args.slices}-{crop_size}"
    cropped = build_crop_store(raw, store, crop_size, workers=args.workers)
    crop_rate = cropped["images"] / cropped["seconds"]
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "slices": cropped["images"], "crop_size": crop_size, "batch_size": args.batch_size, "compile": compile_,
        "crop": {"images_per_s": round(crop_rate, 1), "workers": cropped["workers"],
                 "images_per_s_per_core": round(crop_rate / cropped["workers"], 1)},
        "backbones": {},
    }
    print(f"crop: {cropped['images']} slices at {crop_size} px in {cropped['seconds']:.1f} s = {crop_rate:.0f} img/s "
          f"with {cropped['workers']} workers ({crop_rate / cropped['workers']:.0f} img/s per core)", flush=True)
    for backbone in backbones:
        start = time.perf_counter()
        engine = features.Engine(backbone, "none", sizes[backbone], str(device), compile=compile_,
                                 batch_size=args.batch_size)
        ceiling = time_ceiling(engine, args.batch_size, args.ceiling_batches)
        warmup = time.perf_counter() - start
        extract = time_extract(engine, store, args.work / f"features-{backbone}", backbone, args.batch_size)
        del engine
        baseline = time_baseline(raw, backbone, sizes[backbone], device, args.workers,
                                 args.baseline_slices or cropped["images"], args.work / f"baseline-{backbone}.parquet")
        row = {"image_size": sizes[backbone], "ceiling": round(ceiling, 1), "extract": round(extract, 1),
               "baseline": round(baseline, 1), "extract_vs_ceiling": round(extract / ceiling, 3),
               "extract_vs_baseline": round(extract / baseline, 2), "build_and_warmup_s": round(warmup, 1)}
        report["backbones"][backbone] = row
        print(f"{backbone}: {json.dumps(row)}", flush=True)
    print()
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def markdown(report: dict) -> str:
    lines = [f"{report['device']}, {report['cpu_cores']} cores, torch {report['torch']}; {report['slices']} slices, "
             f"crop store {report['crop_size']} px, batch {report['batch_size']}, compile {report['compile']}",
             "",
             "| backbone | input | ceiling img/s | extract img/s | seed-style img/s | extract / ceiling | extract / seed-style |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["backbones"].items():
        lines.append(f"| {name} | {r['image_size']} | {r['ceiling']:,.0f} | {r['extract']:,.0f} | {r['baseline']:,.0f} "
                     f"| {r['extract_vs_ceiling']:.2f} | {r['extract_vs_baseline']:.1f}x |")
    c = report["crop"]
    lines += ["", f"crop stage: {c['images_per_s']:,.0f} img/s with {c['workers']} workers "
                  f"({c['images_per_s_per_core']:,.0f} img/s per core)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
