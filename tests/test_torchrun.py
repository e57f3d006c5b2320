"""Extraction under torchrun: 2 CPU processes (gloo) give the rows and features of 1 process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import build_store

from covidct import featurefile, features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tiny_sample, tmp_path_factory):
    work = tmp_path_factory.mktemp("torchrun")
    build_store(tiny_sample, work / "data/crops", size=40, shard_size=7, balance="none")
    return work


def run_stage(work: Path, processes: int) -> subprocess.CompletedProcess:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["extract"].update(device="cpu", batch_size=4, num_threads=1, processes=processes)
    params["backbones"]["resnet18"].update(weights="none", image_size=32)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "stages.extract", "resnet18", "--store", "data/crops",
                             "--out", "data/features/resnet18"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_two_processes_give_the_rows_and_features_of_one(project):
    run_stage(project, 1)
    single = project / "single"
    shutil.move(project / "data/features/resnet18", single)
    result = run_stage(project, 2)
    assert "torch.distributed.run" in result.stdout and "rank 1 of 2" in result.stdout
    out = project / "data/features/resnet18"
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet", "train.parquet", "val.parquet"]
    assert not [p for p in project.joinpath("data/features").iterdir() if p.name.startswith(".tmp-")]
    for split in ("train", "val", "test"):
        rows_1, x_1, meta_1 = featurefile.read_features(single / f"{split}.parquet")
        rows_2, x_2, meta_2 = featurefile.read_features(out / f"{split}.parquet")
        assert len(rows_1) >= 4 and rows_1.equals(rows_2)  # same rows, same order
        np.testing.assert_allclose(x_2, x_1, rtol=0, atol=1e-5)
        assert meta_1 == meta_2
        assert pq.read_schema(out / f"{split}.parquet") == pq.read_schema(single / f"{split}.parquet")


def test_shares_are_contiguous_cover_everything_once():
    for n in (0, 1, 5, 17):
        for world in (1, 2, 3, 8):
            bounds = [features.shard_bounds(n, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(b - a for a, b in bounds) - min(b - a for a, b in bounds) <= 1
