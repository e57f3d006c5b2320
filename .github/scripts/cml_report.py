"""The pull-request report of .github/workflows/cml.yaml. It lives here, not in the workflow's YAML, so that it
runs anywhere and is tested (tests/test_cml_report.py) against a fake repository with `cml` stubbed.

    python .github/scripts/cml_report.py pull    # check the DVC remote and credentials, pull the run-cache
    python .github/scripts/cml_report.py report BASE [--out DIR] [--no-post]

`report` writes DIR/report.md with its images (and, for the run's artifact, the full `dvc exp diff` and the
interactive plots), then posts it with `cml comment update`: one comment per pull request, edited on every push.

Environment: CML_NO_REMOTE=true to run without a DVC remote (every stage reruns; docs/scaling-out.md says
when that fits); AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for an S3 remote; PR_HEAD_SHA, the commit named
in the comment (CI checks out a merge commit, whose id means nothing to a reviewer).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = "docs/scaling-out.md#the-dvc-remote-and-the-secrets-of-the-cml-report"
SUMMARY = "metrics/summary.json"  # {"<model>": {"accuracy": ..., "roc_auc": ...}}: the compact metrics
MODELS = "metrics/models"  # <model>.json: every metric of one model, git-tracked
CAMS = "plots/explain/{}/cams.png"  # the explain stage's grid of class activation maps (a DVC output)
# Comment image -> the start of a top-level plot id in dvc.yaml. DVC matches a target as a regular expression
# from the start of the id, and the full ids hold parentheses, so the start is what names one plot.
PLOTS = {"roc.png": "ROC curve", "pr.png": "Precision-recall curve", "confusion.png": "Confusion matrices"}
# Marks this workflow's comment, so that `cml comment update` edits it and no other CML comment.
WATERMARK = "covidct CML report"
# Credentials an S3 remote can have in .dvc/config(.local) instead of the environment.
S3_CONFIG_CREDENTIALS = ("access_key_id", "profile", "credentialpath")
S3_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def output(*command: str) -> str:
    """stdout of a command that must succeed; its stderr goes to the log."""
    return subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True).stdout


def fail(title: str, summary: str, details: str) -> int:
    """A GitHub error annotation (shown on the pull request's checks), then the details in the log."""
    print(f"::error title={title}::{summary} See {DOCS}.")
    print(f"\n{title}: {summary}\n\n{details.strip()}\n\nSee {DOCS}.", file=sys.stderr)
    return 1


def without_remote() -> bool:
    return os.environ.get("CML_NO_REMOTE", "").strip().lower() == "true"


HOW_TO_CONFIGURE = f"""
Either configure the remote (once, committed) and its credentials:
    dvc remote add -d storage s3://<bucket>/<path>
    git add .dvc/config && git commit -m "DVC remote"
    then add the repository secrets {' and '.join(S3_SECRETS)}
    (Settings > Secrets and variables > Actions > Secrets; pull requests from forks get no secrets).
Or run without a remote, every stage recomputed in CI: set the repository variable CML_NO_REMOTE to true
    (Settings > Secrets and variables > Actions > Variables).
"""


def pull() -> int:
    if without_remote():
        print("::notice title=No DVC remote::CML_NO_REMOTE is true: every stage runs here, none is restored.")
        return 0
    config = dict(line.split("=", 1) for line in output("dvc", "config", "--list").splitlines() if "=" in line)
    remote = config.get("core.remote")
    if not remote:
        return fail("No DVC remote", "the repository has no default DVC remote to restore stages from.",
                    HOW_TO_CONFIGURE)
    url = config.get(f"remote.{remote}.url", "")
    if url.startswith("s3://") and not any(f"remote.{remote}.{key}" in config for key in S3_CONFIG_CREDENTIALS):
        missing = [name for name in S3_SECRETS if not os.environ.get(name)]
        if missing:
            return fail("No credentials for the DVC remote",
                        f"DVC remote '{remote}' ({url}) needs {' and '.join(missing)}, which are not set.",
                        HOW_TO_CONFIGURE)
    # --allow-missing: outputs nobody pushed are no error, their stages just rerun. What fails now is the
    # remote itself: unreachable, a wrong bucket or endpoint, rejected credentials.
    if subprocess.run(["dvc", "pull", "--run-cache", "--allow-missing"], check=False).returncode:
        return fail("DVC pull failed", f"could not pull from DVC remote '{remote}' ({url}); the cause is above.",
                    f"Check its url and endpointurl in .dvc/config and the secrets {' and '.join(S3_SECRETS)}."
                    + HOW_TO_CONFIGURE)
    return 0


def params_table(base: str) -> str:
    """`dvc params diff` as Markdown, or a line saying nothing changed."""
    text = output("dvc", "params", "diff", base, "--md")
    if sum(line.startswith("|") for line in text.splitlines()) <= 2:
        return "_No change._"
    header, rest = text.strip().split("\n", 1)
    return header.replace("workspace", "pull request") + "\n" + rest  # the workspace is the PR's, reproduced


def summary_at(rev: str | None) -> dict:
    """The models' entries of metrics/summary.json at a git revision (None: the workspace); {} where there is
    none. An entry is {metric: number}: a base branch from before that layout counts as having no models."""
    if rev is None:
        path = Path(SUMMARY)
        text = path.read_text() if path.exists() else "{}"
    else:
        shown = subprocess.run(["git", "show", f"{rev}:{SUMMARY}"], capture_output=True, text=True, check=False)
        text = shown.stdout if shown.returncode == 0 else "{}"
    return {model: entry for model, entry in json.loads(text).items()
            if isinstance(entry, dict) and all(isinstance(value, (int, float)) for value in entry.values())}


def summary_changes(base: str) -> tuple[dict, dict, list[str]]:
    """The summary at BASE and in the workspace, and the models whose entry differs."""
    before, after = summary_at(base), summary_at(None)
    return before, after, sorted(model for model in before.keys() | after.keys()
                                 if before.get(model) != after.get(model))


def number(value) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def metrics_table(base: str) -> str:
    """The compact metrics diff: one row per model whose summary entry changed, one column per metric, a
    changed value as base → pull request (difference). dvc metrics diff would give a row per model and metric."""
    before, after, models = summary_changes(base)
    if not models:
        return "_No change._"
    names = list(dict.fromkeys(name for model in models
                               for name in [*before.get(model, {}), *after.get(model, {})]))
    rows = ["| Model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for model in models:
        cells = []
        for name in names:
            old, new = before.get(model, {}).get(name), after.get(model, {}).get(name)
            numeric = all(isinstance(value, (int, float)) for value in (old, new))
            cells.append(number(new) if old == new else
                         f"{number(old)} → **{number(new)}**" + (f" ({new - old:+.3f})" if numeric else ""))
        rows.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def changed_models(base: str) -> list[str]:
    """Models whose full metrics file or summary entry differs between BASE and the workspace."""
    files = output("git", "diff", "--name-only", base, "--", MODELS).split()
    return sorted({Path(name).stem for name in files if name.endswith(".json")} | set(summary_changes(base)[2]))


def render_plots(base: str, out: Path) -> None:
    """The comparison charts as PNGs, from the Vega-Lite specs DVC fills in (what `--show-vega` prints, for
    every target in one call), rendered by vl-convert: no browser, no node."""
    import vl_convert

    shown = output("dvc", "plots", "diff", base, "--json", "--targets", *PLOTS.values())
    # parse_constant: DVC's data may hold Infinity or NaN, which the renderer's JSON cannot carry.
    plots = json.loads(shown, parse_constant=lambda _: None)["data"]
    for image, target in PLOTS.items():
        specs = [spec for plot_id, specs in plots.items() if plot_id.startswith(target) for spec in specs]
        if not specs:
            raise SystemExit(f"no data for the plot {target!r}: is it still a top-level plot in dvc.yaml?")
        spec = specs[0]["content"]
        for row in spec["data"]["values"]:  # the legend names the revisions: the workspace is the PR's
            if row.get("rev") == "workspace":
                row["rev"] = "pull request"
        (out / image).write_bytes(vl_convert.vegalite_to_png(spec, scale=2))


def cam_section(models: list[str], out: Path) -> list[str]:
    if not models:
        return ["_No model's metrics changed._"]
    (out / "cams").mkdir(exist_ok=True)
    lines = []
    present = summary_at(None)
    for model in models:
        source = Path(CAMS.format(model))
        if model not in present:  # whatever an earlier run left in plots/explain is not this pull request's
            body = "_Removed by this pull request._"
        elif source.exists():
            shutil.copy(source, out / "cams" / f"{model}.png")  # beside report.md: cml uploads it from there
            body = f"![Class activation maps of {model}](./cams/{model}.png)"
        else:
            body = f"_No CAM grid at {source}._"
        # Open when only a few changed: a params change can touch every model, 1 MB of image each.
        lines += [f"<details{' open' * (len(models) <= 3)}><summary><b>{model}</b></summary>", "", body, "",
                  "</details>"]
    return lines


def report(base: str, out: Path, post: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    params, metrics = params_table(base), metrics_table(base)
    (out / "exp_diff.md").write_text(output("dvc", "exp", "diff", base, "--md"))  # everything, for the artifact
    render_plots(base, out)
    subprocess.run(["dvc", "plots", "diff", base, "--targets", *PLOTS.values(), "-o", str(out / "plots")],
                   check=True, stdout=subprocess.DEVNULL)  # interactive HTML, for the artifact
    models = changed_models(base)
    head = os.environ.get("PR_HEAD_SHA") or output("git", "rev-parse", "HEAD").strip()
    restored = ("every stage ran here (no DVC remote: `CML_NO_REMOTE`)" if without_remote()
                else "stages found in the DVC remote's run-cache were restored, not rerun")
    results = Path("metrics/summary.md")
    lines = [
        f"# CML report: `{base}` → {head[:7]}",
        "",
        (f"Reproduced on the embedded phantom sample (`make demo`), not the full study; {restored}. "
         "Every push to the pull request updates this comment."),
        "",
        "## Params", "", params, "",
        f"## Metrics ({SUMMARY})", "", metrics, "",
        "## ROC and precision-recall (one colour per model, one dash per revision)", "",
        "![ROC curve](./roc.png)", "![Precision-recall curve](./pr.png)", "",
        "<details><summary>Confusion matrices</summary>", "", "![Confusion matrices](./confusion.png)", "",
        "</details>", "",
        "## Class activation maps of the models that changed", "",
        *cam_section(models, out), "",
    ]
    if results.exists():  # the pull request's full results table, its title line left out
        lines += ["<details><summary>Test results of this pull request</summary>", "",
                  *results.read_text().splitlines()[1:], "", "</details>", ""]
    lines.append("Every changed metric and param (`dvc exp diff`) and the interactive plots: the run's "
                 "`cml-report` artifact.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if post:
        # update, not create: edits this workflow's earlier comment (found by its watermark), posts one if none.
        # --target=pr: a pull-request comment, which the default GITHUB_TOKEN may edit (a commit comment it may
        # not: "commit_id has been locked", iterative/cml#888). --publish uploads the local images.
        subprocess.run(["cml", "comment", "update", "--target=pr", f"--watermark-title={WATERMARK}", "--publish",
                        "report.md"], cwd=out, check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("pull", help="check the DVC remote and its credentials, then pull the run-cache")
    to_report = commands.add_parser("report", help="write the report and post or update the PR comment")
    to_report.add_argument("base", help="the base branch (a local git revision)")
    to_report.add_argument("--out", type=Path, default=Path("cml-report"), help="folder for report.md and images")
    to_report.add_argument("--no-post", dest="post", action="store_false", help="write the report only")
    args = parser.parse_args(argv)
    return pull() if args.command == "pull" else report(args.base, args.out, args.post)


if __name__ == "__main__":
    sys.exit(main())
