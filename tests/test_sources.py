"""The download stage's three sources, offline: kagglehub is fed through its own cache folder."""

import os
import shutil
from pathlib import Path

import pytest

from covidct import layout, sources
from covidct.errors import DataError

HANDLE = "hgunraj/covidxct/versions/5"


def copy_layout(src, dst):
    dst.mkdir(parents=True)
    for split in layout.SPLITS:
        shutil.copy(src / layout.split_filename(split), dst)
    shutil.copytree(src / "3A_images", dst / "3A_images")


@pytest.fixture
def kagglehub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kaggle/kaggle.json either
    return tmp_path / "kagglehub"


def test_kaggle_source_reads_kagglehubs_cache(tiny_sample, kagglehub_cache, tmp_path):
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_dataset_handle

    handle = parse_dataset_handle(HANDLE)
    # The real download extracts the archive here and leaves a completion marker; do the same by hand.
    copy_layout(tiny_sample, kagglehub_cache / "datasets" / "hgunraj" / "covidxct" / "versions" / "5")
    Cache().mark_as_complete(handle)

    out = tmp_path / "raw"
    out.mkdir()
    info = sources.prepare({"source": "kaggle", "variant": "3A", "kaggle_handle": HANDLE}, tmp_path / "no-sample", out)
    assert info["kaggle_handle"] == HANDLE
    assert info["split_files"]["train"]["sha256"] == sources.sha256_file(tiny_sample / "train_COVIDx_CT-3A.txt")
    assert not (out / "3A_images").exists()  # the images stay in kagglehub's cache: no second copy
    assert Path(info["root"]) == kagglehub_cache / "datasets/hgunraj/covidxct/versions/5"
    assert layout.read_dataset_info(out) == info


def test_kaggle_offline_without_credentials_says_what_to_set(kagglehub_cache, tmp_path):
    with pytest.raises(DataError) as err:
        sources.prepare({"source": "kaggle", "variant": "3A", "kaggle_handle": HANDLE}, tmp_path / "no-sample",
                        tmp_path)
    message = str(err.value)
    assert HANDLE in message and "KAGGLE_USERNAME" in message and "kaggle.json" in message
    assert "data.source=local" in message


def test_kaggle_handle_must_be_pinned(tmp_path):
    with pytest.raises(DataError, match="pin one"):
        sources.prepare({"source": "kaggle", "kaggle_handle": "hgunraj/covidxct"}, tmp_path / "no-sample", tmp_path)


def test_local_source_finds_the_split_files_one_level_down(tiny_sample, tmp_path):
    copy_layout(tiny_sample, tmp_path / "download" / "covidxct")
    out = tmp_path / "raw"
    out.mkdir()
    info = sources.prepare({"source": "local", "variant": "3A", "local_root": str(tmp_path / "download")},
                           tmp_path / "no-sample", out)
    assert info["split_files"]["test"]["slices"] == len(layout.read_split_file(out / "test_COVIDx_CT-3A.txt", "test"))
    assert Path(layout.read_dataset_info(out)["root"]) == tmp_path / "download" / "covidxct"


def test_sample_source_points_at_the_sample_folder_without_a_fingerprint(tiny_sample, tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    info = sources.prepare({"source": "sample", "variant": "3A"}, tiny_sample, out)
    assert Path(info["root"]) == tiny_sample and "images" not in info  # DVC tracks the sample's images itself
    assert not (out / "3A_images").exists()
    for split in layout.SPLITS:
        name = layout.split_filename(split)
        assert (out / name).read_bytes() == (tiny_sample / name).read_bytes()
        assert info["split_files"][split]["sha256"] == sources.sha256_file(tiny_sample / name)
    assert layout.read_dataset_info(out) == info


def test_local_images_get_a_fingerprint_that_any_change_alters(tiny_sample, tmp_path):
    copy_layout(tiny_sample, tmp_path / "download")
    data = {"source": "local", "variant": "3A", "local_root": str(tmp_path / "download")}
    (tmp_path / "a").mkdir()
    first = sources.prepare(data, tmp_path / "no-sample", tmp_path / "a")["images"]
    images = sorted((tmp_path / "download/3A_images").iterdir())
    assert first["files"] == len(images) and first["bytes"] == sum(p.stat().st_size for p in images)
    (tmp_path / "b").mkdir()
    assert sources.prepare(data, tmp_path / "no-sample", tmp_path / "b") == sources.prepare(
        data, tmp_path / "no-sample", tmp_path / "a"), "unchanged images: the same dataset.json"
    assert (tmp_path / "a/dataset.json").read_bytes() == (tmp_path / "b/dataset.json").read_bytes()
    stat = images[0].stat()
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: same bytes, new mtime
    touched = sources.fingerprint(tmp_path / "download/3A_images")
    assert touched["files"] == first["files"] and touched["sha256"] != first["sha256"]
    images[1].unlink()
    assert sources.fingerprint(tmp_path / "download/3A_images")["files"] == first["files"] - 1


def test_local_source_without_split_files_lists_what_it_found(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train_COVIDx_CT-2A.txt").write_text("")
    with pytest.raises(DataError, match=r"no train_COVIDx_CT-3A.txt.*train_COVIDx_CT-2A.txt.*data.variant"):
        sources.prepare({"source": "local", "variant": "3A", "local_root": str(tmp_path / "d")}, tmp_path / "no-sample",
                        tmp_path)


def test_credentials_never_reach_output_or_files(kagglehub_cache, tmp_path):
    """Offline with a token set: the stage fails with advice, and the key is nowhere in what it printed or wrote."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    secret = "s3cr3t-kaggle-key-0042"
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["data"]["source"] = "kaggle"
    (tmp_path / "project").mkdir()
    (tmp_path / "project/params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "PYTHONPATH": str(root), "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": secret, "CI": "true"}
    result = subprocess.run([sys.executable, "-m", "stages.download", "--sample", "data/sample", "--out", "data/raw"],
                            cwd=tmp_path / "project", env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: Could not download Kaggle dataset")
    assert secret not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):  # the project, kagglehub's cache and HOME
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
