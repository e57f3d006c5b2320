"""download stage: the images root of the configured source -> split-file copies + dataset.json.

``data.source``: ``sample`` (the sample stage's folder), ``local`` (``data.local_root``) or ``kaggle`` (the pinned
``data.kaggle_handle``, downloaded once into kagglehub's cache). The images stay where they are; dataset.json
records where, the split files' checksums and, outside DVC's reach, a stat fingerprint of every image, so that
DVC sees any change. The stage is ``always_changed``: it reruns on every ``dvc repro`` (seconds), and crop reruns
only when what it writes changed.
"""

import argparse

from covidct import cli, params, sources
from covidct.atomic import atomic_dir


def main(sample: str, out: str) -> None:
    p = params.load(data=sources.check_params)
    with atomic_dir(out) as tmp:
        info = sources.prepare(p["data"], sample, tmp)
    slices = {split: f["slices"] for split, f in info["split_files"].items()}
    images = info.get("images")
    seen = f"; {images['files']:,} image files fingerprinted" if images else ""
    print(f"download: source={info['source']} at {info['root']}, slices per split {slices}{seen} -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample", required=True, help="the sample stage's folder (used when data.source=sample)")
    parser.add_argument("--out", required=True, help="folder to (re)write: split files + dataset.json")
    cli.run(main, **vars(parser.parse_args()))
