"""An output edited in place (even by root, whom read-only bits do not stop) can never change DVC's cache:
`dvc status` names it, `dvc checkout --force` brings the original bytes back, and a push sends the original."""

import hashlib
import os

import pytest
from conftest import dvc, make_project, stale

TARGET = "train@resnet18-logreg"
DAMAGED = ["models/resnet18-logreg/head.safetensors", "data/features/resnet18/train.parquet"]


def one_model(p):
    p["sample"].update(image_size=96, patients={"train": 4, "val": 2, "test": 2}, slices_per_patient=[2, 2],
                       class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5})
    p["crop"].update(image_size=32, workers=1)
    p["backbones"] = {"resnet18": {**p["backbones"]["resnet18"], "image_size": 32}}
    p["heads"] = {"logreg": p["heads"]["logreg"]}
    p["finetune"]["runs"] = {}


@pytest.mark.slow
def test_truncated_outputs_are_seen_restored_and_never_pushed(tmp_path):
    project = make_project(tmp_path / "project", one_model)
    dvc(project, "repro", TARGET)
    original = {path: (project / path).read_bytes() for path in DAMAGED}
    assert stale(project, "--with-deps", TARGET) == {}

    for path in DAMAGED:
        os.truncate(project / path, 100)
    changed = stale(project, "--with-deps", TARGET)
    assert set(changed) == {"extract@resnet18", TARGET}, changed
    report = str(changed)
    assert "data/features/resnet18" in report and "models/resnet18-logreg" in report and "modified" in report

    for path, data in original.items():  # the cache object behind each file still holds the original bytes
        md5 = hashlib.md5(data).hexdigest()
        assert (project / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_bytes() == data, path

    dvc(project, "checkout", "--force", "--with-deps", TARGET)
    assert {path: (project / path).read_bytes() for path in DAMAGED} == original
    assert stale(project, "--with-deps", TARGET) == {}

    for path in DAMAGED:  # damaged again, then pushed: the remote still gets the original objects
        os.truncate(project / path, 100)
    dvc(project, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    dvc(project, "push", "--with-deps", TARGET)
    for path, data in original.items():
        md5 = hashlib.md5(data).hexdigest()
        assert (tmp_path / "remote/files/md5" / md5[:2] / md5[2:]).read_bytes() == data, path
    truncated = {hashlib.md5(data[:100]).hexdigest() for data in original.values()}
    pushed = {p.parent.name + p.name for p in (tmp_path / "remote/files/md5").rglob("*") if p.is_file()}
    assert not truncated & pushed, "a damaged file reached the remote"
