"""crop stage: split files -> labels, balance -> decoded, bbox-cropped, resized uint8 store.

Unusable slices (missing, empty, corrupt or truncated files; an image too large to decode in
crop.DECODE_BUDGET; a bbox that is inverted, empty or outside the image) are skipped, counted in --summary and listed in --skipped; more than crop.max_skipped_fraction of them
stops the stage.
"""

import argparse
import time
from pathlib import Path

from covidct import cli, crop, layout, params, quality
from covidct.atomic import atomic_dir


def main(raw: str, out: str, summary: str, skipped: str) -> None:
    c = params.load(crop=crop.check_params)["crop"]
    dataset = layout.read_dataset_info(raw)
    table = crop.slice_table(raw, dataset["variant"], root=dataset["root"])
    table, how = crop.with_sources(table, raw, c.get("source_rules"), root=dataset["root"])
    print("crop: slice sources: " + ", ".join(f"{n} from {way}" for way, n in how.items() if n) +
          f"; {table['source'].nunique()} sources: {', '.join(sorted(table['source'].unique()))}")
    table, info = crop.label_and_balance(table, c["classes"], c["balance"], c["seed"])
    allow = c.get("allow_missing_class", False)
    warned = crop.check_classes(info["counts"], info["label_names"], allow, f" with crop.classes={c['classes']!r}")
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        meta, unusable = crop.build_store(table, info, Path(dataset["root"]), tmp, c["image_size"], c["margin"],
                                          c["shard_size"], c["workers"], progress=cli.show_progress(),
                                          variant=dataset["variant"])
        # raises (and the store is discarded) if too many are unusable; the report is written either way
        quality.report("crop", len(table), unusable, c["max_skipped_fraction"], summary, skipped)
        # the skips may have taken a split's last slice of a class
        warned += crop.check_classes(meta["counts"], meta["label_names"], allow, " once unusable slices are skipped")
    for problem in dict.fromkeys(warned):
        print(f"crop: warning: {problem}; going on as crop.allow_missing_class is true")
    seconds = time.perf_counter() - start
    print(f"crop: {meta['slices']} slices at {c['image_size']}px in {seconds:.1f}s "
          f"({meta['slices'] / seconds:.0f} img/s); counts {meta['counts']} -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", required=True, help="the download stage's folder (split files, dataset.json)")
    parser.add_argument("--out", required=True, help="the crop store to (re)write")
    parser.add_argument("--summary", required=True, help="data-quality JSON: counts of skipped slices by reason")
    parser.add_argument("--skipped", required=True, help="data-quality CSV: one row per skipped slice")
    cli.run(main, **vars(parser.parse_args()))
