"""data.source=local: DVC sees every change to the user's own images and split files, and nothing else.

The images live outside the repository, where DVC cannot hash them cheaply; the download stage (always_changed)
stats them on every `dvc repro` and writes a fingerprint into data/raw/dataset.json, so crop reruns exactly when a
split file or an image's size, bytes or mtime changed."""

import json
import os
import shutil

import pytest
from conftest import dvc, make_project, stages_run

SETUP = {"sample", "download", "crop"}


def local_project(tmp_path, root):
    def edit(p):
        p["data"].update(source="local", local_root=str(root))
        p["crop"].update(image_size=32, workers=1, max_skipped_fraction=0.5)

    return make_project(tmp_path / "project", edit)


def skipped(project) -> int:
    return json.loads((project / "metrics/data_quality/crop.json").read_text())["skipped"]


def kept(project) -> int:
    return json.loads((project / "data/crops/meta.json").read_text())["slices"]


@pytest.mark.slow
def test_any_change_under_the_data_root_reruns_crop_and_nothing_else_does(tiny_sample, tmp_path):
    root = tmp_path / "covidx"
    shutil.copytree(tiny_sample, root)
    first = (root / "train_COVIDx_CT-3A.txt").read_text().split()[0]
    good = (root / "3A_images" / first).read_bytes()
    (root / "3A_images" / first).write_bytes(b"not a png")  # unusable: skipped and counted
    project = local_project(tmp_path, root)

    assert stages_run(dvc(project, "repro", "crop")) == SETUP
    assert skipped(project) == 1
    before = kept(project)
    fingerprint = json.loads((project / "data/raw/dataset.json").read_text())["images"]
    assert fingerprint["files"] == len(os.listdir(root / "3A_images")) and len(fingerprint["sha256"]) == 64
    assert stages_run(dvc(project, "repro", "crop")) == {"download"}, "unchanged data must not rerun crop"

    (root / "3A_images" / first).write_bytes(good)  # the corrupt slice replaced by a good one
    assert stages_run(dvc(project, "repro", "crop")) == {"download", "crop"}
    assert skipped(project) == 0 and kept(project) == before + 1

    val = root / "val_COVIDx_CT-3A.txt"
    lines = val.read_text().splitlines(keepends=True)
    val.write_text("".join(lines[:-1]))  # one line deleted from a split file
    assert stages_run(dvc(project, "repro", "crop")) == {"download", "crop"}
    dataset = json.loads((project / "data/raw/dataset.json").read_text())
    assert dataset["split_files"]["val"]["slices"] == len([line for line in lines if line.strip()]) - 1

    image = root / "3A_images" / first
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    assert stages_run(dvc(project, "repro", "crop")) == {"download", "crop"}

    (root / "3A_images" / "stray.png").write_bytes(good)  # a new file under the images folder
    assert stages_run(dvc(project, "repro", "crop")) == {"download", "crop"}
    assert stages_run(dvc(project, "repro", "crop")) == {"download"}
