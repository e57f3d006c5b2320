"""The demo's fine-tuned ResNet-18, trained here from scratch: >= 90 % on the sample, CAMs on the lesions.

The fixture runs what the sample, download, crop and finetune@resnet18-scratch stages run, with the committed
params.yaml (the embedded sample, its crop size, the run's recipe), so the test checks the shipped defaults, but on
one site: on the demo's three sites the network still reaches 90 % (94.7 % in the demo) while its GradCAM peaks
on a lesion for only a third of the COVID-19 slices, an open question (issue 16) this test does not yet pin.
CAMs of COVID-19 test slices are then compared with the generator's lesion masks, cropped and resized exactly
as the crop store was. A CAM cannot be sharper than the feature map it comes from: at the demo's 96 px,
ResNet-18's layer4 is a 3x3 grid, each cell a ninth of the slice, while a lesion covers ~2 % of it. So "the
CAM peaks inside the lesion" is judged on that grid: the cell with the highest mean CAM must contain lesion,
more often than not and clearly more often than a cell picked at random would. Pixel level, the mean CAM over
lesion pixels must exceed the mean elsewhere on most slices.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covidct import classifier, crop, explain, finetune, layout, params, phantom, sources, store

ROOT = Path(__file__).resolve().parents[1]
RUN, STRIDE = "resnet18-scratch", 32  # ResNet-18's layer4 has stride 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    p = params.load(ROOT / "params.yaml", data=sources.check_params, sample=phantom.check_params,
                    crop=crop.check_params, finetune=finetune.check_params)
    assert p["data"]["source"] == "sample"
    root = tmp_path_factory.mktemp("demo")
    s = p["sample"]
    phantom.generate(root / "sample", patients=s["patients"], class_fractions=s["class_fractions"],
                     slices_per_patient=s["slices_per_patient"], image_size=s["image_size"], seed=s["seed"],
                     progress=False)
    (root / "raw").mkdir()
    sources.prepare(p["data"], root / "sample", root / "raw")
    dataset, c = layout.read_dataset_info(root / "raw"), p["crop"]
    table, info = crop.label_and_balance(crop.slice_table(root / "raw"), c["classes"], c["balance"], c["seed"])
    crop.build_store(table, info, Path(dataset["root"]), root / "crops", c["image_size"], c["margin"],
                     c["shard_size"], c["workers"], progress=False)
    crops = store.CropStore(root / "crops")
    recipe = finetune.recipe(p["finetune"], RUN)
    torch.set_num_threads(p["finetune"]["num_threads"] or torch.get_num_threads())
    torch.manual_seed(recipe["seed"])  # as stages/finetune.py seeds the initial weights
    model = classifier.build_classifier(recipe["arch"], recipe["init"], 2, recipe["image_size"])
    result = finetune.train(model, crops, recipe, torch.device("cpu"))
    return root, crops, model.eval(), recipe, result


def lesion_masks(raw: Path, rows, size: int) -> np.ndarray:
    masks = []
    for row in rows.itertuples():
        with Image.open(raw / "masks" / row.fname) as mask:
            box = mask.crop((row.xmin, row.ymin, row.xmax + 1, row.ymax + 1)).resize((size, size), Image.BILINEAR)
        masks.append(np.asarray(box) > 127)
    return np.stack(masks)


def peak_cell_hits(cams: np.ndarray, masks: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: does the grid cell with the highest mean CAM contain lesion; fraction of cells that do."""
    edges = np.linspace(0, cams.shape[-1], grid + 1).round().astype(int)
    cells = [(slice(edges[i], edges[i + 1]), slice(edges[j], edges[j + 1])) for i in range(grid) for j in range(grid)]
    cam_means = np.stack([cams[:, r, c].mean(axis=(1, 2)) for r, c in cells], 1)
    has_lesion = np.stack([masks[:, r, c].any(axis=(1, 2)) for r, c in cells], 1)
    return has_lesion[np.arange(len(cams)), cam_means.argmax(1)], has_lesion.mean(1)


@pytest.mark.slow
def test_resnet18_from_scratch_reaches_90_percent_and_its_cams_peak_on_lesions(trained):
    root, crops, model, recipe, result = trained
    probs, _ = classifier.predict_split(model, crops, "test", torch.device("cpu"))
    rows = crops.rows("test")
    accuracy = float((probs.argmax(1) == rows["label"].to_numpy()).mean())
    assert accuracy >= 0.9, f"ResNet-18 from scratch: test accuracy {accuracy:.1%} (best epoch {result['best_epoch']})"

    covid = rows[rows["label"] == 1]
    images = crops.read(covid).astype(np.float32)[:, None] / 255.0
    masks = lesion_masks(root / "sample", covid, crops.size)  # the generator's masks, beside its images
    assert masks.any(axis=(1, 2)).all(), "every COVID-19 phantom slice has a lesion"
    maps = explain.class_activation_maps(model, images, target_class=1)
    for method in ("gradcam", "hirescam"):
        cams = maps[method]
        assert cams.shape == (len(covid), crops.size, crops.size), "a CAM has the input's spatial size"
        hits, chance = peak_cell_hits(cams, masks, recipe["image_size"] // STRIDE)
        inside_higher = np.array([cam[m].mean() > cam[~m].mean() for cam, m in zip(cams, masks)])
        print(f"{method}: peak cell on a lesion {hits.mean():.0%} (chance {chance.mean():.0%}), "
              f"lesion pixels hotter {inside_higher.mean():.0%}, test accuracy {accuracy:.1%}")
        assert hits.mean() > 0.5, f"{method}: peak cell on a lesion for only {hits.mean():.0%} of slices"
        assert hits.mean() > chance.mean() + 0.1, f"{method}: {hits.mean():.0%} vs {chance.mean():.0%} by chance"
        assert inside_higher.mean() > 0.5, f"{method}: lesion pixels hotter for only {inside_higher.mean():.0%}"
