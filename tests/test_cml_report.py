"""The pull-request report script (.github/scripts/cml_report.py) against a small fake repository: a base branch
and a pull-request commit of params and metrics files, dvc.yaml's real top-level plots, and `cml` stubbed on PATH
to record how it is called. Nothing of the pipeline runs; each test takes a few seconds."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".github/scripts/cml_report.py"
VENV_BIN = str(Path(sys.executable).parent)  # dvc


def sh(cwd: Path, *command: str) -> None:
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def environment(tmp_path: Path, **extra: str) -> dict:
    """A stub `cml` first on PATH, appending its working directory and arguments to cml.log; no AWS variables
    from the machine running the tests."""
    stub = tmp_path / "bin/cml"
    write(stub, '#!/bin/sh\n{ echo "cwd=$PWD"; for arg in "$@"; do echo "arg=$arg"; done; } >> "$CML_LOG"\n')
    stub.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "CML_", "GITHUB_"))}
    return {**env, "PATH": os.pathsep.join([str(stub.parent), VENV_BIN, env["PATH"]]),
            "CML_LOG": str(tmp_path / "cml.log"), "DVC_NO_ANALYTICS": "1", **extra}


def run_script(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=repo, env=env, capture_output=True, text=True,
                          check=False)


def git_dvc_repo(path: Path) -> Path:
    path.mkdir()
    sh(path, "git", "init", "-q", "-b", "main")
    sh(path, "git", "config", "user.email", "ci@example.org")
    sh(path, "git", "config", "user.name", "CI")
    sh(path, "dvc", "init", "-q")
    return path


def summary(accuracy: dict) -> str:
    return json.dumps({model: {"accuracy": value, "roc_auc": 0.9, "sensitivity": 0.8, "specificity": 0.7,
                               "patient_accuracy": 0.75} for model, value in accuracy.items()}, indent=2)


def curves(models: dict) -> dict:
    """The report stage's comparison files: a three-point ROC and PR curve per model, a confusion matrix each."""
    roc = ["model,point,fpr,tpr"] + [f"{m},{i},{x},{y}" for m, mid in models.items()
                                      for i, (x, y) in enumerate([(0, 0), (0.2, mid), (1, 1)])]
    pr = ["model,point,recall,precision"] + [f"{m},{i},{x},{y}" for m, mid in models.items()
                                              for i, (x, y) in enumerate([(1, 0.5), (0.8, mid), (0, 1)])]
    confusion = ["model,actual,predicted,count"] + [f"{m},{a},{p},{5 + 3 * (a == p)}" for m in models
                                                     for a in ("COVID-19", "not COVID-19")
                                                     for p in ("COVID-19", "not COVID-19")]
    return {"plots/compare/roc.csv": roc, "plots/compare/precision_recall.csv": pr,
            "plots/compare/confusion.csv": confusion}


@pytest.fixture()
def pull_request(tmp_path):
    """Base `main` with three models; a pull request that widens the MLP (resnet18-mlp's accuracy changes) and
    changes a per-model file only (vgg16-logreg's confidence intervals); vit_b16-mlp stays as it was."""
    repo = git_dvc_repo(tmp_path / "repo")
    for template in (ROOT / ".dvc/plots").glob("*.json"):
        write(repo / ".dvc/plots" / template.name, template.read_text())
    # The real top-level plots, so that the script's targets are checked against them; one stage for params
    # and the metrics file (its cmd never runs).
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    stage = {"cmd": "true", "params": ["heads"], "metrics": [{"metrics/summary.json": {"cache": False}}]}
    write(repo / "dvc.yaml", yaml.safe_dump({"plots": plots, "stages": {"report": stage}}, sort_keys=False))
    write(repo / ".gitignore", "/plots/explain\n")  # DVC outputs in the real repository, never in git

    def commit(hidden: int, accuracy: dict, vgg_ci: float, message: str) -> None:
        write(repo / "params.yaml", f"heads:\n  mlp:\n    hidden: {hidden}\n")
        write(repo / "metrics/summary.json", summary(accuracy))
        for model, value in accuracy.items():
            full = {"slice": {"accuracy": {"value": value, "ci_low": vgg_ci if model == "vgg16-logreg" else 0.5}}}
            write(repo / f"metrics/models/{model}.json", json.dumps(full, indent=2))
        for path, lines in curves({model: value - 0.1 for model, value in accuracy.items()}).items():
            write(repo / path, "\n".join(lines) + "\n")
        sh(repo, "git", "add", "-A")
        sh(repo, "git", "commit", "-q", "-m", message)

    commit(256, {"resnet18-mlp": 0.8, "vgg16-logreg": 0.7, "vit_b16-mlp": 0.6}, 0.60, "base")
    sh(repo, "git", "switch", "-q", "-c", "wider-mlp")
    commit(512, {"resnet18-mlp": 0.9, "vgg16-logreg": 0.7, "vit_b16-mlp": 0.6}, 0.61, "wider MLP")
    for model in ("resnet18-mlp", "vgg16-logreg", "vit_b16-mlp"):
        write(repo / f"plots/explain/{model}/cams.png", f"CAMs of {model}")
    return repo


def test_report_updates_one_comment_with_the_diffs_plots_and_changed_models_cams(pull_request, tmp_path):
    env = environment(tmp_path, PR_HEAD_SHA="0123456789abcdef")
    result = run_script(pull_request, env, "report", "main")
    assert result.returncode == 0, result.stdout + result.stderr
    out = pull_request / "cml-report"
    report = (out / "report.md").read_text()

    # One call, an update of this workflow's own comment, from the report's folder (images are relative to it).
    log = (tmp_path / "cml.log").read_text().splitlines()
    assert log[0] == f"cwd={out}"
    assert [line.removeprefix("arg=") for line in log[1:]] == [
        "comment", "update", "--target=pr", "--watermark-title=covidct CML report", "--publish", "report.md"]

    assert report.startswith("# CML report: `main` → 0123456")
    params = report.split("## Params")[1].split("##")[0]
    assert re.search(r"\| Path +\| Param +\| main +\| pull request +\|", params)
    assert re.search(r"\| params.yaml +\| heads.mlp.hidden +\| 256 +\| 512 +\|", params)
    metrics = report.split("## Metrics (metrics/summary.json)")[1].split("##")[0].strip().splitlines()
    assert metrics == [
        "| Model | accuracy | roc_auc | sensitivity | specificity | patient_accuracy |", "|---" * 6 + "|",
        "| resnet18-mlp | 0.800 → **0.900** (+0.100) | 0.900 | 0.800 | 0.700 | 0.750 |"]  # only what changed

    for image in ("roc.png", "pr.png", "confusion.png"):
        assert f"](./{image})" in report
        assert (out / image).read_bytes().startswith(b"\x89PNG"), image
    for link in re.findall(r"\]\(\./([^)]+)\)", report):
        assert (out / link).is_file(), f"{link}: every image the comment links is beside it, for cml to upload"
    assert (out / "plots/index.html").exists() and (out / "exp_diff.md").exists()

    cams = report.split("## Class activation maps of the models that changed")[1]
    for model in ("resnet18-mlp", "vgg16-logreg"):  # its summary entry changed; its full metrics file did
        assert f"](./cams/{model}.png)" in cams
        assert (out / f"cams/{model}.png").read_text() == f"CAMs of {model}"
    assert "vit_b16-mlp" not in cams


def test_a_removed_model_is_listed_without_cams(pull_request, tmp_path):
    (pull_request / "metrics/models/vit_b16-mlp.json").unlink()
    entries = json.loads((pull_request / "metrics/summary.json").read_text())
    del entries["vit_b16-mlp"]
    write(pull_request / "metrics/summary.json", json.dumps(entries))
    result = run_script(pull_request, environment(tmp_path), "report", "main", "--no-post")
    assert result.returncode == 0, result.stdout + result.stderr
    cams = (pull_request / "cml-report/report.md").read_text().split("## Class activation maps")[1]
    assert "<b>vit_b16-mlp</b></summary>\n\n_Removed by this pull request._" in cams
    assert not (tmp_path / "cml.log").exists(), "--no-post posts nothing"


@pytest.fixture()
def repo(tmp_path):
    return git_dvc_repo(tmp_path / "repo")


def test_no_remote_fails_with_what_to_configure(repo, tmp_path):
    result = run_script(repo, environment(tmp_path), "pull")
    assert result.returncode == 1
    assert result.stdout.startswith("::error title=No DVC remote::")
    for advice in ("dvc remote add -d", "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", "CML_NO_REMOTE",
                   "docs/scaling-out.md#"):
        assert advice in result.stderr, advice


@pytest.mark.parametrize("secrets, missing", [({}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
                                              ({"AWS_ACCESS_KEY_ID": "AKIA"}, "AWS_SECRET_ACCESS_KEY")])
def test_an_s3_remote_without_credentials_fails_naming_the_secrets(repo, tmp_path, secrets, missing):
    sh(repo, "dvc", "remote", "add", "-d", "storage", "s3://bucket/covidct")
    result = run_script(repo, environment(tmp_path, **secrets), "pull")
    assert result.returncode == 1
    assert result.stdout.startswith("::error title=No credentials for the DVC remote::")
    assert f"DVC remote 'storage' (s3://bucket/covidct) needs {missing}, which are not set." in result.stdout


def test_the_opt_out_and_a_reachable_remote_pass(repo, tmp_path):
    result = run_script(repo, environment(tmp_path, CML_NO_REMOTE="true"), "pull")
    assert result.returncode == 0 and result.stdout.startswith("::notice title=No DVC remote::")
    (tmp_path / "remote").mkdir()
    sh(repo, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote"))  # a local one needs no secrets
    result = run_script(repo, environment(tmp_path), "pull")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unreachable_remote_fails_with_the_cause(repo, tmp_path):
    sh(repo, "dvc", "remote", "add", "-d", "storage", "s3://bucket/covidct")
    sh(repo, "dvc", "remote", "modify", "storage", "endpointurl", "http://127.0.0.1:9")  # nothing listens there
    env = environment(tmp_path, AWS_ACCESS_KEY_ID="AKIA", AWS_SECRET_ACCESS_KEY="secret", AWS_MAX_ATTEMPTS="1")
    result = run_script(repo, env, "pull")
    assert result.returncode == 1
    assert result.stdout.startswith("::error title=DVC pull failed::could not pull from DVC remote 'storage'")
    assert "Could not connect to the endpoint URL" in result.stderr, "dvc's own message, the cause"
