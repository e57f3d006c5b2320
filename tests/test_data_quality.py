"""Bad input at the crop stage: each kind of unusable slice is skipped, counted and listed with its split-file
line; too many stop the stage with the report already written; odd but valid images are converted correctly;
split-file problems are errors naming file and line."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidct import crop, quality, sources, store
from covidct.errors import DataError
from covidct.images import read_image

CASES = {  # reason -> how a good slice is broken
    "corrupt_image": "truncate",
    "not_an_image": "garbage",
    "empty_file": "zero_bytes",
    "missing_file": "delete",
    "bbox_outside_image": "box_outside",
    "bbox_inverted": "box_inverted",
    "bbox_zero_area": "box_zero",
}


@pytest.fixture()
def broken(tiny_sample, tmp_path):
    """A copy of the tiny sample with one slice broken per case, all from the train split."""
    images = tmp_path / "images"
    shutil.copytree(tiny_sample / "3A_images", images / "3A_images")
    table, info = crop.label_and_balance(crop.slice_table(tiny_sample), "binary", "none", seed=0)
    victims = table.index[table["split"] == "train"][: len(CASES)]
    for (reason, how), i in zip(CASES.items(), victims):
        path = images / "3A_images" / table.at[i, "fname"]
        if how == "truncate":
            path.write_bytes(path.read_bytes()[:300])
        elif how == "garbage":
            path.write_bytes(b"<html>rate limited</html>")
        elif how == "zero_bytes":
            path.write_bytes(b"")
        elif how == "delete":
            path.unlink()
        elif how == "box_outside":
            table.at[i, "xmax"] = 10_000
        elif how == "box_inverted":
            table.loc[i, ["xmin", "xmax"]] = table.loc[i, ["xmax", "xmin"]].to_numpy()
        elif how == "box_zero":
            table.at[i, "ymax"] = table.at[i, "ymin"]
    return table, info, images, dict(zip(CASES, victims))


def test_each_unusable_slice_is_skipped_counted_and_listed_with_its_line(broken, tmp_path):
    table, info, images, victims = broken
    meta, skipped = crop.build_store(table, info, images, tmp_path / "out", size=24, margin=0.0, shard_size=5,
                                     workers=2, progress=False)
    assert {s["reason"]: s["fname"] for s in skipped} == {r: table.at[i, "fname"] for r, i in victims.items()}
    for s in skipped:
        i = victims[s["reason"]]
        assert s["where"] == f"train_COVIDx_CT-3A.txt:{table.at[i, 'line']}" and s["split"] == "train"
    kept = table.drop(index=list(victims.values()))
    s = store.CropStore(tmp_path / "out")
    assert meta["slices"] == len(kept) == len(s.index)
    assert s.index["fname"].tolist() == kept["fname"].tolist(), "order kept, skipped rows gone"
    assert sum(meta["counts"]["train"].values()) == (kept["split"] == "train").sum()
    last = s.index.iloc[-1]  # the trimmed last shard still reads back
    expected = crop.load_crop(images / "3A_images" / last.fname, (last.xmin, last.ymin, last.xmax, last.ymax), 24, 0.0)
    assert np.array_equal(s.image(len(s.index) - 1), expected)

    summary = quality.report("crop", len(table), skipped, max_fraction=0.5, json_path=tmp_path / "dq/crop.json",
                             csv_path=tmp_path / "dq/crop_skipped.csv")
    assert summary["skipped"] == len(CASES) and summary["by_reason"] == {r: 1 for r in sorted(CASES)}
    assert json.loads((tmp_path / "dq/crop.json").read_text()) == summary
    listed = pd.read_csv(tmp_path / "dq/crop_skipped.csv")
    assert sorted(listed["reason"]) == sorted(CASES) and listed["where"].str.match(r"train_COVIDx_CT-3A.txt:\d+$").all()


def test_too_many_skips_stop_the_stage_after_writing_the_report(broken, tmp_path):
    table, info, images, _ = broken
    _, skipped = crop.build_store(table, info, images, tmp_path / "out", size=24, margin=0.0, shard_size=64,
                                  workers=1, progress=False)
    with pytest.raises(DataError) as err:
        quality.report("crop", len(table), skipped, max_fraction=0.01, json_path=tmp_path / "dq/crop.json",
                       csv_path=tmp_path / "dq/crop_skipped.csv")
    message = str(err.value)
    assert f"crop: 7 of {len(table)} items unusable" in message and "crop.max_skipped_fraction=0.01" in message
    assert "train_COVIDx_CT-3A.txt:" in message and str(tmp_path / "dq/crop_skipped.csv") in message
    assert json.loads((tmp_path / "dq/crop.json").read_text())["skipped"] == 7


def test_a_split_with_no_readable_slice_is_an_error(tiny_sample, tmp_path):
    table, info = crop.label_and_balance(crop.slice_table(tiny_sample), "binary", "none", seed=0)
    (tmp_path / "3A_images").mkdir()
    for fname in table.loc[table["split"] != "val", "fname"]:
        shutil.copy(tiny_sample / "3A_images" / fname, tmp_path / "3A_images" / fname)
    with pytest.raises(DataError, match=r"split 'val': none of its slices could be read"):
        crop.build_store(table, info, tmp_path, tmp_path / "out", size=16, margin=0.0, shard_size=8, workers=1,
                         progress=False)


def _gray():
    yy, xx = np.mgrid[0:40, 0:50]
    image = ((xx * 5 + yy * 3) % 256).astype(np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    return image


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "JPEG bytes"])
def test_valid_images_of_any_mode_are_converted_to_the_same_gray(tmp_path, mode):
    gray = _gray()
    path = tmp_path / "slice.png"  # always named .png: COVIDx files are, whatever their bytes
    if mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)
    elif mode == "JPEG bytes":
        Image.fromarray(gray).save(path, format="JPEG", quality=95)
    elif mode in ("RGBA", "LA"):
        Image.fromarray(gray).convert(mode).save(path)  # fully opaque
    else:
        Image.fromarray(gray).convert(mode).save(path)
    with Image.open(path) as im:
        assert im.format == ("JPEG" if mode == "JPEG bytes" else "PNG")
    out = np.asarray(read_image(path), dtype=np.int16)
    error = np.abs(out - gray)
    assert out.shape == gray.shape
    if mode == "JPEG bytes":  # lossy: close on average, a few levels off at sharp edges
        assert error.mean() < 1.5 and error.max() <= 12
    else:
        assert error.max() == 0, mode


def test_transparent_pixels_become_black(tmp_path):
    rgba = np.dstack([np.full((8, 8), 200, np.uint8)] * 3 + [np.zeros((8, 8), np.uint8)])
    rgba[2:4, 2:4, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = np.asarray(read_image(tmp_path / "a.png"))
    assert out[0, 0] == 0 and out[3, 3] == 200


def _splits(tmp_path, train, val="b_2_1_1.png 0 0 0 5 5\n", test="c_3_1_1.png 2 0 0 5 5\n"):
    for split, text in (("train", train), ("val", val), ("test", test)):
        (tmp_path / f"{split}_COVIDx_CT-3A.txt").write_bytes(text.encode())


def test_crlf_trailing_spaces_and_blank_lines_are_accepted(tmp_path):
    _splits(tmp_path, "a_1_1_1.png 0 0 0 5 5 \r\n\r\n  a_1_1_2.png 2 1 1 6 6\t\r\n")
    table = crop.slice_table(tmp_path)
    assert table[table["split"] == "train"][["fname", "cls", "xmax", "line"]].values.tolist() == [
        ["a_1_1_1.png", 0, 5, 1], ["a_1_1_2.png", 2, 6, 3]]


@pytest.mark.parametrize("line, message", [
    ("a_1_1_1.png 0 0 0 5", "train_COVIDx_CT-3A.txt:2: expected 6 fields"),
    ("a_1_1_1.png zero 0 0 5 5", "train_COVIDx_CT-3A.txt:2: class and bbox must be numbers"),
    ("a_1_1_1.png 7 0 0 5 5", "train_COVIDx_CT-3A.txt:2: unknown class id 7"),
])
def test_bad_lines_are_errors_naming_file_and_line(tmp_path, line, message):
    _splits(tmp_path, f"a_1_1_0.png 0 0 0 5 5\n{line}\n")
    with pytest.raises(DataError, match=message):
        crop.slice_table(tmp_path)


def test_a_duplicate_row_and_an_empty_split_are_errors(tmp_path):
    _splits(tmp_path, "a_1_1_1.png 0 0 0 5 5\na_1_1_1.png 0 0 0 5 5\n")
    with pytest.raises(DataError, match=r"list a slice more than once.*train_COVIDx_CT-3A.txt:1.*train_COVIDx_CT-3A.txt:2"):
        crop.slice_table(tmp_path)
    _splits(tmp_path, "a_1_1_1.png 0 0 0 5 5\n", val="\n")
    table = crop.slice_table(tmp_path)
    with pytest.raises(DataError, match="split 'val' has no slices"):
        crop.label_and_balance(table, "binary", "none", seed=0)


def test_the_crop_stage_reports_skips_and_fails_cleanly_beyond_the_limit(tiny_sample, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(tiny_sample, tmp_path / "data/sample")
    (tmp_path / "data/raw").mkdir()
    sources.prepare({"source": "sample", "variant": "3A"}, tmp_path / "data/sample", tmp_path / "data/raw")
    victim = crop.slice_table(tiny_sample).iloc[0]
    (tmp_path / "data/sample/3A_images" / victim.fname).write_bytes(b"")
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["crop"].update(image_size=16, workers=1, max_skipped_fraction=0.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "PYTHONPATH": str(root), "CI": "true"}

    def run():
        return subprocess.run([sys.executable, "-m", "stages.crop", "--raw", "data/raw", "--out", "data/crops",
                               "--summary", "metrics/data_quality/crop.json",
                               "--skipped", "metrics/data_quality/crop_skipped.csv"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)

    failed = run()
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: crop: 1 of ") and f"{victim.fname}: zero-byte file" in failed.stderr
    assert not (tmp_path / "data/crops").exists(), "no half-accepted store"
    assert json.loads((tmp_path / "metrics/data_quality/crop.json").read_text())["by_reason"] == {"empty_file": 1}

    p["crop"]["max_skipped_fraction"] = 0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    passed = run()
    assert passed.returncode == 0, passed.stderr
    assert "crop: skipped 1 of" in passed.stdout and "metrics/data_quality/crop_skipped.csv" in passed.stdout
    assert victim.fname not in set(store.CropStore(tmp_path / "data/crops").index["fname"])
