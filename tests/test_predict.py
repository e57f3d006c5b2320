"""``python -m covidct.predict``: any PNG/JPEG mode in, a probability and a CAM overlay out, clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidct import classifier, predict

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["Normal", "COVID-19"]


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = classifier.build_classifier("resnet18", "scratch", 2, 64)
    classifier.save(model, root / "finetune" / "resnet18-scratch",
                    {"arch": "resnet18", "init": "scratch", "label_names": LABELS, "best_epoch": 1})
    return root


MODEL = Path("finetune") / "resnet18-scratch"  # below models_root, as models/finetune/resnet18-scratch


@pytest.fixture()
def slice_8bit():
    """A CT-like 8-bit slice that spans the full 0..255 range, so every conversion below is exact."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:80]
    image = np.clip(40 + 150 * (((yy - 48) / 40.0) ** 2 + ((xx - 40) / 34.0) ** 2 < 1) + rng.normal(0, 20, yy.shape), 0, 255)
    image = image.astype(np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    return image


def run(paths, root):
    return predict.predict_files(paths, root / MODEL)


def test_rgba_palette_16bit_and_gray_give_the_same_probability(tmp_path, models_root, slice_8bit):
    gray = tmp_path / "gray.png"
    Image.fromarray(slice_8bit, mode="L").save(gray)
    rgba = np.dstack([slice_8bit] * 3 + [np.full_like(slice_8bit, 255)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(slice_8bit.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 0..65535, mode I;16
    Image.fromarray(slice_8bit, mode="L").convert("P").save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    results = run([gray, tmp_path / "rgba.png", tmp_path / "sixteen.png", tmp_path / "palette.png"], models_root)
    probs = [r["prob"] for r in results]
    assert 0.0 <= probs[0] <= 1.0
    assert probs == pytest.approx([probs[0]] * 4, abs=1e-6)
    for r in results:
        overlay = Path(r["overlay"])
        assert overlay.parent == tmp_path and overlay.name.endswith(".cam.png")
        with Image.open(overlay) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_transparent_pixels_are_composited_over_black(tmp_path, slice_8bit):
    rgba = np.dstack([slice_8bit] * 3 + [np.zeros_like(slice_8bit)])
    rgba[..., 3][20:40, 20:40] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    gray = predict.read_grayscale(tmp_path / "a.png")
    assert gray[0, 0] == 0.0 and gray[30, 30] == pytest.approx(slice_8bit[30, 30] / 255.0, abs=1 / 255)


def test_jpeg_of_any_size_and_rgb_mode(tmp_path, models_root, slice_8bit):
    Image.fromarray(slice_8bit, mode="L").save(tmp_path / "ref.png")
    big = Image.fromarray(np.dstack([slice_8bit] * 3), mode="RGB").resize((600, 720))
    big.save(tmp_path / "scan.jpg", quality=95)
    small_jpeg = tmp_path / "small.jpeg"
    Image.fromarray(slice_8bit, mode="L").save(small_jpeg, quality=95)
    ref, jpeg, small = run([tmp_path / "ref.png", tmp_path / "scan.jpg", small_jpeg], models_root)
    assert small["prob"] == pytest.approx(ref["prob"], abs=0.05), "JPEG artefacts move the probability a little, no more"
    assert 0.0 <= jpeg["prob"] <= 1.0 and Path(jpeg["overlay"]).is_file()


def test_bad_files_are_named_and_the_rest_still_scored(tmp_path, models_root, slice_8bit):
    good = tmp_path / "good.png"
    Image.fromarray(slice_8bit, mode="L").save(good)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    cmd = [sys.executable, "-m", "covidct.predict", str(good), str(tmp_path / "notes.png"), str(tmp_path / "empty.png"),
           str(truncated), str(tmp_path / "missing.png"), "--model", str(models_root / MODEL)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "good.png\tP(COVID-19)=" in result.stdout
    assert f"{tmp_path / 'notes.png'}: not an image format PIL recognises" in result.stderr
    assert f"{tmp_path / 'empty.png'}: empty file (0 bytes)" in result.stderr
    assert f"{truncated}: cannot decode" in result.stderr and "truncated or corrupt" in result.stderr
    assert f"{tmp_path / 'missing.png'}: no such file" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_folder_without_a_model_is_named_with_what_a_model_folder_holds(tmp_path, models_root, slice_8bit):
    Image.fromarray(slice_8bit, mode="L").save(tmp_path / "x.png")
    result = subprocess.run([sys.executable, "-m", "covidct.predict", str(tmp_path / "x.png"), "--model",
                             str(models_root / "vgg16-mlp")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{models_root / 'vgg16-mlp'}/ is not a trained model folder" in result.stderr
    assert "model.json" in result.stderr and "head.json" in result.stderr


def test_bbox_crops_first_and_is_checked(tmp_path, models_root, slice_8bit):
    Image.fromarray(slice_8bit, mode="L").save(tmp_path / "x.png")
    (crop,) = predict.predict_files([tmp_path / "x.png"], models_root / MODEL, bbox=(5, 10, 70, 90))
    Image.fromarray(slice_8bit[10:90, 5:70], mode="L").save(tmp_path / "pre.png")
    (pre,) = run([tmp_path / "pre.png"], models_root)
    assert crop["prob"] == pytest.approx(pre["prob"], abs=1e-6)
    (bad,) = predict.predict_files([tmp_path / "x.png"], models_root / MODEL, bbox=(5, 10, 700, 90))
    assert "is not inside the 80x96 image" in bad["error"]
