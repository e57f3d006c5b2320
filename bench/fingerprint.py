"""How long the download stage's check of a local or Kaggle data root takes at full scale.

The stage runs on every `dvc repro` (always_changed): it stats every image under the data root for a fingerprint
and re-reads the three split files. This times that work, ``sources.prepare`` with ``data.source: local``, on a
data root of ``--files`` images (phantom slices hard-linked under new names, as ``bench.data`` makes them; a
stat costs the same for a link as for a file), with the file metadata in the page cache (a second run) and,
where the machine allows dropping caches (root), cold.

    python -m bench.fingerprint --files 425000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from bench.data import make_raw
from covidct import sources
from covidct.atomic import atomic_write_json
from covidct.layout import IMAGES_DIR


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def time_prepare(root: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            sources.prepare({"source": "local", "variant": "3A", "local_root": str(root)}, "unused", out)
            times.append(round(time.perf_counter() - start, 3))
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=425_000)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "covidct-bench-fingerprint"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/fingerprint.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    root = make_raw(Path(args.work), args.files, unique=64, image_size=64)
    print(f"data root with {args.files:,} images ready in {time.perf_counter() - start:.0f}s: {root}")
    files = len(os.listdir(root / IMAGES_DIR))
    cold = time_prepare(root, 1) if drop_caches() else None
    warm = time_prepare(root, args.repeats)
    start = time.perf_counter()
    sources.fingerprint(root / IMAGES_DIR)
    fingerprint_only = round(time.perf_counter() - start, 3)
    result = {"files": files, "cold_s": cold, "warm_s": warm, "fingerprint_only_warm_s": fingerprint_only,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "python": platform.python_version()}
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
