"""Downloaded archives: members that would land outside the target folder are refused, with their name."""

import io
import stat
import tarfile
import zipfile

import pytest

from covidct.archive import kagglehub_extracts_safely, safe_extract
from covidct.errors import DataError


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            z.writestr(info, data)
    return path


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as t:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = b"ok"
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            else:
                info.type, info.linkname = (tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE), target
                t.addfile(info)
    return path


def test_good_archives_extract(tmp_path):
    safe_extract(make_zip(tmp_path / "a.zip", [("3A_images/x.png", b"png", None)]), tmp_path / "z")
    assert (tmp_path / "z/3A_images/x.png").read_bytes() == b"png"
    safe_extract(make_tar(tmp_path / "a.tar.gz", [("3A_images/y.png", "file", None)]), tmp_path / "t")
    assert (tmp_path / "t/3A_images/y.png").read_bytes() == b"ok"


@pytest.mark.parametrize("name, mode, message", [
    ("../evil.txt", None, "would be written outside"),
    ("3A_images/../../evil.txt", None, "would be written outside"),
    ("/tmp/covidct-evil-abs.txt", None, "would be written outside"),
    ("3A_images/link.png", stat.S_IFLNK | 0o777, "is a symbolic link"),
])
def test_zip_members_escaping_the_folder_are_refused_and_nothing_is_extracted(tmp_path, name, mode, message):
    archive = make_zip(tmp_path / "bad.zip", [("3A_images/ok.png", b"png", None), (name, b"/etc/passwd", mode)])
    with pytest.raises(DataError, match=rf"bad.zip: member '{name}' {message}"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("member", [("../evil.txt", "file", None), ("/tmp/covidct-evil-abs.txt", "file", None),
                                    ("3A_images/link", "symlink", "/etc/passwd"),
                                    ("3A_images/up", "symlink", "../../outside")])
def test_tar_members_escaping_the_folder_are_refused_and_nothing_is_extracted(tmp_path, member):
    archive = make_tar(tmp_path / "bad.tar.gz", [("3A_images/ok.png", "file", None), member])
    with pytest.raises(DataError, match=rf"bad.tar.gz: member '{member[0]}' refused"):
        safe_extract(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_a_truncated_download_is_named(tmp_path):
    (tmp_path / "partial.zip").write_bytes(b"PK\x03\x04 not finished")
    with pytest.raises(DataError, match="neither a tar nor a zip archive"):
        safe_extract(tmp_path / "partial.zip", tmp_path / "out")


def test_kagglehub_extracts_through_safe_extract_while_downloading(tmp_path):
    from kagglehub import http_resolver

    original = http_resolver._extract_archive
    archive = make_zip(tmp_path / "bad.zip", [("../evil.txt", b"x", None)])
    with kagglehub_extracts_safely():
        with pytest.raises(DataError, match="would be written outside"):
            http_resolver._extract_archive(str(archive), str(tmp_path / "out"))
    assert http_resolver._extract_archive is original
