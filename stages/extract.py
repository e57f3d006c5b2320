"""extract stage, one per backbone: crop store -> <out>/{train,val,test}.parquet of frozen-backbone features.

``extract.processes`` > 1 reruns this module under torchrun (one rank per GPU); running it under torchrun
by hand works the same: ``torchrun --nproc-per-node 4 -m stages.extract vgg16 --store ... --out ...``.
"""

import argparse
import sys

from covidct import backbones, cli, distributed, features, params
from covidct.errors import ParamsError


def main(backbone: str, store: str, out: str) -> None:
    p = params.load(extract=features.check_params, backbones=backbones.check_params)
    if backbone not in p["backbones"]:
        raise ParamsError(f"no backbones.{backbone} in params.yaml; configured: {sorted(p['backbones'])}")
    b, e = p["backbones"][backbone], p["extract"]
    ranks = distributed.from_env()
    if e.get("processes", 1) > 1 and ranks.world_size == 1:
        sys.exit(distributed.relaunch(e["processes"], "stages.extract", *sys.argv[1:]))
    stats = distributed.extract(
        store, out, ranks, backbone=backbone, weights=b["weights"],
        image_size=b["image_size"], batch_size=b.get("batch_size", e["batch_size"]), device=e["device"],
        seed=b.get("seed", 0), num_threads=e["num_threads"], precision=e.get("precision", "auto"),
        compile=e.get("compile", False), progress=cli.show_progress() and ranks.rank == 0)
    where = f" (rank {ranks.rank} of {ranks.world_size})" if ranks.world_size > 1 else ""
    for split, s in stats.items():
        print(f"extract {backbone}{where}: {split} {s['images']} images in {s['seconds']}s ({s['images_per_s']} img/s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", help="an entry of backbones: in params.yaml")
    parser.add_argument("--store", required=True, help="the crop store")
    parser.add_argument("--out", required=True, help="folder to (re)write with the three Parquet files")
    cli.run(main, **vars(parser.parse_args()))
