"""The caching promise, on the committed dvc.yaml: shrunk through params.yaml only."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import dvc, dvc_env, make_project, stages_run
from test_dvc_yaml import closure, stage_groups, stage_module

ROOT = Path(__file__).resolve().parents[1]


def shrink(params: dict) -> dict:
    params["sample"].update(image_size=96, patients={"train": 4, "val": 2, "test": 2}, slices_per_patient=[2, 2],
                            class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5},
                            sites=2)  # each site keeps both classes in train: leave-one-source-out refits every one
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


ALWAYS = {"download"}  # always_changed: it stats the images on every repro (and changes nothing if they did not)


def repro(work: Path) -> set[str]:
    return stages_run(dvc(work, "repro"))


def exp_run(work: Path, *overrides: str) -> set[str]:
    return stages_run(dvc(work, "exp", "run", *(arg for o in overrides for arg in ("-S", o))))


def stage_names(work: Path) -> set[str]:
    """Every stage of the pipeline as DVC expands it (foreach/matrix instances by name)."""
    return {line.split()[0] for line in dvc(work, "stage", "list").stdout.splitlines() if line.strip()}


def stages_importing(work: Path, module: str) -> set[str]:
    """Instances of every stage whose import closure holds ``module``: what editing it must rerun, no more."""
    groups = {name for name, stage in stage_groups().items() if module in closure(stage_module(stage))}
    return {name for name in stage_names(work) if name.split("@")[0] in groups}


def stages_of(params: dict, backbones=None, heads=None) -> set[str]:
    """Names of the extract/confounding and train/evaluate/loso/explain stages for these backbones and heads (all by
    default)."""
    backbones = list(params["backbones"]) if backbones is None else backbones
    heads = list(params["heads"]) if heads is None else heads
    models = {f"{b}-{h}" for b in backbones for h in heads}
    per_backbone = {f"{stage}@{b}" for stage in ("extract", "confounding") for b in backbones}
    return (per_backbone if heads == list(params["heads"]) else set()) | {
        f"{stage}@{m}" for stage in ("train", "evaluate", "loso", "explain") for m in models}


def finetune_stages(params: dict) -> set[str]:
    return {f"{stage}@{run}" for stage in ("finetune", "evaluate_finetune", "explain_finetune")
            for run in params["finetune"]["runs"]}


@pytest.mark.slow
def test_each_change_reruns_exactly_what_depends_on_it(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    everything = {"sample", "download", "crop", "report"} | stages_of(params) | finetune_stages(params)
    assert repro(project) == everything
    for backbone in params["backbones"]:
        assert sorted(p.name for p in (project / "data/features" / backbone).iterdir()) == [
            "test.parquet", "train.parquet", "val.parquet"]
    for model in (f"{b}-{h}" for b in params["backbones"] for h in params["heads"]):
        assert (project / f"metrics/models/{model}.json").is_file() and (project / f"plots/epochs/{model}.csv").is_file()
    for run in params["finetune"]["runs"]:
        assert (project / f"metrics/models/finetune-{run}.json").is_file()
        assert sorted(p.name for p in (project / f"plots/explain/finetune-{run}").glob("[!.]*")) == [
            "cams.png", "examples.json", "kernels.png"]
    assert (project / "plots/explain/vit_b16-mlp/cams.png").is_file()
    summary = (project / "metrics/summary.md").read_text()
    assert "| Model |" in summary and "| finetune-resnet18-scratch |" in summary

    assert repro(project) == ALWAYS, "nothing changed, nothing may rerun"

    set_param(project, "heads.mlp.hidden", 24)
    assert repro(project) == ALWAYS | {"report"} | stages_of(params, heads=["mlp"]), "a head change never reruns extract"

    set_param(project, "backbones.resnet18.image_size", 48)
    assert repro(project) == ALWAYS | {"report"} | stages_of(params, backbones=["resnet18"])

    set_param(project, "finetune.train.weight_decay", 0.01)
    assert repro(project) == ALWAYS | {"report"} | finetune_stages(params), "fine-tuning never reruns the heads"

    set_param(project, "explain.seed", 1)
    assert repro(project) == ALWAYS | {s for s in everything if s.startswith("explain")}, "figures rerun figures only"

    assert repro(project) == ALWAYS


@pytest.mark.slow
def test_editing_a_library_module_reruns_exactly_the_stages_that_import_it(project):
    """Code is a dependency like data: an edit to covidct/metrics.py (not to a stage file) reruns every stage whose
    import closure holds it, here the evaluations, the per-source stages and the report, and nothing else (their
    outputs come out byte-identical)."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    repro(project)
    module = "covidct/metrics.py"
    expected = stages_importing(project, module)
    assert expected and all(name.startswith(("evaluate@", "evaluate_finetune@", "loso@", "confounding@", "report"))
                            for name in expected), expected
    assert not any(name.startswith(("train@", "extract@", "finetune@")) for name in expected), expected
    with (project / module).open("a") as f:
        f.write("\n# an edit that changes no behaviour, only the file's hash\n")
    assert repro(project) == ALWAYS | expected
    assert repro(project) == ALWAYS


@pytest.mark.slow
def test_backbones_come_and_go_through_params_alone(project):
    """`dvc exp run -S` removes a backbone and adds it back: no dvc.yaml edit; the report follows params.yaml, the
    stages of the removed backbone vanish, and on its return they are restored from the run-cache, not rerun."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    repro(project)
    back = yaml.safe_load((project / "params.yaml").read_text())["backbones"]["vgg16"]
    assert exp_run(project, "~backbones.vgg16") == ALWAYS | {"report"}
    assert not any("vgg16" in name for name in stage_names(project))
    assert "| vgg16-" not in (project / "metrics/summary.md").read_text()
    assert "vgg16" not in (project / "plots/compare/roc.csv").read_text()

    spec = "{" + ", ".join(f"{k}: {v}" for k, v in back.items()) + "}"
    assert exp_run(project, f"+backbones.vgg16={spec}") == ALWAYS | {"report"}, "vgg16's stages come from the run-cache"
    assert "| vgg16-mlp |" in (project / "metrics/summary.md").read_text()


@pytest.mark.slow
def test_a_one_parameter_experiment_reads_at_a_glance(project):
    """After `dvc exp run -S heads.logreg.C=...` (five models change), `dvc exp show --only-changed` fits in 40
    columns, and `python -m covidct.compare` prints every backbone x head of both rows with CIs in 120 characters."""
    import csv
    import subprocess
    import sys

    if not (project / "metrics/summary.md").exists():
        repro(project)
    repro(project)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "baseline"], cwd=project, check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert exp_run(project, "heads.logreg.C=0.05") == ALWAYS | {"report"} | stages_of(params, heads=["logreg"])

    table = list(csv.reader(dvc(project, "exp", "show", "--only-changed", "--csv").stdout.splitlines()))
    columns = table[0]
    print(f"dvc exp show --only-changed --csv: {len(columns)} columns: {columns}")
    assert len(columns) <= 40, f"{len(columns)} columns: {columns}"
    assert any(c.endswith("heads.logreg.C") for c in columns)
    changed = {c.split(".")[0] for c in columns if "-" in c.split(".")[0] and "/" not in c}  # not deps' paths
    assert changed and changed <= {f"{b}-logreg" for b in params["backbones"]}, columns

    out = subprocess.run([sys.executable, "-m", "covidct.compare"], cwd=project, capture_output=True, text=True,
                         env={**dvc_env(), "PYTHONPATH": str(project)}, check=True).stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 120, out
    blocks = [line for line in lines if line.startswith("== ")]
    assert blocks[0] == "== workspace" and len(blocks) == 3, out  # the workspace, HEAD, and the experiment by name
    first = lines[lines.index("== workspace") + 2:][:len(params["backbones"])]
    assert [line.split()[0] for line in first] == list(params["backbones"]), "rows in params.yaml's order"
    vgg = next(i for i, line in enumerate(lines) if line.startswith("vgg16 "))
    assert re.search(r"^vgg16 +\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] ", lines[vgg]), lines[vgg]
    assert "logreg: ROC AUC" in out and "mlp: ROC AUC" in out and "resnet18-scratch" in out


@pytest.mark.slow
def test_a_forced_rerun_of_every_kind_of_stage_writes_identical_outputs(project):
    """No timings or other run-to-run noise in tracked outputs: dvc.lock (every output's hash) stays the same."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    repro(project)
    before = (project / "dvc.lock").read_text()
    one_of_each = ["sample", "download", "crop", "extract@resnet18", "train@resnet18-logreg", "train@resnet18-mlp",
                   "evaluate@resnet18-mlp", "finetune@resnet18-scratch", "evaluate_finetune@resnet18-scratch",
                   "explain@resnet18-mlp", "explain_finetune@resnet18-scratch", "report"]
    assert stages_run(dvc(project, "repro", "--force", "--single-item", *one_of_each)) == set(one_of_each)
    assert (project / "dvc.lock").read_text() == before


@pytest.mark.slow
def test_every_plot_renders_in_dvc_plots_show(project):
    """Runs after the repro above (same module fixture): each declared plot is in the HTML, every model in it."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    dvc(project, "plots", "show", "-o", "plots_html")
    html = (project / "plots_html/index.html").read_text()
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    titles = [next(iter(entry)) for entry in dvc_yaml["plots"]]
    assert len(titles) >= 5
    for title in titles:
        assert title in html, f"plot {title!r} missing from dvc plots show"
    params = yaml.safe_load((project / "params.yaml").read_text())
    for model in [f"{b}-{h}" for b in params["backbones"] for h in params["heads"]] + [
            f"finetune-{run}" for run in params["finetune"]["runs"]]:
        assert f'"model": "{model}"' in html, f"{model} missing from the overlaid plots"


BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")


def offline_dom(html: Path) -> str:
    """The page as a headless Chromium renders it with every host unresolvable and no proxy reachable."""
    import shutil
    import subprocess

    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no headless Chromium on PATH (`make test` installs chromium-headless-shell where it can: "
                    "as root with apt-get)")
    result = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP * ~NOTFOUND",
                             "--proxy-server=127.0.0.1:9", "--virtual-time-budget=20000", "--dump-dom", html.as_uri()],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def charts(dom: str) -> dict[str, str]:
    """Plot id (DVC's div id) -> the SVG that Vega drew into it; images and empty divs map to ''."""
    found = {}
    for part in dom.split('<div id="')[1:]:
        svg = re.search(r"<svg.*?</svg>", part.split('<div id="')[0], re.DOTALL)
        found[part.split('"', 1)[0]] = svg.group(0) if svg else ""
    return found


@pytest.mark.slow
def test_plots_render_offline_in_a_headless_browser(project):
    """`dvc plots show` and `dvc plots diff` pages draw every chart with no network (bundled Vega, .dvc/config's
    plots.html_template), each model in its own legend entry, confusion cells with their counts, images loaded."""
    if not (project / "metrics/summary.md").exists():
        repro(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    models = [f"{b}-{h}" for b in params["backbones"] for h in params["heads"]] + [
        f"finetune-{run}" for run in params["finetune"]["runs"]]
    titles = [next(iter(entry)) for entry in yaml.safe_load((project / "dvc.yaml").read_text())["plots"]]
    for command in (["plots", "show"], ["plots", "diff", "HEAD"]):
        dvc(project, *command, "-o", "offline_html")
        page = project / "offline_html/index.html"
        assert "cdn.jsdelivr" not in page.read_text(), "the page must not load anything from the network"
        dom = offline_dom(page)
        assert 'data-broken-images="0"' in dom, re.findall(r"Could not load [^<]*", dom)
        drawn = {plot_id: svg for plot_id, svg in charts(dom).items() if "_png" not in plot_id}
        assert len(drawn) == len(titles), sorted(drawn)
        for plot_id, svg in drawn.items():
            labels = re.findall(r"<text[^>]*>([^<]*)</text>", svg)
            assert labels, f"{command}: {plot_id} drew nothing"
            assert not any("…" in label for label in labels), f"{plot_id}: a cut-off label"
            if "Confusion" in plot_id:
                assert all(any(label.startswith(f"{m} · ") for label in labels) for m in models), plot_id
                assert sum(label.isdigit() for label in labels) >= 4 * len(models), "every cell shows its count"
            elif "source" in plot_id:  # leave one source out: the frozen-feature heads, refitted
                heads = [m for m in models if not m.startswith("finetune-")]
                assert set(heads) <= set(labels), f"{plot_id}: legend lacks {set(heads) - set(labels)}"
            elif "epoch" not in plot_id:
                assert set(models) <= set(labels), f"{plot_id}: legend lacks {set(models) - set(labels)}"


def test_dvc_yaml_names_no_model_and_every_path_lives_there():
    """No list in dvc.yaml mirrors params.yaml, and the code names no data path of its own: dvc.yaml is the one
    place that does (stages get their paths on the command line)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    text = (ROOT / "dvc.yaml").read_text()
    names = list(params["backbones"]) + list(params["heads"]) + list(params["finetune"]["runs"])
    assert not [name for name in names if re.search(rf"\b{re.escape(name)}\b", text)], "dvc.yaml names a model"
    folders = ("data/", "models/", "metrics/", "dvclive/", "plots/explain", "plots/epochs", "plots/compare")
    for path in [*(ROOT / "covidct").glob("*.py"), *(ROOT / "stages").glob("*.py")]:
        for text in code_strings(path):
            assert not text.startswith(folders), f"{path.relative_to(ROOT)} names the path {text!r}: pass it from dvc.yaml"


def code_strings(path: Path) -> list[str]:
    """String literals the code acts on: not docstrings, not argparse help texts."""
    tree = ast.parse(path.read_text())
    skip = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    skip |= {id(sub) for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "help"
             for sub in ast.walk(node.value)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


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
