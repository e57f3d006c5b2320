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


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale_dir = tmp_path / f".tmp-out.{pid}.abc123"
    stale_dir.mkdir()
    (stale_dir / "shard-00000.npy").write_bytes(b"x" * 100)
    live = tmp_path / f".tmp-out.{os.getpid()}.def456"  # ours, still running: kept
    live.mkdir()
    stale_file = tmp_path / f".tmp-a.txt.{pid}.xyz"
    stale_file.write_text("half")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("1")
    atomic_write_text(tmp_path / "a.txt", "new")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists()
