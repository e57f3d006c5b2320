from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidct import layout, phantom
from covidct.params import load


def default_sample_params():
    return load(Path(__file__).resolve().parents[1] / "params.yaml", sample=phantom.check_params)["sample"]


def test_default_sample_has_a_big_enough_patient_disjoint_test_split():
    s = default_sample_params()
    specs = phantom.plan_slices(s["patients"], s["class_fractions"], s["slices_per_patient"], s["seed"])
    binary_test = [x for x in specs if x.split == "test" and x.cls != phantom.PNEUMONIA]
    assert len(binary_test) >= 300
    assert len({x.patient for x in binary_test}) >= 30
    patients = {split: {x.patient for x in specs if x.split == split} for split in layout.SPLITS}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_rendering_is_deterministic_and_lesions_lie_in_the_lungs():
    spec = phantom.SliceSpec("train", phantom.COVID, 3, 1234, 4, 10, 99)
    a, mask_a, box_a = phantom.render_slice(spec)
    b, mask_b, box_b = phantom.render_slice(spec)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b) and box_a == box_b
    assert a.shape == (512, 512) and a.dtype == np.uint8
    assert mask_a.sum() > 100
    # ground glass is brighter than the lung around it, darker than soft tissue
    assert 40 < a[mask_a].mean() < 120
    normal = phantom.render_slice(phantom.SliceSpec("train", phantom.NORMAL, 3, 1234, 4, 10, 99))[1]
    assert normal.sum() == 0


def test_files_follow_the_covidx_layout(tiny_sample):
    lines = (tiny_sample / "train_COVIDx_CT-3A.txt").read_text().splitlines()
    fname, cls, *box = lines[0].split()
    assert fname.startswith("phantom_") and fname.endswith(".png") and len(fname[:-4].split("_")) == 4
    assert int(cls) in (0, 1, 2)
    xmin, ymin, xmax, ymax = map(int, box)
    assert 0 <= xmin < xmax < 128 and 0 <= ymin < ymax < 128
    with Image.open(tiny_sample / "3A_images" / fname) as im:
        assert im.mode == "L" and im.size == (128, 128)
    assert (tiny_sample / "masks" / fname).is_file()


def _render_small(spec):
    image, _, _ = phantom.render_slice(spec)
    small = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
    return spec.split, spec.cls, float(image.mean()), small.ravel()


@pytest.mark.slow
def test_no_shortcut_in_mean_intensity_or_in_a_linear_model_on_pixels():
    """The signs must be learned: a classifier on 32x32 pixels stays <= 75 %, class means within 2 gray levels."""
    from concurrent.futures import ProcessPoolExecutor

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = default_sample_params()
    specs = phantom.plan_slices(s["patients"], s["class_fractions"], s["slices_per_patient"], s["seed"])
    specs = [x for x in specs if x.cls != phantom.PNEUMONIA]
    with ProcessPoolExecutor() as pool:
        rows = list(pool.map(_render_small, specs, chunksize=16))
    means = {c: np.mean([m for _, cls, m, _ in rows if cls == c]) for c in (phantom.NORMAL, phantom.COVID)}
    assert abs(means[phantom.NORMAL] - means[phantom.COVID]) < 2.0

    def xy(split):
        part = [r for r in rows if r[0] == split]
        return np.stack([r[3] for r in part]), np.array([r[1] == phantom.COVID for r in part])

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(*xy("train"))
    accuracy = model.score(*xy("test"))
    assert accuracy <= 0.75, accuracy
