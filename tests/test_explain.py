"""Explanations on tiny scratch models: CAM shapes and ranges at the input's size, frozen models, kernels,
input gradients, example picking and atomic PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image

from covidct import backbones, explain
from covidct.classifier import build_classifier

# (arch, model image size, input size). CNN sizes give a 2x2 last feature map: at 32 px it is 1x1, every CAM
# is a constant and grad-cam's min-max scaling turns it into zeros, which would test nothing.
CASES = [("resnet18", 64, 80), ("efficientnet_lite0", 64, 80), ("vit_b16", 32, 48)]


def _model(arch, image_size, frozen=False):
    torch.manual_seed(0)
    model = build_classifier(arch, "scratch", 2, image_size)
    if frozen:  # as the pipeline's frozen backbones are
        model.requires_grad_(False)
    return model


def _images(n, size, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,image_size,input_size", CASES)
def test_cams_come_back_at_input_size_in_unit_range_also_when_frozen(arch, image_size, input_size):
    model = _model(arch, image_size, frozen=True)
    model.train()
    maps = explain.class_activation_maps(model, _images(3, input_size), target_class=1)
    assert list(maps) == list(explain.CAM_METHODS)
    for method, cam in maps.items():
        assert cam.shape == (3, input_size, input_size) and cam.dtype == np.float32, method
        assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0, method
        assert cam.max() > 0.5, f"{method}: a flat map explains nothing"
    assert not any(p.requires_grad for p in model.parameters()), "frozen flags must survive"
    assert model.training, "the caller's mode comes back"
    assert all(p.grad is None for p in model.parameters())


def test_requires_grad_flags_are_left_exactly_as_they_were():
    model = _model("resnet18", 64)
    model.backbone.requires_grad_(False)  # frozen backbone, trainable head
    before = [p.requires_grad for p in model.parameters()]
    explain.class_activation_maps(model, _images(2, 64), target_class=0, methods=("gradcam",))
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())
    assert not model.backbone.layer4[-1]._forward_hooks, "grad-cam's hooks are removed"


def test_gradcam_equals_hirescam_right_before_global_pooling():
    """ResNet's layer4 output goes straight into average pooling and a linear head, so the logit's gradient is
    the same at every position and both methods reduce to sum_k w_k A_k: a check on the layer and the class."""
    model = _model("resnet18", 64)
    maps = explain.class_activation_maps(model, _images(2, 64), 1, methods=("gradcam", "hirescam"))
    np.testing.assert_allclose(maps["gradcam"], maps["hirescam"], atol=1e-4)


def test_unknown_arch_or_method_lists_the_choices():
    model = _model("efficientnet_lite0", 32)
    model.arch = "alexnet"
    with pytest.raises(KeyError, match="choose one of"):
        explain.cam_target(model)
    model.arch = "efficientnet_lite0"
    with pytest.raises(KeyError, match="choose from"):
        explain.class_activation_maps(model, _images(1, 32), 0, methods=("scorecam",))


def test_vit_reshape_drops_the_class_token():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # 1 + 2*2 tokens of width 3
    grid = backbones.vit_tokens_to_map(tokens)
    assert grid.shape == (2, 3, 2, 2)
    assert torch.equal(grid[:, :, 0, 1], tokens[:, 2, :]) and torch.equal(grid[:, :, 1, 0], tokens[:, 3, :])


@pytest.mark.parametrize("arch,shape", [("resnet18", (63, 63, 3)), ("vit_b16", (475, 475, 3))])
def test_first_layer_kernels_tile_in_unit_range(arch, shape):
    tiles = explain.first_layer_kernels(_model(arch, 32))
    assert tiles.shape == shape  # resnet: 64 kernels 7x7 in 8x8; vit: 768 patches 16x16 in 28x28, 1-px gaps
    assert np.isfinite(tiles).all() and tiles.min() == 0.0 and tiles.max() == 1.0
    assert (tiles[7, :] == 1.0).all() if arch == "resnet18" else (tiles[16, :] == 1.0).all()  # the white gap


def test_input_gradients_at_input_size_on_a_frozen_model():
    model = _model("resnet18", 32, frozen=True)
    x = _images(4, 40)
    grads = explain.input_gradients(model, x, [0, 1, 0, 1])
    assert grads.shape == (4, 40, 40) and np.isfinite(grads).all() and (grads >= 0).all()
    assert (grads.reshape(4, -1).max(1) > 0).all()
    one = explain.input_gradients(model, x[:1], [0])  # summed loss: a map does not depend on its batch
    np.testing.assert_allclose(one[0], grads[0], rtol=1e-4, atol=1e-8)
    assert not any(p.requires_grad for p in model.parameters())


def test_pick_examples_covers_each_kind_and_is_seeded():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    probs = rng.random(200)
    picks = explain.pick_examples(probs, labels, per_kind=5, seed=3)
    predicted = probs >= 0.5
    truth = {"TP": (1, True), "TN": (0, False), "FP": (0, True), "FN": (1, False)}
    assert list(picks) == ["TP", "TN", "FP", "FN"]
    for kind, idx in picks.items():
        assert len(idx) == 5 and (np.diff(idx) > 0).all()
        assert (labels[idx] == truth[kind][0]).all() and (predicted[idx] == truth[kind][1]).all()
    again = explain.pick_examples(probs, labels, per_kind=5, seed=3)
    assert all(np.array_equal(picks[k], again[k]) for k in picks)
    other = explain.pick_examples(probs, labels, per_kind=5, seed=4)
    assert any(not np.array_equal(picks[k], other[k]) for k in picks)


def test_pick_examples_returns_fewer_when_few_exist():
    picks = explain.pick_examples([0.9, 0.8, 0.1], [1, 1, 1], per_kind=5, seed=0)
    assert picks["TP"].tolist() == [0, 1] and picks["FN"].tolist() == [2]
    assert len(picks["TN"]) == 0 and len(picks["FP"]) == 0
    two_column = explain.pick_examples(np.array([[0.1, 0.9], [0.8, 0.2]]), [1, 0], per_kind=1, seed=0)
    assert two_column["TP"].tolist() == [0] and two_column["TN"].tolist() == [1]


def test_figures_are_valid_pngs_with_no_leftovers(tmp_path):
    images = _images(2, 32).numpy()
    maps = {m: np.random.default_rng(0).random((2, 32, 32)).astype(np.float32) for m in explain.CAM_METHODS}
    explain.save_cam_grid(tmp_path / "cams.png", images, maps, ["TP p=0.93", "FN p=0.12"])
    explain.save_image_grid(tmp_path / "kernels.png", np.random.default_rng(1).random((23, 23, 3)), "first conv")
    explain.save_image_grid(tmp_path / "gray.png", np.random.default_rng(2).random((10, 30)), "gray")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cams.png", "gray.png", "kernels.png"]
    for name in ("cams.png", "gray.png", "kernels.png"):
        with Image.open(tmp_path / name) as png:
            png.verify()
            assert png.format == "PNG"
    with Image.open(tmp_path / "cams.png") as png:
        width, height = png.size
    assert width > height  # four columns, two rows


@pytest.mark.slow
def test_vgg16_cams_and_kernels():
    """VGG16 builds its 100M-parameter classifier in a few seconds; one test covers its target layer."""
    model = _model("vgg16", 64, frozen=True)
    maps = explain.class_activation_maps(model, _images(2, 80), target_class=0)
    assert all(cam.shape == (2, 80, 80) and 0 <= cam.min() and cam.max() <= 1 for cam in maps.values())
    assert explain.first_layer_kernels(model).shape == (31, 31, 3)  # 64 kernels 3x3 in 8x8
