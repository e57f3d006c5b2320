"""sample stage: synthetic chest-CT phantoms in the COVIDx CT layout (images, masks, split files), seeded.

With ``data.source`` other than ``sample`` it writes only a note, so the full study never spends time on it.
"""

import argparse

from covidct import cli, params, phantom
from covidct.atomic import atomic_dir


def main(out: str) -> None:
    p = params.load(sample=phantom.check_params)
    s, source = p["sample"], p.get("data", {}).get("source")
    with atomic_dir(out) as tmp:
        if source != "sample":
            (tmp / "README.txt").write_text(f"data.source is {source!r}: no sample generated.\n")
            print(f"sample: data.source={source!r}, nothing to generate -> {out}")
            return
        counts = phantom.generate(tmp, patients=s["patients"], class_fractions=s["class_fractions"],
                                  slices_per_patient=s["slices_per_patient"], image_size=s["image_size"],
                                  seed=s["seed"], progress=cli.show_progress(), sites=s.get("sites", 1),
                                  confounded=s.get("confounded", False))
    print(f"sample: {sum(sum(c.values()) for c in counts.values())} slices, per split {counts} -> {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to (re)write, e.g. data/sample")
    cli.run(main, **vars(parser.parse_args()))
