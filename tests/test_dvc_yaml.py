"""dvc.yaml against the code: every stage declares exactly the project modules it imports, and the import graph
has no cycles and no imports hidden in functions. Computed from the source (AST), nothing is imported."""

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("covidct", "stages")


def module_file(name: str) -> Path | None:
    """covidct.x -> covidct/x.py, if it is a project module."""
    path = ROOT.joinpath(*name.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def project_imports(path: Path, top_level_only: bool = True) -> set[str]:
    """Project modules that ``path`` imports (module level, or anywhere with ``top_level_only=False``)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from covidct import crop` names a module; `from covidct.crop import x` names a module and an object
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n)}
    return found


def closure(module: str) -> set[str]:
    """``module`` and every project module it reaches through imports, as repository-relative file paths."""
    seen, pending = set(), [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += project_imports(module_file(name))
    return {str(module_file(name).relative_to(ROOT)) for name in seen}


def stage_groups() -> dict[str, dict]:
    """dvc.yaml's stage definitions (a foreach/matrix group counts once: its deps list is shared)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def stage_module(stage: dict) -> str:
    match = re.search(r"python -m (stages\.\w+)", stage["cmd"])
    assert match, f"cmd {stage['cmd']!r} runs no stage module"
    return match.group(1)


def declared_code(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.endswith(".py") and d.split("/")[0] in PACKAGES}


def test_every_stage_declares_exactly_the_modules_it_imports():
    problems = []
    for name, stage in stage_groups().items():
        reached, declared = closure(stage_module(stage)), declared_code(stage)
        problems += [f"stage {name}: imports {m} but dvc.yaml does not list it in deps" for m in sorted(reached - declared)]
        problems += [f"stage {name}: lists {m} in deps but never imports it (needless reruns)"
                     for m in sorted(declared - reached)]
    assert not problems, "\n".join(problems)


def test_no_stage_imports_another_stage():
    for path in sorted((ROOT / "stages").glob("*.py")):
        assert not {m for m in project_imports(path, top_level_only=False) if m.startswith("stages.")}, path


def test_no_project_import_is_hidden_in_a_function():
    """A function-level import of a project module hides a dependency (and, often, a cycle)."""
    for path in sorted([*(ROOT / "covidct").glob("*.py"), *(ROOT / "stages").glob("*.py")]):
        hidden = project_imports(path, top_level_only=False) - project_imports(path)
        assert not hidden, f"{path.relative_to(ROOT)} imports {sorted(hidden)} inside a function"


def test_library_import_graph_has_no_cycles():
    graph = {f"covidct.{p.stem}": {m for m in project_imports(p) if m != "covidct"}
             for p in (ROOT / "covidct").glob("*.py") if p.name != "__init__.py"}
    state = {}

    def visit(node, path):
        if state.get(node) == "done":
            return
        assert state.get(node) != "active", "import cycle: " + " -> ".join(path + [node])
        state[node] = "active"
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_package_inits_are_empty():
    """Every stage runs them, yet they are left out of deps: that is only right while they hold no code."""
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").read_text().strip() == "", package


def test_closure_follows_imports_through_the_library():
    """The checker itself: the extract stage reaches the store through features, two hops away."""
    reached = closure("stages.extract")
    assert {"stages/extract.py", "covidct/distributed.py", "covidct/features.py", "covidct/store.py"} <= reached
    assert "covidct/heads.py" not in reached
