"""Hostile input, round 2 (issue 15): names that leave the images folder, leakage under another spelling, every
field of a split file, errors naming the user's own file, and splits that lack a class, from crop to evaluate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from covidct import crop, layout, metrics, report, sources
from covidct.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
GOOD = "a_1_1_0.png 0 0 0 5 5\n"


def write_splits(folder: Path, train: bytes | str, val="b_2_1_1.png 0 0 0 5 5\n", test="c_3_1_1.png 2 0 0 5 5\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", train), ("val", val), ("test", test)):
        (folder / layout.split_filename(split)).write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def dataset(folder: Path, splits: dict[str, list[tuple[str, int]]], size: int = 16) -> Path:
    """A tiny COVIDx-layout folder: 3A_images/ of ``size`` px gray PNGs and split files listing them."""
    (folder / layout.IMAGES_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, rows in splits.items():
        lines = []
        for fname, cls in rows:
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / layout.IMAGES_DIR / fname)
            lines.append(f"{fname} {cls} 0 0 {size} {size}\n")
        (folder / layout.split_filename(split)).write_text("".join(lines))
    return folder


# -- 1. paths never leave the images folder --------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    ("../x_9_1_1.png", "'..' segment"),
    ("3A_images/../../x_9_1_1.png", "'..' segment"),
    ("ok/..", "'..' segment"),
    ("..\\x_9_1_1.png", "'..' segment"),
    ("/etc/x_9_1_1.png", "absolute path"),
    ("C:\\data\\x_9_1_1.png", "absolute path"),
    ("x\x00_9_1_1.png", "control character"),
])
def test_names_that_would_leave_the_images_folder_are_refused_with_file_and_line(tmp_path, name, why):
    write_splits(tmp_path, GOOD + f"{name} 0 0 0 5 5\n")
    with pytest.raises(DataError, match=rf"train_COVIDx_CT-3A.txt:2: file name .*{why}.*(Move the image|Fix the name)"):
        crop.slice_table(tmp_path)


def test_a_symlink_leading_outside_the_images_folder_is_refused(tmp_path):
    root = dataset(tmp_path / "covidx", {"train": [("a_1_1_1.png", 0), ("a_1_1_2.png", 2)],
                                         "val": [("b_2_1_1.png", 0)], "test": [("c_3_1_1.png", 2)]})
    images = root / layout.IMAGES_DIR
    (tmp_path / "secret.png").write_bytes((images / "a_1_1_1.png").read_bytes())
    (images / "a_1_1_2.png").unlink()
    (images / "a_1_1_2.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataError) as err:
        crop.slice_table(root, root=root)
    message = str(err.value)
    assert f"{root / 'train_COVIDx_CT-3A.txt'}:2: a_1_1_2.png -> {tmp_path / 'secret.png'}" in message
    assert "symlinks leading outside" in message and "Copy those images into 3A_images/" in message

    (images / "a_1_1_2.png").unlink()  # a link to another image inside the folder is fine
    (images / "a_1_1_2.png").symlink_to("a_1_1_1.png")
    assert len(crop.slice_table(root, root=root)) == 4
    linked = tmp_path / "linked"  # and so is the whole folder being a link (images on another disk)
    write_splits(linked, (root / "train_COVIDx_CT-3A.txt").read_text(), (root / "val_COVIDx_CT-3A.txt").read_text(),
                 (root / "test_COVIDx_CT-3A.txt").read_text())
    (linked / layout.IMAGES_DIR).symlink_to(images)
    assert len(crop.slice_table(linked, root=linked)) == 4


def test_a_missing_images_folder_is_named(tmp_path):
    write_splits(tmp_path, GOOD)
    with pytest.raises(DataError, match=r"3A_images: no such folder"):
        crop.slice_table(tmp_path, root=tmp_path)


# -- 2. leakage under another spelling ---------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["./a_1_1_0.png", ".//a_1_1_0.png", "./././a_1_1_0.png"])
def test_a_train_slice_listed_again_in_test_under_another_spelling_is_leakage(tmp_path, spelling):
    write_splits(tmp_path, GOOD, test=f"c_3_1_1.png 2 0 0 5 5\n{spelling} 0 0 0 5 5\n")
    with pytest.raises(DataError, match=r"list a slice more than once") as err:
        crop.slice_table(tmp_path)
    for where in ("train_COVIDx_CT-3A.txt:1", "test_COVIDx_CT-3A.txt:2"):
        assert f"a_1_1_0.png ({tmp_path / where})" in str(err.value)
    write_splits(tmp_path, GOOD, test=f"c_3_1_1.png 2 0 0 5 5\n{spelling.replace('_0.png', '_7.png')} 0 0 0 5 5\n")
    with pytest.raises(DataError, match=r"patients in more than one split.*'a_1'.*test_COVIDx_CT-3A.txt:2"):
        crop.slice_table(tmp_path)


def test_names_are_normalised_and_patients_come_from_the_normalised_name():
    assert layout.normalise_name("./NCP_96_1328_0032.png") == "NCP_96_1328_0032.png"
    assert layout.normalise_name("sub//NCP_96_1328_0032.png") == "sub/NCP_96_1328_0032.png"
    assert layout.patient_id("sub/NCP_96_1328_0032.png") == "sub/NCP_96"
    assert layout.patient_id("dir.v2/NCP_96_1328_0032") == "dir.v2/NCP_96"


# -- 3. every field of a split file ------------------------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    (b"\xef\xbb\xbfa_1_1_1.png 2 1 2 30 40\n", ("a_1_1_1.png", 2, 1, 2, 30, 40, 1)),  # UTF-8 BOM
    (b"\n  \r\na_1_1_1.png 2 1 2 30 40\r\n", ("a_1_1_1.png", 2, 1, 2, 30, 40, 3)),  # CRLF, blank lines
    (b"\r\ra_1_1_1.png 2 1 2 30 40\r", ("a_1_1_1.png", 2, 1, 2, 30, 40, 3)),  # old Mac CR line ends
    (b"a_1_1_1.png\t2.0 +1 002 30.0 40.\n", ("a_1_1_1.png", 2, 1, 2, 30, 40, 1)),  # whole numbers, other spellings
    (b"a_1_1_1.png 2 -5 0 30 40\n", ("a_1_1_1.png", 2, -5, 0, 30, 40, 1)),  # negative: crop skips it (bbox outside)
    ("caf\u00e9_1_1_1.png 0 0 0 5 5\n".encode(), ("caf\u00e9_1_1_1.png", 0, 0, 0, 5, 5, 1)),  # UTF-8 name
])
def test_accepted_spellings_parse_to_exactly_what_they_say(tmp_path, content, expected):
    (tmp_path / "s.txt").write_bytes(content)
    [row] = layout.read_split_file(tmp_path / "s.txt", "train")
    assert (row.fname, row.cls, row.xmin, row.ymin, row.xmax, row.ymax, row.line) == expected


@pytest.mark.parametrize("line, message", [
    (b"a_1_1_1.png 0 0 0 12.7 5", "must be numbers, whole"),  # never silently truncated to 12
    (b"a_1_1_1.png 0 0 0 1e2 5", "must be numbers, whole"),
    (b"a_1_1_1.png 0 0 0 0x10 5", "must be numbers, whole"),
    (b"a_1_1_1.png 0 0 0 nan 5", "must be numbers, whole"),
    (b"a_1_1_1.png 0 0 0 inf 5", "must be numbers, whole"),
    (b"a_1_1_1.png 0 0 0 -inf 5", "must be numbers, whole"),
    (b"a_1_1_1.png 0 0 0 1_000 5", "must be numbers, whole"),
    ("a_1_1_1.png 0 0 0 \u0661\u0662 5".encode(), "must be numbers, whole"),  # Arabic-Indic digits: int() takes them
    (b"a_1_1_1.png 0 0 0 99999999999 5", "below 2\\^31"),
    (b"a_1_1_1.png 1.5 0 0 5 5", "must be numbers, whole"),
    (b"a_1_1_1.png x 0 0 5 5", "must be numbers, whole"),
    (b"a_1_1_1.png -1 0 0 5 5", "unknown class id -1"),
    (b"a_1_1_1.png 3 0 0 5 5", "unknown class id 3"),
    (b"a_1_1_1.png 0 0 0 5", "expected 6 fields .* got 5"),
    (b"my scan_1_1_1.png 0 0 0 5 5", "expected 6 fields .* got 7.*cannot contain spaces"),
    (b"a_1_1_1.png 0 0 0 5 5 # comment", "expected 6 fields .* got 8"),
    (b"caf\xe9_1_1_1.png 0 0 0 5 5", "not UTF-8 text: byte b'\\\\xe9' at column 4. Save the file as UTF-8"),
])
def test_refused_fields_are_errors_naming_file_and_line(tmp_path, line, message):
    write_splits(tmp_path, GOOD.encode() + line + b"\r\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/train_COVIDx_CT-3A.txt:2: .*{message}"):
        crop.slice_table(tmp_path)


def test_a_utf16_split_file_is_named_as_such(tmp_path):
    write_splits(tmp_path, GOOD.encode("utf-16"))
    with pytest.raises(DataError, match=r"train_COVIDx_CT-3A.txt:1: not UTF-8 text \(it looks like UTF-16\)"):
        crop.slice_table(tmp_path)


def test_errors_name_the_users_split_file_not_the_downloads_copy(tmp_path):
    root = write_splits(tmp_path / "mine", GOOD + "a_1_1_1.png 0 0 0 12.7 5\n")
    (root / layout.IMAGES_DIR).mkdir()
    out = tmp_path / "raw.tmp"
    out.mkdir()
    with pytest.raises(DataError) as err:
        sources.prepare({"source": "local", "variant": "3A", "local_root": str(root)}, tmp_path / "no-sample", out)
    assert str(err.value).startswith(f"{root / 'train_COVIDx_CT-3A.txt'}:2: ") and str(out) not in str(err.value)

    write_splits(root, GOOD)  # download succeeds; crop reads the copies but names the user's files
    sources.prepare({"source": "local", "variant": "3A", "local_root": str(root)}, tmp_path / "no-sample", out)
    (out / "test_COVIDx_CT-3A.txt").write_text("c_3_1_1.png 2 0 0 5 5\n./a_1_1_0.png 0 0 0 5 5\n")
    with pytest.raises(DataError, match=rf"a_1_1_0.png \({root}/test_COVIDx_CT-3A.txt:2\)"):
        crop.slice_table(out, root=layout.read_dataset_info(out)["root"])


# -- 4. splits that lack a class ---------------------------------------------------------------------------------

def test_a_split_without_a_class_stops_crop_unless_allowed():
    names = ["Normal", "COVID-19"]
    counts = {"train": {"Normal": 5, "COVID-19": 4}, "val": {"Normal": 3, "COVID-19": 2}, "test": {"Normal": 6}}
    with pytest.raises(DataError, match=r"split 'test' has no COVID-19 slice.*crop.allow_missing_class: true"):
        crop.check_classes(counts, names)
    assert crop.check_classes(counts, names, allow_missing=True) == ["split 'test' has no COVID-19 slice"]
    counts["train"] = {"COVID-19": 4, "Normal": 0}
    with pytest.raises(DataError, match=r"split 'train' has no Normal slice.*train must hold every class"):
        crop.check_classes(counts, names, allow_missing=True)
    counts["train"]["Normal"] = 1
    counts["test"]["COVID-19"] = 1
    assert crop.check_classes(counts, names) == []
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())["crop"]
    assert committed["allow_missing_class"] is False and crop.check_params(committed) == []
    assert crop.check_params({**committed, "allow_missing_class": "yes"}) == [
        "crop.allow_missing_class='yes': true or false"]


def test_the_crop_stage_says_which_split_lacks_which_class(tmp_path):
    root = dataset(tmp_path / "covidx", {"train": [("a_1_1_1.png", 0), ("a_1_1_2.png", 2)],
                                         "val": [("b_2_1_1.png", 0), ("b_2_1_2.png", 2)],
                                         "test": [("c_3_1_1.png", 0), ("c_3_1_2.png", 1)]})  # pneumonia: dropped
    project = tmp_path / "project"
    (project / "data/raw").mkdir(parents=True)
    sources.prepare({"source": "local", "variant": "3A", "local_root": str(root)}, project / "no-sample",
                    project / "data/raw")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["crop"].update(image_size=8, workers=1, balance="none")

    def run(allow: bool):
        p["crop"]["allow_missing_class"] = allow
        (project / "params.yaml").write_text(yaml.safe_dump(p))
        return subprocess.run([sys.executable, "-m", "stages.crop", "--raw", "data/raw", "--out", "data/crops",
                               "--summary", "dq/crop.json", "--skipped", "dq/crop_skipped.csv"], cwd=project,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "CI": "true"}, capture_output=True,
                              text=True, check=False)

    refused = run(False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: split 'test' has no COVID-19 slice with crop.classes='binary'.")
    assert not (project / "data/crops").exists()
    allowed = run(True)
    assert allowed.returncode == 0, allowed.stderr
    assert "crop: warning: split 'test' has no COVID-19 slice; going on" in allowed.stdout
    assert json.loads((project / "data/crops/meta.json").read_text())["counts"]["test"] == {"Normal": 1}


def one_class(n_patients: int, label: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame([(f"P{i}", label, float(rng.uniform())) for i in range(n_patients) for _ in range(3)],
                        columns=["patient", "label", "prob"])


def two_class(n_patients: int, seed: int) -> pd.DataFrame:
    frame = one_class(n_patients, 0, seed)
    return frame.assign(label=[int(p[1:]) % 2 for p in frame["patient"]])


def test_a_test_split_without_covid_gives_undefined_metrics_with_reasons_not_a_crash(tmp_path):
    result = metrics.evaluate_and_log(two_class(8, 1), one_class(6, 0, 2), {"bootstrap": 30, "seed": 0,
                                      "calibration_bins": 10}, tmp_path / "m.json", tmp_path / "live")
    written = json.loads((tmp_path / "m.json").read_text())
    assert written == json.loads(json.dumps(result))
    for block in ("test", "patient"):
        for name in ("roc_auc", "pr_auc", "sensitivity", "balanced_accuracy"):
            m = written[block][name]
            assert m["value"] is None and m["ci_low"] is None, (block, name)
            assert "no COVID-19 case" in m["undefined"], (block, name)
        assert written[block]["specificity"]["value"] is not None and "undefined" not in written[block]["specificity"]
    assert "threshold_note" not in written
    line = metrics.headline("m", result)
    assert "ROC AUC undefined (needs both classes; these data have no COVID-19 case)" in line
    assert "val-chosen threshold" in line
    table = report.summary_markdown({"m": result}, 30)
    assert "| m | " in table and "n/a" in table


def test_a_val_split_with_one_class_chooses_no_threshold():
    val, test = one_class(6, 1, 3), two_class(8, 4)
    assert metrics.youden_threshold(val["label"], val["prob"]) == 1.0  # what it used to report as if valid
    result = metrics.evaluate(val, test, n_resamples=20)
    assert result["threshold"] == 0.5
    assert result["threshold_note"].startswith("val has no non-COVID slice, so no threshold can be chosen on it: 0.5")
    assert result["test_at_threshold"] == {k: result["test"][k] for k in metrics.THRESHOLD_METRICS}
    line = metrics.headline("m", result)
    assert "fallback threshold 0.500" in line and "warning: val has no non-COVID slice" in line
    assert "0.500 (fallback: one class in val)" in report.summary_markdown({"m": result}, 20)
