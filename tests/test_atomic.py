"""Atomic outputs: all or nothing, and with the permissions a plain write would have given."""

import os
import stat

import pytest

from covidct.atomic import atomic_dir, atomic_path, atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_umask_permissions_not_the_private_temporary_ones(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "b.txt").write_text("y")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == 0o644
    assert mode(tmp_path / "out") == 0o755


def test_a_failure_leaves_the_old_output_and_no_temporaries(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f").write_text("2")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old" and (tmp_path / "out/f").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "out"]
