"""Machine faults (issue 15): a killed decode worker, a full disk, a dead parent process.

Each stops the stage with one ``error:`` line (or, for a dead parent, stops it silently) and leaves no output
and no temporaries, instead of hanging, dying of SIGBUS or overwriting the next run's output.
"""

import errno
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import png_header_only

from covidct import atomic, cli, crop, images, sources, store
from covidct.atomic import _alive, atomic_dir, atomic_path, atomic_write_json
from covidct.errors import ResourceError

ROOT = Path(__file__).resolve().parents[1]
fork_only = pytest.mark.skipif(multiprocessing.get_start_method() != "fork",
                               reason="the test patches the workers' code, which they inherit by fork")


def sample_table(tiny_sample):
    return crop.label_and_balance(crop.slice_table(tiny_sample), "binary", "none", seed=0)


# --- a killed decode worker ---------------------------------------------------------------------------------------

@fork_only
def test_a_killed_decode_worker_fails_crop_within_seconds_naming_the_slice(tiny_sample, tmp_path, monkeypatch):
    table, info = sample_table(tiny_sample)
    victim = table.iloc[len(table) // 2]
    pid_file = tmp_path / "victim.pid"
    original = crop.load_crop

    def load_crop(path, *args):  # the victim's decode takes long enough to be killed in the middle of it
        if Path(path).name == victim.fname:
            pid_file.write_text(str(os.getpid()))
            time.sleep(60)
        return original(path, *args)

    monkeypatch.setattr(crop, "load_crop", load_crop)
    killed_at = []

    def oom_killer():
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        killed_at.append(time.monotonic())
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    threading.Thread(target=oom_killer, daemon=True).start()
    import faulthandler
    faulthandler.dump_traceback_later(120, exit=True)  # the old code hung here forever
    try:
        with pytest.raises(ResourceError) as failed:
            crop.build_store(table, info, tiny_sample, tmp_path / "store", size=16, margin=0.0, shard_size=8,
                             workers=2, progress=False)
    finally:
        faulthandler.cancel_dump_traceback_later()
    seconds = time.monotonic() - killed_at[0]
    message = str(failed.value)
    where = f"{victim.split}_COVIDx_CT-3A.txt:{victim.line}"
    assert f"was killed by SIGKILL while decoding {where}: " in message, message
    assert message.count(victim.fname) == 1 and "crop.workers" in message
    assert seconds < 5, f"took {seconds:.1f}s to notice the dead worker"
    assert not multiprocessing.active_children(), "the other decode workers are stopped too"


def test_a_slice_too_large_to_decode_is_skipped_from_its_header_before_decoding(tiny_sample, tmp_path):
    # Just under Pillow's pixel limit, 16-bit: ~1.1 GiB to decode (the 344 KB PNG of issue 15), and over twice it.
    bomb = png_header_only(tmp_path / "bomb.png", 9400, 9400)
    with pytest.raises(images.Unusable) as skipped:
        images.read_image(bomb, max_bytes=crop.DECODE_BUDGET)
    assert skipped.value.reason == "too_large" and "9400x9400 I;16 image needs ~1,095 MiB" in skipped.value.detail
    with pytest.raises(images.Unusable) as skipped:
        images.read_image(png_header_only(tmp_path / "huge.png", 20000, 20000))
    assert skipped.value.reason == "too_large"

    images_root = tmp_path / "root"
    (images_root / "3A_images").mkdir(parents=True)
    table, info = sample_table(tiny_sample)
    for fname in table["fname"]:
        os.link(tiny_sample / "3A_images" / fname, images_root / "3A_images" / fname)
    victim = table.iloc[1]
    (images_root / "3A_images" / victim.fname).unlink()
    png_header_only(images_root / "3A_images" / victim.fname, 9400, 9400)
    meta, skipped = crop.build_store(table, info, images_root, tmp_path / "store", size=16, margin=0.0,
                                     shard_size=8, workers=1, progress=False)
    assert [(s["fname"], s["reason"]) for s in skipped] == [(victim.fname, "too_large")]
    assert meta["slices"] == len(table) - 1


def test_sixteen_bit_conversion_is_exact_in_integers():
    import numpy as np
    from PIL import Image

    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    expected = np.clip(values / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)  # the float64 formula it replaced
    assert np.array_equal(np.asarray(images.to_gray8(Image.fromarray(values))), expected)


def test_the_number_of_decode_workers_fits_in_available_memory(monkeypatch):
    each = crop.DECODE_BUDGET + crop.WORKER_OVERHEAD
    monkeypatch.setattr(crop, "available_memory", lambda: int(2.5 * each))
    count, note = crop.decode_workers(8)
    assert count == 2 and "crop.workers=8" in note and "so fewer" in note
    monkeypatch.setattr(crop, "available_memory", lambda: 100)
    assert crop.decode_workers(8)[0] == 1
    monkeypatch.setattr(crop, "available_memory", lambda: 100 * each)
    assert crop.decode_workers(3) == (3, crop.decode_workers(3)[1]) and "fewer" not in crop.decode_workers(3)[1]
    monkeypatch.setattr(crop, "available_memory", lambda: None)
    assert crop.decode_workers(0)[0] == (os.cpu_count() or 1)


# --- a full disk --------------------------------------------------------------------------------------------------

class FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: then ``write`` fails as the kernel's does (no file name)."""

    room = 0

    def write(self, data):
        size = memoryview(data).nbytes
        if size > FullDisk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        FullDisk.room -= size
        return super().write(data)


def test_disk_full_during_crop_is_one_error_line_with_no_output_and_no_temporaries(tiny_sample, tmp_path, monkeypatch,
                                                                                    capsys):
    from stages import crop as crop_stage

    shutil_copy = __import__("shutil").copytree
    shutil_copy(tiny_sample, tmp_path / "data/sample")
    (tmp_path / "data/raw").mkdir()
    sources.prepare({"source": "sample", "variant": "3A"}, tmp_path / "data/sample", tmp_path / "data/raw")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["crop"].update(image_size=16, shard_size=4, workers=1, balance="none")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(atomic, "watch_parents", lambda: None)  # in-process: leave pytest's own parent alone
    FullDisk.room = 3 * (128 + 4 * 16 * 16)  # three shards fit, the fourth does not
    monkeypatch.setattr(store, "open", lambda path, mode: FullDisk(path, "w"), raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.run(crop_stage.main, raw="data/raw", out="data/crops", summary="metrics/data_quality/crop.json",
                skipped="metrics/data_quality/crop_skipped.csv")
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert err.startswith("error: no space left on data/crops (writing ") and "shard-00003.npy" in err, err
    assert "partial output is removed" in err and "B free there" in err and err.count("\n") == 1
    assert not (tmp_path / "data/crops").exists() and not list((tmp_path / "data").glob(".tmp-*"))
    assert not multiprocessing.active_children(), "the decode workers are stopped"


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),  # write(2) through Python's file objects
    OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"),  # pyarrow
    RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),  # safetensors
], ids=["write", "parquet", "safetensors"])
def test_disk_full_in_any_stage_names_the_output_and_leaves_nothing(tmp_path, monkeypatch, capsys, failure):
    monkeypatch.setattr(atomic, "watch_parents", lambda: None)

    def stage():  # extract, train, evaluate: a folder with files, then a metrics file
        with atomic_dir(tmp_path / "models/vgg16-mlp") as tmp:
            (tmp / "head.json").write_text("{}")
            raise failure
        atomic_write_json(tmp_path / "metrics.json", {})

    with pytest.raises(SystemExit) as exited:
        cli.run(stage)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(f"error: no space left on {tmp_path / 'models/vgg16-mlp'}; ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["models"], "no output, no temporaries"

    monkeypatch.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(SystemExit):
        cli.run(atomic_write_json, tmp_path / "metrics/m.json", {})
    assert capsys.readouterr().err.startswith(f"error: no space left on {tmp_path / 'metrics/m.json'}; ")
    assert not list((tmp_path / "metrics").iterdir())


# --- a dead parent ------------------------------------------------------------------------------------------------

STAGE = """
import os, sys, time
from pathlib import Path
from covidct import cli
from covidct.atomic import atomic_path

def main(out, ready):
    with atomic_path(out) as tmp:
        tmp.write_text("written by an orphan")
        Path(ready).write_text(str(os.getpid()))
        time.sleep(4)  # its parent is killed meanwhile

cli.run(main, sys.argv[1], sys.argv[2])
"""
AGENT = "import subprocess, sys; subprocess.run(sys.argv[1:])"  # torchrun's agent: a plain parent of the ranks
CHILD = {
    "stage": lambda py, stage: [py, "-c", stage],
    "under sh -c": lambda py, stage: ["/bin/sh", "-c", f"{py} -c '{stage}' \"$0\" \"$1\""],
    # dvc -> the stage (cli.run) -> torchrun's agent -> a rank (cli.run) that writes
    "torchrun rank": lambda py, stage: [py, "-c", (
        "import subprocess, sys; from covidct import cli; cli.run(subprocess.run, [sys.executable, '-c', "
        f"{AGENT!r}, sys.executable, '-c', {stage!r}, *sys.argv[1:]])")],
}


@pytest.mark.parametrize("how", list(CHILD))
def test_a_stage_stops_when_dvc_dies_and_never_writes_after(tmp_path, how):
    out, ready = tmp_path / "model.txt", tmp_path / "ready"
    child = CHILD[how](sys.executable, STAGE.replace("'", '"'))
    dvc_like = textwrap.dedent(f"""
        import subprocess, time
        subprocess.Popen({child!r} + [{str(out)!r}, {str(ready)!r}])
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "crop"}  # as dvc sets it for a stage's command
    env.pop(atomic.WATCH_ENV, None)
    parent = subprocess.Popen([sys.executable, "-c", dvc_like], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text()):
            assert time.monotonic() < deadline and parent.poll() is None, "the stage never started writing"
            time.sleep(0.01)
        writer = int(ready.read_text())
        parent.kill()  # kill -9 of dvc alone
        parent.wait()
        killed = time.monotonic()
        while _alive(writer) and time.monotonic() < killed + 10:
            time.sleep(0.01)
        stopped = time.monotonic() - killed
        assert not _alive(writer), "the stage outlived its parent"
        assert stopped < 3, f"took {stopped:.1f}s to stop"
        time.sleep(0.2)
        assert not out.exists(), "an orphan wrote its output"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_no_rename_once_the_parent_is_gone(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    monkeypatch.setattr(atomic, "_parent", os.getppid())
    monkeypatch.setattr(atomic, "_watched", {int(dead.stdout): None})  # as if dvc had just died
    with pytest.raises(atomic.ParentGone), atomic_path(tmp_path / "model.txt") as tmp:
        tmp.write_text("late")
    with pytest.raises(atomic.ParentGone), atomic_dir(tmp_path / "model") as tmp:
        (tmp / "head.json").write_text("{}")
    assert not list(tmp_path.iterdir())


def test_only_a_stage_run_by_dvc_watches_its_parents(monkeypatch):
    """By hand (`nohup python -m stages.crop ...`) a stage outlives its shell; under dvc (DVC_STAGE) it does not."""
    calls = []
    monkeypatch.setattr(atomic, "watch_parents", lambda: calls.append(1))
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv(atomic.WATCH_ENV, raising=False)
    cli.run(lambda: None)
    assert calls == []
    monkeypatch.setenv("DVC_STAGE", "crop")
    cli.run(lambda: None)
    assert calls == [1]
