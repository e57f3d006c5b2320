"""A frozen backbone + head composed into one module scores exactly as the pipeline's features + head do."""

import numpy as np
import pytest
import torch
from conftest import build_store

from covidct import classifier, featurefile, features, heads, models, store

HEAD_PARAMS = {"logreg": {"C": 1.0, "max_iter": 500},
               "mlp": {"hidden": 8, "dropout": 0.0, "epochs": 2, "batch_size": 8, "base_lr": 1e-3, "max_lr": 1e-2,
                       "step_epochs": 1, "weight_decay": 0.0, "seed": 0}}


@pytest.fixture(scope="module")
def pipeline_models(tiny_sample, tmp_path_factory):
    """crop store -> features (random-init, seeded resnet18 at 48 px) -> both heads, saved as train saves them."""
    root = tmp_path_factory.mktemp("composed")
    build_store(tiny_sample, root / "crops", size=40, shard_size=16)
    (root / "features").mkdir()
    features.extract(root / "crops", root / "features", "resnet18", "none", 48, batch_size=8, seed=3, progress=False)
    train, x_train, meta = featurefile.read_features(root / "features/train.parquet")
    val, x_val, _ = featurefile.read_features(root / "features/val.parquet")
    for name, p in HEAD_PARAMS.items():
        head = heads.create_head(name, p)
        head.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(), positive=1)
        head.save(root / "models" / f"resnet18-{name}")
        featurefile.save_backbone_config(root / "models" / f"resnet18-{name}", meta)
    return root


@pytest.mark.parametrize("head", list(HEAD_PARAMS))
def test_composed_model_reproduces_features_plus_head(pipeline_models, head):
    root = pipeline_models
    model, config = models.load_model(root / "models" / f"resnet18-{head}")
    assert config["arch"] == "resnet18" and config["seed"] == 3 and config["label_names"] == ["Normal", "COVID-19"]
    rows, x, _ = featurefile.read_features(root / "features/test.parquet")
    expected = heads.load_head(root / "models" / f"resnet18-{head}").predict_proba(x)
    got, _ = classifier.predict_split(model, store.CropStore(root / "crops"), "test", torch.device("cpu"))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_folder_without_a_model_says_what_a_model_folder_holds(pipeline_models):
    with pytest.raises(FileNotFoundError, match=r"vgg16-mlp/ is not a trained model folder.*model.json.*head.json"):
        models.load_model(pipeline_models / "models" / "vgg16-mlp")


def test_a_fine_tuned_folder_is_told_apart_by_its_files(tmp_path):
    torch.manual_seed(0)
    network = classifier.build_classifier("resnet18", "scratch", 2, 32)
    folder = tmp_path / "models/finetune/resnet18-scratch"
    classifier.save(network, folder, {"init": "scratch", "label_names": ["Normal", "COVID-19"]})
    model, config = models.load_model(folder)
    assert isinstance(model, classifier.Classifier) and not model.training
    assert config["arch"] == model.arch == "resnet18" and config["image_size"] == 32 and config["init"] == "scratch"
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), network.eval()(x), rtol=0, atol=0)
