"""extract stage, one per backbone: crop store -> data/features/<backbone>/{train,val,test}.parquet.

``extract.processes`` > 1 reruns this module under torchrun (one rank per GPU); running it under torchrun
by hand works the same: ``torchrun --nproc-per-node 4 -m stages.extract vgg16``.
"""

import sys

from covidct import cli, distributed, params

STORE = "data/crops"


def main(backbone: str) -> None:
    p = params.load()
    if backbone not in p["backbones"]:
        raise params.ParamsError(f"no backbones.{backbone} in params.yaml; configured: {sorted(p['backbones'])}")
    b, e = p["backbones"][backbone], p["extract"]
    ranks = distributed.from_env()
    if e.get("processes", 1) > 1 and ranks.world_size == 1:
        sys.exit(distributed.relaunch(e["processes"], "stages.extract", backbone))
    stats = distributed.extract(
        STORE, f"data/features/{backbone}", ranks, backbone=backbone, weights=b["weights"],
        image_size=b["image_size"], batch_size=b.get("batch_size", e["batch_size"]), device=e["device"],
        seed=b.get("seed", 0), num_threads=e["num_threads"], precision=e.get("precision", "auto"),
        compile=e.get("compile", False), progress=cli.show_progress() and ranks.rank == 0)
    where = f" (rank {ranks.rank} of {ranks.world_size})" if ranks.world_size > 1 else ""
    for split, s in stats.items():
        print(f"extract {backbone}{where}: {split} {s['images']} images in {s['seconds']}s ({s['images_per_s']} img/s)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m stages.extract <backbone>")
    cli.run(main, sys.argv[1])
