"""Disk cost of the DVC cache setting (``cache.type``) on the largest output, the crop store, at the full study's
crop size: a store of ``--slices`` slices is built with the crop stage's code, tracked by DVC in a scratch
repository with this project's .dvc/config, and the bytes in the workspace and in the cache are counted by
allocated blocks (``du``), so a hard link that shares blocks is not counted twice.

    python -m bench.cache_cost --slices 20000 --crop-size 384

The per-slice cost is exact (a store is ``size * size`` bytes a slice plus an index row), so the figure scales to
the full study's 382k slices linearly; results go to bench/results/cache-cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.data import build_crop_store, make_raw
from covidct.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
FULL_STUDY_SLICES = 382_000


def allocated_bytes(path: Path) -> int:
    """Bytes of disk blocks allocated under ``path``; blocks shared by hard links are counted once."""
    return int(subprocess.run(["du", "-s", "-B1", str(path)], check=True, capture_output=True,
                              text=True).stdout.split()[0])


def filesystem(path: Path) -> str:
    return subprocess.run(["df", "--output=fstype", str(path)], check=True, capture_output=True,
                          text=True).stdout.split()[-1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=20_000)
    parser.add_argument("--crop-size", type=int, default=384)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "covidct-bench-cache"))
    parser.add_argument("--cache-type", help="instead of the project's, e.g. hardlink, for comparison")
    parser.add_argument("--out", default="bench/results/cache-cost.json")
    args = parser.parse_args(argv)

    work = Path(args.work)
    raw = make_raw(work / "raw", args.slices, unique=256, image_size=512)
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True, env=env)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")
    if args.cache_type:
        subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type", args.cache_type], cwd=repo, check=True,
                       env=env)
    store = build_crop_store(raw, repo / "crops", args.crop_size)
    workspace = allocated_bytes(repo / "crops")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "crops"], cwd=repo, check=True, env=env)
    cache_type = subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type"], cwd=repo, check=True,
                                capture_output=True, text=True, env=env).stdout.strip()
    # One du over both folders counts the blocks of a hard-linked file once (a reflink's shared blocks it cannot see:
    # on XFS or Btrfs the extra is ~0 whatever this says).
    total = int(subprocess.run(["du", "-s", "-c", "-B1", str(repo / "crops"), str(repo / ".dvc/cache")], check=True,
                               capture_output=True, text=True).stdout.split()[-2])
    per_slice = workspace / store["images"]
    result = {"slices": store["images"], "crop_size": args.crop_size, "cache_type": cache_type,
              "filesystem": filesystem(repo), "store_bytes": workspace,
              "workspace_plus_cache_bytes": total,
              "extra_bytes_for_the_cache": total - workspace,
              "store_bytes_per_slice": round(per_slice),
              "full_study_store_gb": round(per_slice * FULL_STUDY_SLICES / 1e9, 1),
              "full_study_extra_gb": round((total - workspace) / store["images"] * FULL_STUDY_SLICES / 1e9, 1)}
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)
    shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
