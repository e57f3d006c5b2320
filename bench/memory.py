"""Peak resident memory of the crop and extract stages at growing dataset sizes: it must stay flat.

    python -m bench.memory --sizes 10000,40000 --device cuda --image-size 224   # GPU box
    python -m bench.memory --sizes 2500,10000 --device cpu --image-size 64      # 2-core laptop

Each stage runs in a fresh process that reports its own peak RSS (``ru_maxrss``) and that of its largest
child (crop's decode workers), so nothing of the parent or an earlier run is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from bench.data import build_crop_store, make_raw


def peak_rss_mb() -> dict:
    return {"process_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_child_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def child(args) -> None:
    if args.child == "crop":
        done = build_crop_store(args.raw, args.store, args.crop_size, workers=args.workers)
    else:
        from covidct import features

        args.features.mkdir(parents=True, exist_ok=True)
        stats = features.extract(args.store, args.features, args.backbone, "none", args.image_size,
                                 batch_size=args.batch_size, device=args.device, progress=False)
        done = {"images": sum(s["images"] for s in stats.values())}
    rss = peak_rss_mb()
    if args.child == "extract":
        rss.pop("largest_child_mb")  # only torch's ldconfig probe at import: not extraction's memory
    print(json.dumps({**done, **rss}))


def measure(stage: str, args, raw: Path, store: Path, features_dir: Path) -> dict:
    command = [sys.executable, "-m", "bench.memory", "--child", stage, "--raw", str(raw), "--store", str(store),
               "--features", str(features_dir), "--crop-size", str(args.crop_size), "--image-size", str(args.image_size),
               "--backbone", args.backbone, "--batch-size", str(args.batch_size), "--device", args.device,
               "--workers", str(args.workers)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2500,10000", help="dataset sizes (slices), comma-separated")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path("/tmp/covidct-bench"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory.json"))
    parser.add_argument("--child", choices=("crop", "extract"), help=argparse.SUPPRESS)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--features", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    rows = []
    for slices in (int(s) for s in args.sizes.split(",")):
        raw = make_raw(args.work / f"raw-{slices}", slices)
        store, features_dir = args.work / f"mem-crops-{slices}", args.work / f"mem-features-{slices}"
        crop = measure("crop", args, raw, store, features_dir)
        extract = measure("extract", args, raw, store, features_dir)
        rows.append({"slices": crop["images"], "crop": crop, "extract": extract})
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(f"{args.backbone} at {args.image_size} px on {args.device}, crop store {args.crop_size} px, "
          f"batch {args.batch_size}, {args.workers} crop workers")
    print()
    print("| slices | crop: main process | crop: largest worker | extract |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['slices']:,} | {r['crop']['process_mb']:,.0f} MB | {r['crop']['largest_child_mb']:,.0f} MB "
              f"| {r['extract']['process_mb']:,.0f} MB |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
