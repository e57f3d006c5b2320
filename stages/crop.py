"""crop stage: split files -> labels, balance -> decoded, bbox-cropped, resized uint8 store in data/crops.

Unusable slices (missing, empty, corrupt or truncated files; a bbox that is inverted, empty or outside the
image) are skipped, counted and listed in metrics/data_quality/crop{.json,_skipped.csv}; more than
crop.max_skipped_fraction of them stops the stage.
"""

import time

from covidct import cli, crop, params, quality, rawdata
from covidct.atomic import atomic_dir

RAW, OUT = "data/raw", "data/crops"


def main() -> None:
    p = params.load()
    c, variant = p["crop"], p["data"].get("variant", "3A")
    table = crop.slice_table(RAW, variant)
    table, info = crop.label_and_balance(table, c["classes"], c["balance"], c["seed"])
    images_root = rawdata.resolve_images_root(RAW)
    start = time.perf_counter()
    with atomic_dir(OUT) as tmp:
        meta, skipped = crop.build_store(table, info, images_root, tmp, c["image_size"], c["margin"], c["shard_size"],
                                         c["workers"], progress=cli.show_progress(), variant=variant)
        quality.report("crop", len(table), skipped, c["max_skipped_fraction"])  # raises (store discarded) if too many
    seconds = time.perf_counter() - start
    print(f"crop: {meta['slices']} slices at {c['image_size']}px in {seconds:.1f}s "
          f"({meta['slices'] / seconds:.0f} img/s); counts {meta['counts']} -> {OUT}")


if __name__ == "__main__":
    cli.run(main)
