"""Adding a backbone is what the README says: register it in covidct/backbones.py and give it a params entry.

A tiny conv net is registered in a copy of the project (appended to its backbones.py, as a user would), and the
committed dvc.yaml runs it through every stage: extract, heads, evaluation, explanations, fine-tuning, report."""

import pytest
from conftest import dvc, make_project, stages_run

TINY_NET = '''

class TinyNet(nn.Module):
    """Two convolutions and a global average pool: 16 features, for tests."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x):
        return self.features(x).mean(dim=(2, 3))


@register("tiny", 16, 32, cam_layer=lambda b: b.features[-1], min_size=8)
def _tiny(pretrained: bool, image_size: int) -> nn.Module:
    if pretrained:
        raise WeightsUnavailable("tiny has no pretrained weights: set its weights to none")
    return TinyNet()
'''


def tiny_only(p):
    p["sample"].update(image_size=96, patients={"train": 4, "val": 2, "test": 2}, slices_per_patient=[3, 3],
                       class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5})
    p["crop"].update(image_size=32, workers=1)
    p["backbones"] = {"tiny": {"weights": "none", "image_size": 32, "seed": 0}}
    p["heads"]["mlp"].update(hidden=8, epochs=2)
    p["evaluate"]["bootstrap"] = 20
    p["finetune"]["runs"] = {"tiny-scratch": {"arch": "tiny", "init": "scratch", "image_size": 32}}
    p["finetune"]["train"].update(epochs=2, batch_size=4)
    p["explain"]["per_kind"] = 1


@pytest.mark.slow
def test_a_registered_backbone_runs_every_stage_with_no_other_code_change(tmp_path):
    project = make_project(tmp_path / "project", tiny_only)
    with (project / "covidct/backbones.py").open("a") as f:
        f.write(TINY_NET)

    models = ["tiny-logreg", "tiny-mlp"]
    expected = {"sample", "download", "crop", "extract@tiny", "confounding@tiny", "report", "finetune@tiny-scratch",
                "evaluate_finetune@tiny-scratch", "explain_finetune@tiny-scratch"}
    expected |= {f"{stage}@{model}" for stage in ("train", "evaluate", "loso", "explain") for model in models}
    assert stages_run(dvc(project, "repro")) == expected

    for model in models + ["finetune-tiny-scratch"]:
        assert (project / f"metrics/models/{model}.json").is_file()
        assert sorted(p.name for p in (project / f"plots/explain/{model}").glob("[!.]*")) == [
            "cams.png", "examples.json", "kernels.png"]
        assert f"| {model} |" in (project / "metrics/summary.md").read_text()
    assert "tiny-mlp" in (project / "plots/compare/roc.csv").read_text()
