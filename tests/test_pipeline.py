"""The caching promise, on the committed dvc.yaml: shrunk through params.yaml only."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "covidct", ".dvc/config", ".dvcignore", ".gitignore"]


def shrink(params: dict) -> dict:
    params["sample"].update(image_size=96, patients={"train": 4, "val": 2, "test": 2}, slices_per_patient=[2, 2],
                            class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5})
    params["crop"].update(image_size=40, workers=2)
    params["extract"]["batch_size"] = 8
    for cfg in params["backbones"].values():
        cfg["image_size"] = 32
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        src, dst = ROOT / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(shrink(params), sort_keys=False))
    return work


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


@pytest.mark.slow
def test_each_change_reruns_exactly_what_depends_on_it(project):
    backbones = {f"extract@{name}" for name in yaml.safe_load((project / "params.yaml").read_text())["backbones"]}
    assert repro(project) == {"download", "crop"} | backbones
    for name in backbones:
        backbone = name.split("@")[1]
        assert sorted(p.name for p in (project / "data/features" / backbone).iterdir()) == [
            "test.parquet", "train.parquet", "val.parquet"]

    assert repro(project) == set(), "nothing changed, nothing may rerun"

    set_param(project, "backbones.resnet18.image_size", 48)
    assert repro(project) == {"extract@resnet18"}

    set_param(project, "crop.image_size", 36)
    assert repro(project) == {"crop"} | backbones

    assert repro(project) == set()


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
