"""kill -9 in the middle of a stage's write, then `dvc repro`: the same outputs as an undisturbed run.

Runs the committed dvc.yaml (shrunk through params.yaml) in two copies of the project: one undisturbed, one
where the whole `dvc repro` process group is SIGKILLed while crop (then extract) is writing its output, i.e.
once the stage's temporary folder holds a first shard / an open Parquet file. The rerun must finish, give
byte-identical outputs (DVC's hashes in dvc.lock) and leave no temporaries behind.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import make_project

TARGET = "extract@resnet18"


def shrink(p: dict) -> None:
    p["sample"].update(image_size=96, patients={"train": 8, "val": 3, "test": 3}, slices_per_patient=[8, 8],
                       class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5})
    p["crop"].update(image_size=32, shard_size=4, workers=1)
    p["extract"]["batch_size"] = 2
    p["backbones"]["resnet18"]["image_size"] = 32


def env():
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "CI": "true"}


def repro(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", TARGET], cwd=path, env=env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def output_hashes(path: Path) -> dict:
    lock = yaml.safe_load((path / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in ("crop", TARGET) for out in lock[stage]["outs"]}


def kill_while_writing(path: Path, temporary_glob: str, inside: str) -> list[str]:
    """Starts `dvc repro`, SIGKILLs its process group once ``temporary_glob`` holds ``inside``; returns what it saw."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", TARGET], cwd=path, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            seen = [str(p.relative_to(path)) for p in path.glob(f"{temporary_glob}/{inside}")]
            if seen:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return seen
            if proc.poll() is not None:
                pytest.fail(f"dvc repro finished before {temporary_glob}/{inside} appeared")
            time.sleep(0.002)
        pytest.fail("timed out waiting for the stage to start writing")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_kill_9_mid_write_then_repro_gives_the_undisturbed_outputs(tmp_path):
    reference = make_project(tmp_path / "undisturbed", shrink)
    repro(reference)
    expected = output_hashes(reference)

    project = make_project(tmp_path / "killed", shrink)
    seen = kill_while_writing(project, "data/.tmp-crops.*", "shard-*.npy")
    assert seen and not (project / "data/crops").exists(), "killed mid-crop: no store yet, only its temporary"
    # The rerun redoes crop, then is killed itself while extract has its Parquet file open.
    seen = kill_while_writing(project, "data/features/.tmp-resnet18.*", "*.parquet")
    assert seen and not (project / "data/features/resnet18").exists(), "killed mid-extract"
    assert (project / "data/crops/index.parquet").is_file() and not list((project / "data").glob(".tmp-*")), \
        "crop finished on the rerun and removed the first kill's temporary"
    repro(project)
    assert output_hashes(project) == expected
    assert not list((project / "data/features").glob(".tmp-*")), "the last rerun removed extract's temporary"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", TARGET], cwd=project, env=env(),
                            capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
