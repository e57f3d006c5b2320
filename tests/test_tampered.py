"""Weights and checkpoints never run code: a pickle with a payload is refused with a message that says what
to do, and the payload does not run."""

import os
import pickle

import pytest
import torch

from covidct import classifier, heads
from covidct.backbones import create_backbone
from covidct.errors import DataError, WeightsUnavailable


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run a command when unpickled
        return (os.system, (f"touch {self.marker}",))


def write_payload(path, marker):
    """A file torch.load would accept as a legacy checkpoint if it allowed arbitrary pickles."""
    torch.save({"conv1.weight": Payload(marker)}, path)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


@pytest.mark.parametrize("backbone, file", [("resnet18", "resnet18-f37072fd.pth"), ("vit_b16", "B_16_imagenet1k.pth")])
def test_a_tampered_weights_file_is_refused_and_its_code_never_runs(torch_home, tmp_path, backbone, file):
    marker = tmp_path / "pwned"
    write_payload(torch_home / file, marker)
    with pytest.raises(WeightsUnavailable) as err:
        create_backbone(backbone, "imagenet", 64)
    message = str(err.value)
    assert f"Refused to load {torch_home / file}" in message and "delete it and rerun" in message
    assert not marker.exists(), "the pickled command ran"


def test_a_truncated_weights_file_says_partial_download(torch_home):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), torch_home / "resnet18-f37072fd.pth")
    data = (torch_home / "resnet18-f37072fd.pth").read_bytes()
    (torch_home / "resnet18-f37072fd.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsUnavailable, match=r"probably a partial download. Delete it and rerun"):
        create_backbone("resnet18", "imagenet", 64)


def test_a_pickle_in_place_of_a_model_checkpoint_is_refused(tmp_path):
    model = classifier.build_classifier("resnet18", "scratch", 2, 32)
    classifier.save(model, tmp_path / "ft", {"init": "scratch", "label_names": ["Normal", "COVID-19"]})
    marker = tmp_path / "pwned"
    (tmp_path / "ft/model.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match=r"model.safetensors: not a readable safetensors checkpoint.*dvc checkout"):
        classifier.load(tmp_path / "ft")

    import numpy as np

    head = heads.create_head("logreg", {"C": 1.0, "max_iter": 100})
    x, y = np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2
    head.fit(x, y, x, y, positive=1)
    head.save(tmp_path / "head")
    (tmp_path / "head/head.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match=r"head.safetensors: not a readable safetensors head"):
        heads.load_head(tmp_path / "head")
    assert not marker.exists()
