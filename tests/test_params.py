import re
from pathlib import Path

import pytest
import yaml

from covidct import backbones, crop, explain, features, finetune, heads, metrics, params, phantom, sources
from covidct.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


# Every section of params.yaml and the module that checks it, as the stages pass them to params.load.
CHECKS = {"data": sources.check_params, "sample": phantom.check_params, "crop": crop.check_params,
          "extract": features.check_params, "backbones": backbones.check_params, "heads": heads.check_params,
          "finetune": finetune.check_params, "explain": explain.check_params, "evaluate": metrics.check_params}


def committed():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def problems(p: dict) -> list[str]:
    """Every problem the section checks find in a params dict."""
    return [problem for section, check in CHECKS.items() for problem in check(p[section])]


def test_every_section_of_params_yaml_has_a_check():
    assert set(committed()) == set(CHECKS)


def test_committed_params_are_valid_and_offline():
    p = params.load(ROOT / "params.yaml", **CHECKS)
    assert p["data"]["source"] == "sample"
    assert {name for name, b in p["backbones"].items() if b["weights"] == "imagenet"} == {"efficientnet_lite0"}


def test_the_readme_full_study_command_sets_valid_params(tmp_path):
    """Applies the README's -S overrides with DVC's own parser (Hydra grammar), as `dvc exp run` would."""
    import shlex

    from dvc.utils.hydra import apply_overrides

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- full-study-command -->.*?```bash\n(.*?)```", readme, re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    overrides = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    assert len(overrides) > 10
    for override in overrides:
        if not override.startswith("+"):  # plain overrides must name existing keys: a typo would add a dead param
            node = committed()
            for key in override.split("=")[0].split("."):
                assert key in node, f"README sets {override}, which params.yaml does not have"
                node = node[key]
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(tmp_path / "params.yaml"), overrides)
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert problems(p) == []
    params.load(tmp_path / "params.yaml", **CHECKS)
    assert p["data"]["source"] == "kaggle"
    for name, b in p["backbones"].items():
        assert b["weights"] == "imagenet"
        assert b["image_size"] == {"vit_b16": 384}.get(name, 224)
    runs = {(r["arch"], r["init"]) for r in p["finetune"]["runs"].values()}
    assert runs >= {(arch, init) for arch in ("resnet18", "resnet50") for init in ("scratch", "imagenet")}


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        ("data.source", "s3", "data.source='s3': choose one of ['sample', 'local', 'kaggle']"),
        ("crop.image_size", -5, "crop.image_size=-5: a positive integer"),
        ("crop.max_skipped_fraction", 1.5, "crop.max_skipped_fraction=1.5: must be in [0, 1]"),
        ("crop.balance", "smote", "crop.balance='smote': choose one of ['undersample', 'weighted', 'none']"),
        ("backbones.vit_b16.image_size", 100, "a multiple of 16"),
        ("backbones.vgg16.weights", "imagenet21k", "backbones.vgg16.weights='imagenet21k': choose one of"),
        ("heads.mlp.epochs", 0, "heads.mlp.epochs=0: a positive integer"),
        ("heads.mlp.max_lr", 1e-6, "heads.mlp: need 0 < base_lr <= max_lr, got 5e-05, 1e-06"),
        ("heads.mlp.dropout", 1.0, "heads.mlp.dropout=1.0: must be in [0, 1)"),
        ("evaluate.bootstrap", -1, "evaluate.bootstrap=-1: a positive integer"),
        ("finetune.runs.resnet18-scratch.init", "random", "finetune.runs.resnet18-scratch.init='random': choose one of"),
        ("finetune.runs.resnet18-scratch.arch", "alexnet", "finetune.runs.resnet18-scratch.arch='alexnet': choose from"),
        ("finetune.runs.resnet18-scratch.image_size", 8, "finetune.runs.resnet18-scratch.image_size=8: a positive integer >= 32"),
        ("finetune.runs.efficientnet_lite0-imagenet.lr", -1.0, "finetune.runs.efficientnet_lite0-imagenet: lr=-1.0 must be"),
        ("finetune.train.patience", 0, "finetune.train.patience=0: a positive integer"),
        ("explain.methods", ["gradcam", "scorecam"], "explain.methods=['gradcam', 'scorecam']: a non-empty list from"),
        ("explain.per_kind", 0, "explain.per_kind=0: a positive integer"),
        ("extract.precision", "fp16", "extract.precision='fp16': choose one of ['auto', 'fp32', 'bf16']"),
        ("heads.logreg.C", 0, "heads.logreg.C=0: a positive number"),
        ("evaluate.calibration_bins", 0, "evaluate.calibration_bins=0: a positive integer"),
        ("sample.slices_per_patient", [5, 2], "sample.slices_per_patient=[5, 2]: [min, max], 1 <= min <= max"),
    ],
)
def test_invalid_params_are_named_with_their_choices(tmp_path, dotted, value, message):
    p = committed()
    *parents, last = dotted.split(".")
    node = p
    for key in parents:
        node = node[key]
    node[last] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError) as err:
        params.load(tmp_path / "params.yaml", **CHECKS)
    assert message in str(err.value)
    section = dotted.split(".")[0]
    assert any(message in problem for problem in CHECKS[section](p[section])), "the section's own check names it"


def test_unknown_backbone_lists_the_registry(tmp_path):
    p = committed()
    p["backbones"]["alexnet"] = {"weights": "none", "image_size": 64}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"backbones.alexnet: unknown backbone; choose from \['efficientnet_lite0'"):
        params.load(tmp_path / "params.yaml", **CHECKS)


def test_a_finetune_run_is_named_after_its_arch_and_init(tmp_path):
    p = committed()
    p["finetune"]["runs"]["r18"] = {"arch": "resnet18", "init": "scratch", "image_size": 64}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"finetune.runs.r18: name the run resnet18-scratch"):
        params.load(tmp_path / "params.yaml", **CHECKS)


def test_unknown_head_lists_the_choices(tmp_path):
    p = committed()
    p["heads"]["svm"] = {"C": 1.0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"heads.svm: unknown head; choose from \['logreg', 'mlp'\]"):
        params.load(tmp_path / "params.yaml", **CHECKS)


def test_a_stage_reports_bad_params_in_one_line_without_traceback(tmp_path):
    import os
    import subprocess
    import sys

    p = committed()
    p["data"]["source"] = "ftp"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "stages.download", "--sample", "data/sample", "--out", "data/raw"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: params.yaml: data.source='ftp': choose one of")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # nothing started before the check


def test_all_problems_are_reported_together_and_only_for_the_sections_asked(tmp_path):
    p = committed()
    p["crop"]["image_size"], p["heads"]["mlp"]["epochs"] = 0, 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError) as err:
        params.load(tmp_path / "params.yaml", **CHECKS)
    assert "crop.image_size=0" in str(err.value) and "heads.mlp.epochs=0" in str(err.value)
    assert params.load(tmp_path / "params.yaml", data=sources.check_params)["crop"]["image_size"] == 0
    del p["explain"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"explain: missing, or not a mapping of keys"):
        params.load(tmp_path / "params.yaml", explain=explain.check_params)


def test_a_study_without_fine_tuning_runs_is_valid():
    p = committed()
    p["finetune"]["runs"] = {}
    assert finetune.check_params(p["finetune"]) == []
    p["finetune"]["runs"] = None
    assert finetune.check_params(p["finetune"]) == []
