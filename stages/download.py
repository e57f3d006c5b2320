"""download stage: the sample (generated), a local copy, or a pinned Kaggle version -> data/raw."""

from covidct import cli, params, rawdata
from covidct.atomic import atomic_dir

OUT = "data/raw"


def main() -> None:
    p = params.load()
    with atomic_dir(OUT) as tmp:
        info = rawdata.prepare(p["data"], p["sample"], tmp, progress=cli.show_progress())
    slices = {split: f["slices"] for split, f in info["split_files"].items()}
    print(f"download: source={info['source']} slices per split {slices} -> {OUT}")


if __name__ == "__main__":
    cli.run(main)
