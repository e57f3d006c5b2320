"""The caching promise, on the committed dvc.yaml: shrunk through params.yaml only."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_project

ROOT = Path(__file__).resolve().parents[1]


def shrink(params: dict) -> dict:
    params["sample"].update(image_size=96, patients={"train": 4, "val": 2, "test": 2}, slices_per_patient=[2, 2],
                            class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5})
    params["crop"].update(image_size=40, workers=2)
    params["extract"]["batch_size"] = 8
    for cfg in params["backbones"].values():
        cfg["image_size"] = 32
    params["heads"]["mlp"].update(hidden=16, epochs=2)
    params["evaluate"]["bootstrap"] = 50
    for run in params["finetune"]["runs"].values():
        run["image_size"] = 32
    params["finetune"]["train"].update(epochs=2, batch_size=8)
    params["explain"]["per_kind"] = 1
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"), shrink)


def set_param(work: Path, dotted: str, value) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def repro(work: Path) -> set[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=work, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def stages_of(params: dict, backbones=None, heads=None) -> set[str]:
    """Names of the extract/train/evaluate/explain stages for these backbones and heads (all by default)."""
    backbones = list(params["backbones"]) if backbones is None else backbones
    heads = list(params["heads"]) if heads is None else heads
    models = {f"{b}-{h}" for b in backbones for h in heads}
    return ({f"extract@{b}" for b in backbones} if heads == list(params["heads"]) else set()) | {
        f"{stage}@{m}" for stage in ("train", "evaluate", "explain") for m in models}


def finetune_stages(params: dict) -> set[str]:
    return {f"{stage}@{run}" for stage in ("finetune", "evaluate_finetune", "explain_finetune")
            for run in params["finetune"]["runs"]}


@pytest.mark.slow
def test_each_change_reruns_exactly_what_depends_on_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    everything = {"download", "crop", "report"} | stages_of(params) | finetune_stages(params)
    assert repro(project) == everything
    for backbone in params["backbones"]:
        assert sorted(p.name for p in (project / "data/features" / backbone).iterdir()) == [
            "test.parquet", "train.parquet", "val.parquet"]
    for model in (f"{b}-{h}" for b in params["backbones"] for h in params["heads"]):
        assert (project / f"metrics/{model}.json").is_file() and (project / f"plots/{model}/epochs.csv").is_file()
    for run in params["finetune"]["runs"]:
        assert (project / f"metrics/finetune/{run}.json").is_file()
        assert sorted(p.name for p in (project / f"plots/explain/finetune-{run}").glob("[!.]*")) == [
            "cams.png", "examples.json", "kernels.png"]
    assert (project / "plots/explain/vit_b16-mlp/cams.png").is_file()
    summary = (project / "metrics/summary.md").read_text()
    assert "| Model |" in summary and "| finetune-resnet18-scratch |" in summary

    assert repro(project) == set(), "nothing changed, nothing may rerun"

    set_param(project, "heads.mlp.hidden", 24)
    assert repro(project) == {"report"} | stages_of(params, heads=["mlp"]), "a head change never reruns extract"

    set_param(project, "backbones.resnet18.image_size", 48)
    assert repro(project) == {"report"} | stages_of(params, backbones=["resnet18"])

    set_param(project, "finetune.train.weight_decay", 0.01)
    assert repro(project) == {"report"} | finetune_stages(params), "fine-tuning never reruns the heads"

    set_param(project, "explain.seed", 1)
    assert repro(project) == {s for s in everything if s.startswith("explain")}, "a figure change reruns figures only"

    assert repro(project) == set()


@pytest.mark.slow
def test_every_plot_renders_in_dvc_plots_show(project):
    """Runs after the repro above (same module fixture): each declared plot is in the HTML."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", "plots_html"], cwd=project, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    html = (project / "plots_html/index.html").read_text()
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    titles = [next(iter(entry)) for entry in dvc_yaml["plots"]]
    assert len(titles) >= 5
    for title in titles:
        assert title in html, f"plot {title!r} missing from dvc plots show"
    params = yaml.safe_load((project / "params.yaml").read_text())
    for model in (f"{b}-{h}" for b in params["backbones"] for h in params["heads"]):
        assert f"plots/{model}/epochs.csv" in html


def test_dvc_yaml_lists_every_model():
    """report's deps and the overlaid plots are spelled out in dvc.yaml: they must cover params.yaml's models."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    models = [f"{b}-{h}" for b in params["backbones"] for h in params["heads"]]
    runs = list(params["finetune"]["runs"])
    assert sorted(dvc_yaml["stages"]["report"]["deps"]) == sorted(
        ["stages/report.py", "covidct/report.py", "metrics/finetune"] + [f"metrics/{m}.json" for m in models])
    plots = {next(iter(entry)): next(iter(entry.values())) for entry in dvc_yaml["plots"]}
    for title, spec in plots.items():
        files = " ".join(spec["y"])
        if title.startswith(("ROC", "Precision-recall", "Calibration")):
            assert all(f"dvclive/{m}/evaluate/" in files for m in models), title
            assert all(f"dvclive/finetune/{run}/evaluate/" in files for run in runs), title
    for m in models + [f"finetune-{run}" for run in runs]:
        assert f"Confusion matrix {m} (test)" in plots
    for run in runs:
        assert any(title.startswith("Fine-tuning loss") and f"finetune-{run}" in title for title in plots), run


def test_no_param_is_named_like_dvc_file_metadata():
    """DVC leaves keys named `size`/`nfiles` out of its run-cache key (treeverse/dvc#10296): a change to such a
    param would check out stale outputs from the run-cache instead of rerunning the stage."""

    def keys(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield f"{prefix}{k}", k
                yield from keys(v, f"{prefix}{k}.")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert [dotted for dotted, k in keys(params) if k in ("size", "nfiles")] == []
