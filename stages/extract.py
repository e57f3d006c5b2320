"""extract stage, one per backbone: crop store -> data/features/<backbone>/{train,val,test}.parquet."""

import sys

from covidct import cli, features, params
from covidct.atomic import atomic_dir

STORE = "data/crops"


def main(backbone: str) -> None:
    p = params.load()
    if backbone not in p["backbones"]:
        raise params.ParamsError(f"no backbones.{backbone} in params.yaml; configured: {sorted(p['backbones'])}")
    b, e = p["backbones"][backbone], p["extract"]
    out = f"data/features/{backbone}"
    with atomic_dir(out) as tmp:
        stats = features.extract(STORE, tmp, backbone, b["weights"], b["image_size"],
                                 batch_size=b.get("batch_size", e["batch_size"]), device=e["device"],
                                 seed=b.get("seed", 0), num_threads=e["num_threads"], progress=cli.show_progress())
    for split, s in stats.items():
        print(f"extract {backbone}: {split} {s['images']} images in {s['seconds']}s ({s['images_per_s']} img/s)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.extract <backbone>")
    cli.run(main, sys.argv[1])
