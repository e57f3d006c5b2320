"""A frozen backbone + head composed into one module scores exactly as the pipeline's features + head do."""

import numpy as np
import pytest
import torch

from conftest import build_store

from covidct import features, heads, models, store

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
    train, x_train, meta = features.read_features(root / "features/train.parquet")
    val, x_val, _ = features.read_features(root / "features/val.parquet")
    for name, p in HEAD_PARAMS.items():
        head = heads.create_head(name, p)
        head.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(), positive=1)
        head.save(root / "models" / f"resnet18-{name}")
        models.save_backbone_config(root / "models" / f"resnet18-{name}", meta)
    return root


@pytest.mark.parametrize("head", list(HEAD_PARAMS))
def test_composed_model_reproduces_features_plus_head(pipeline_models, head):
    root = pipeline_models
    model, config = models.load_model(f"resnet18-{head}", root / "models")
    assert config["arch"] == "resnet18" and config["seed"] == 3 and config["label_names"] == ["Normal", "COVID-19"]
    rows, x, _ = features.read_features(root / "features/test.parquet")
    expected = heads.load_head(root / "models" / f"resnet18-{head}").predict_proba(x)
    from covidct.finetune import predict_split

    got = predict_split(model, store.CropStore(root / "crops"), "test", torch.device("cpu"))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert models.available(root / "models") == ["resnet18-logreg", "resnet18-mlp"]


def test_missing_model_names_what_exists(pipeline_models):
    with pytest.raises(FileNotFoundError, match=r"no model 'vgg16-mlp'.*resnet18-logreg"):
        models.load_model("vgg16-mlp", pipeline_models / "models")
    assert models.model_dir("finetune-resnet18-scratch").as_posix() == "models/finetune/resnet18-scratch"
