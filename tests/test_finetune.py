"""Whole-network training: schedule, data, a short real run on the phantom store, checkpoint round trip."""

import math

import numpy as np
import pytest
import torch

from covidct import classifier, crop, finetune, store

PARAMS = {"seed": 0, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.05, "epochs": 3, "warmup_epochs": 1,
          "patience": 5, "augment": {"scale_min": 0.8, "rotation": 10, "hflip": 0.5}}


@pytest.fixture(scope="module")
def tiny_store(tiny_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    table, info = crop.label_and_balance(crop.slice_table(tiny_sample), "binary", "undersample", seed=0)
    crop.build_store(table, info, tiny_sample, out, size=40, margin=0.0, shard_size=16, workers=1, progress=False)
    return store.CropStore(out)


def test_warmup_then_cosine_per_step():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = finetune.warmup_cosine(optimizer, warmup_steps=4, total_steps=20)
    rates = []
    for _ in range(20):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0) and all(a >= b for a, b in zip(rates[4:], rates[5:]))
    assert rates[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))


def test_dataset_gives_unit_range_images_at_the_model_size(tiny_store):
    # unaugmented (evaluation) batches: unit range at the store's size, resized inside the Classifier
    x, y = next(classifier.store_batches(tiny_store, "val", 4))
    assert x.shape == (4, 1, 40, 40) and x.dtype == torch.float32 and 0.0 <= x.min() <= x.max() <= 1.0
    assert y[0] == tiny_store.rows("val")["label"].iat[0]
    augmented = finetune.AugmentedSlices(tiny_store, "train", 32, PARAMS["augment"])
    torch.manual_seed(0)
    a = augmented[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, augmented[0][0]), "augmentation follows torch's seed"
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32 and 0.0 <= a.min() <= a.max() <= 1.0
    assert augmented[0][1] == tiny_store.rows("train")["label"].iat[0]


def test_classifier_takes_grayscale_of_any_size():
    model = classifier.build_classifier("resnet18", "scratch", 2, 32).eval()
    with torch.no_grad():
        assert model(torch.rand(3, 1, 32, 32)).shape == (3, 2)
        assert model(torch.rand(2, 1, 57, 57)).shape == (2, 2)
    with pytest.raises(ValueError, match="scratch"):
        classifier.build_classifier("resnet18", "random", 2, 32)


def test_short_run_logs_every_split_keeps_the_best_val_epoch_and_round_trips(tiny_store, tmp_path):
    model = classifier.build_classifier("resnet18", "scratch", 2, 32)
    logs = []
    result = finetune.train(model, tiny_store, PARAMS, torch.device("cpu"), on_epoch=logs.append)
    assert [log.epoch for log in logs] == [1, 2, 3]
    for log in logs:
        for value in (log.train_loss, log.val_loss, log.test_loss):
            assert np.isfinite(value)
        assert 0.0 <= log.test_accuracy <= 1.0
    best = min(logs, key=lambda log: log.val_loss)
    assert result["best_epoch"] == best.epoch
    loss_fn = torch.nn.CrossEntropyLoss()
    probs, loss = classifier.predict_split(model, tiny_store, "val", torch.device("cpu"), 8, loss_fn)
    assert loss == pytest.approx(best.val_loss, rel=1e-5), "the best epoch's weights are the ones left loaded"

    config = {"arch": "resnet18", "init": "scratch", "label_names": ["Normal", "COVID-19"],
              "best_epoch": result["best_epoch"]}
    classifier.save(model, tmp_path / "ckpt", config)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.json", "model.safetensors"]
    again, config = classifier.load(tmp_path / "ckpt")
    assert config["best_epoch"] == result["best_epoch"] and config["image_size"] == 32
    again_probs, _ = classifier.predict(again, classifier.store_batches(tiny_store, "val", 8), torch.device("cpu"))
    np.testing.assert_array_equal(again_probs, probs)


def test_early_stopping_on_val_loss(tiny_store):
    model = classifier.build_classifier("resnet18", "scratch", 2, 32)
    logs = []
    params = {**PARAMS, "epochs": 30, "patience": 1, "lr": 0.5}  # a rate that cannot keep improving val loss
    result = finetune.train(model, tiny_store, params, torch.device("cpu"), on_epoch=logs.append)
    assert result["stopped_epoch"] < 30
    assert result["stopped_epoch"] == result["best_epoch"] + 1
