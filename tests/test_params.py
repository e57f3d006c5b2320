import re
from pathlib import Path

import pytest
import yaml

from covidct import backbones, confounding, crop, explain, features, finetune, heads, metrics, params, phantom, sources
from covidct.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]


# Every section of params.yaml and the module that checks it, as the stages pass them to params.load.
CHECKS = {"data": sources.check_params, "sample": phantom.check_params, "crop": crop.check_params,
          "extract": features.check_params, "backbones": backbones.check_params, "heads": heads.check_params,
          "finetune": finetune.check_params, "explain": explain.check_params, "evaluate": metrics.check_params,
          "confounding": confounding.check_params}


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
    block = re.search(r"<!-- full-study-command -->.*?```bash\n(.*?)```", readme, re.DOTALL).group(1)
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
        ("finetune.runs.efficientnet_lite0-imagenet.lr", -1.0, "finetune.runs.efficientnet_lite0-imagenet.lr=-1.0: a positive number"),
        ("finetune.train.patience", 0, "finetune.train.patience=0: a positive integer"),
        ("explain.methods", ["gradcam", "scorecam"], "explain.methods=['gradcam', 'scorecam']: a non-empty list from"),
        ("explain.per_kind", 0, "explain.per_kind=0: a positive integer"),
        ("extract.precision", "fp16", "extract.precision='fp16': choose one of ['auto', 'fp32', 'bf16']"),
        ("heads.logreg.C", 0, "heads.logreg.C=0: a positive number"),
        ("evaluate.calibration_bins", 0, "evaluate.calibration_bins=0: a positive integer"),
        ("sample.slices_per_patient", [5, 2], "sample.slices_per_patient=[5, 2]: [min, max], 1 <= min <= max"),
        # issue 15: every key is type- and range-checked (these used to end in tracebacks, or be ignored)
        ("crop.workers", -1, "crop.workers=-1: a non-negative integer <= 1024 (0 = all cores)"),
        ("crop.workers", "4", "crop.workers='4': a non-negative integer <= 1024 (0 = all cores)"),
        ("crop.workers", True, "crop.workers=True: a non-negative integer"),
        ("crop.seed", -1, "crop.seed=-1: a non-negative integer <= 4294967295"),
        ("crop.seed", 2**40, "crop.seed=1099511627776: a non-negative integer <= 4294967295"),
        ("crop.classes", ["binary"], "crop.classes=['binary']: choose one of"),
        ("crop.margin", float("nan"), "crop.margin=nan: must be in [0, 1]"),
        ("sample.seed", "zero", "sample.seed='zero': a non-negative integer"),
        ("sample.image_size", 8, "sample.image_size=8: an integer in [32, 8192]"),
        ("sample.class_fractions", {"covid": 0.7, "normal": 0.7}, "sample.class_fractions={'covid': 0.7, 'normal': 0.7}: fractions in [0, 1]"),
        ("evaluate.seed", 1.5, "evaluate.seed=1.5: a non-negative integer"),
        ("evaluate.calibration_bins", "10", "evaluate.calibration_bins='10': a positive integer"),
        ("explain.seed", None, "explain.seed=None: a non-negative integer"),
        ("explain.methods", [{"gradcam": 1}], "explain.methods=[{'gradcam': 1}]: a non-empty list from"),
        ("backbones.vgg16.seed", -3, "backbones.vgg16.seed=-3: a non-negative integer"),
        ("backbones.resnet18", "resnet18", "backbones.resnet18='resnet18': a mapping of ['weights', 'image_size'"),
        ("heads.mlp.seed", "0", "heads.mlp.seed='0': a non-negative integer"),
        ("heads.mlp.weight_decay", -0.1, "heads.mlp.weight_decay=-0.1: a number >= 0"),
        ("heads.logreg.C", float("inf"), "heads.logreg.C=inf: a positive number"),
        ("heads.logreg.C", "1e3x", "heads.logreg.C='1e3x': a positive number"),
        ("extract.device", "gpu", "extract.device='gpu': one of auto, cpu, cuda, cuda:<index>, mps"),
        ("extract.num_threads", -1, "extract.num_threads=-1: a non-negative integer <= 1024 (0 = all cores)"),
        ("extract.processes", 0, "extract.processes=0: a positive integer <= 1024 (1 = no torchrun)"),
        ("extract.compile", "yes please", "extract.compile='yes please': true or false"),
        ("finetune.device", "cuda:x", "finetune.device='cuda:x': one of auto, cpu, cuda, cuda:<index>, mps"),
        ("finetune.num_workers", 2.5, "finetune.num_workers=2.5: a non-negative integer <= 1024 (0 = in the main process)"),
        ("finetune.num_threads", 10**6, "finetune.num_threads=1000000: a non-negative integer <= 1024"),
        ("finetune.train.lr", 0, "finetune.train.lr=0: a positive number"),
        ("finetune.train.weight_decay", "0.05", "finetune.train.weight_decay='0.05': a number >= 0"),
        ("finetune.train.seed", None, "finetune.train.seed=None: a non-negative integer"),
        ("finetune.train.augment", [0.8], "finetune.train.augment=[0.8]: a mapping of scale_min, rotation, hflip, vflip"),
        ("finetune.train.augment.scale_min", 0, "finetune.train.augment.scale_min=0: a number in (0, 1]"),
        ("finetune.train.augment.scale_min", 1.5, "finetune.train.augment.scale_min=1.5: a number in (0, 1]"),
        ("finetune.train.augment.rotation", 400, "finetune.train.augment.rotation=400: a number in [0, 180]"),
        ("finetune.train.augment.hflip", 2, "finetune.train.augment.hflip=2: a number in [0, 1]"),
        ("finetune.train.augment.vflip", -0.1, "finetune.train.augment.vflip=-0.1: a number in [0, 1]"),
        ("finetune.runs.resnet18-scratch.epochs", 0, "finetune.runs.resnet18-scratch.epochs=0: a positive integer"),
        ("finetune.runs.resnet18-scratch", 96, "finetune.runs.resnet18-scratch=96: a mapping with arch, init"),
        ("data.variant", "../3A", "data.variant='../3A': letters and digits, e.g. 3A"),
        ("data.local_root", 5, "data.local_root=5: a folder (a path), or null"),
        ("data.kaggle_handle", ["hgunraj/covidxct"], "data.kaggle_handle=['hgunraj/covidxct']: owner/dataset/versions/<n>"),
        # unknown keys (a typo must not be silently ignored): named, with the closest known key
        ("heads.mlp.hiden", 128, "heads.mlp.hiden: unknown key; did you mean hidden?"),
        ("heads.logreg.c", 1.0, "heads.logreg.c: unknown key; did you mean C?"),
        ("crop.imagesize", 64, "crop.imagesize: unknown key; did you mean image_size?"),
        ("extract.devices", "cpu", "extract.devices: unknown key; did you mean device?"),
        ("backbones.vgg16.weight", "none", "backbones.vgg16.weight: unknown key; did you mean weights?"),
        ("finetune.train.augment.hflp", 0.5, "finetune.train.augment.hflp: unknown key; did you mean hflip"),
        ("finetune.runs.resnet18-scratch.epoch", 3, "finetune.runs.resnet18-scratch.epoch: unknown key; did you mean epochs?"),
        ("finetune.trian", {}, "finetune.trian: unknown key; did you mean train?"),
        ("evaluate.bootstraps", 10, "evaluate.bootstraps: unknown key; did you mean bootstrap?"),
        ("explain.method", ["gradcam"], "explain.method: unknown key; did you mean methods?"),
        ("sample.image_sise", 1, "sample.image_sise: unknown key; did you mean image_size?"),
        ("data.sorce", "local", "data.sorce: unknown key; did you mean source?"),
        ("heads.mlp.zzz", 1, "heads.mlp.zzz: unknown key; known keys: ['base_lr', 'batch_size', 'dropout'"),
        # grids: C, hidden and dropout may be lists, non-empty, of distinct valid values
        ("heads.logreg.C", [], "heads.logreg.C=[]: an empty grid; give one value, or a list of at least one"),
        ("heads.logreg.C", [0.1, 0], "heads.logreg.C[1]=0: a positive number"),
        ("heads.logreg.C", [0.01, "0.1"], "heads.logreg.C[1]='0.1': a positive number"),
        ("heads.logreg.C", [0.1, 1.0, 0.1], "heads.logreg.C=[0.1, 1.0, 0.1]: 0.1 listed more than once; list each"),
        ("heads.logreg.C", "0.1,1", "heads.logreg.C='0.1,1': a positive number, or a list of such values"),
        ("heads.logreg.C", {"low": 0.1}, "heads.logreg.C={'low': 0.1}: a positive number, or a list of such values"),
        ("heads.mlp.hidden", [128, 64.5], "heads.mlp.hidden[1]=64.5: a positive integer"),
        ("heads.mlp.hidden", [64, True], "heads.mlp.hidden[1]=True: a positive integer"),
        ("heads.mlp.hidden", [64, 64], "heads.mlp.hidden=[64, 64]: 64 listed more than once"),
        ("heads.mlp.hidden", [[64, 128]], "heads.mlp.hidden[0]=[64, 128]: a positive integer"),
        ("heads.mlp.dropout", [0.25, 1.0], "heads.mlp.dropout[1]=1.0: must be in [0, 1)"),
        ("heads.mlp.dropout", [0.5, 0.5], "heads.mlp.dropout=[0.5, 0.5]: 0.5 listed more than once"),
        ("heads.mlp.dropout", [], "heads.mlp.dropout=[]: an empty grid"),
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


@pytest.mark.parametrize("C, hidden, dropout", [(1.0, 256, 0.5), ([0.01], [64], [0.0]), (0.5, [32, 512], 0.25),
                                                ([0.001, 0.01, 0.1, 1.0, 10], [1, 2048], [0.0, 0.5, 0.9])])
def test_head_settings_may_be_numbers_or_grids(C, hidden, dropout):
    p = committed()
    p["heads"]["logreg"]["C"] = C
    p["heads"]["mlp"].update(hidden=hidden, dropout=dropout)
    assert heads.check_params(p["heads"]) == []


def test_the_committed_grids_contain_the_reference_recipe():
    """The demo's grids include the settings the heads had before grids (C 1.0; 256 units, dropout 0.5)."""
    p = committed()["heads"]
    assert 1.0 in p["logreg"]["C"] and 256 in p["mlp"]["hidden"] and 0.5 in p["mlp"]["dropout"]


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
                            cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
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


# --- issue 15: numbers however YAML spells them, unknown keys, and nothing but ParamsError for bad values ---

@pytest.mark.parametrize(
    "text, value",
    [("6e-05", 6e-05), ("1e3", 1000.0), ("1e-1", 0.1), ("-1E+2", -100.0), ("1.0e3", 1000.0), ("5.0e-05", 5e-05),
     (".5", 0.5), ("1_000", 1000), ("1_000.5", 1000.5), ("0o17", 15), (".inf", float("inf")), ("3", 3)],
)
def test_numbers_are_read_as_numbers_however_yaml_spells_them(tmp_path, text, value):
    (tmp_path / "params.yaml").write_text(f"heads:\n  x: {text}\n")
    got = params.load(tmp_path / "params.yaml")["heads"]["x"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["1e", "e5", "1.2.3", "6e-05x", "3A", "hgunraj/covidxct/versions/5", "'1e3'", "0x"])
def test_strings_that_are_not_numbers_stay_strings(tmp_path, text):
    (tmp_path / "params.yaml").write_text(f"heads:\n  x: {text}\n")
    assert isinstance(params.load(tmp_path / "params.yaml")["heads"]["x"], str)
    assert yaml.load(yaml.dump({"x": text.strip("'")}, Dumper=params.Dumper), Loader=params.Loader)["x"] == text.strip("'")


def test_dvc_exp_run_set_params_in_e_notation_load_as_numbers(tmp_path):
    """`dvc exp run -S heads.mlp.base_lr=6e-5` writes 6e-05, which YAML 1.1 reads as a string (the old TypeError)."""
    from dvc.utils.hydra import apply_overrides

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(tmp_path / "params.yaml"), ["heads.mlp.base_lr=6e-5", "heads.logreg.C=1e3", "crop.margin=1e-1"])
    text = (tmp_path / "params.yaml").read_text()
    assert "6e-05" in text and isinstance(yaml.safe_load(text)["heads"]["mlp"]["base_lr"], str), "the YAML 1.1 hazard"
    p = params.load(tmp_path / "params.yaml", **CHECKS)
    assert (p["heads"]["mlp"]["base_lr"], p["heads"]["logreg"]["C"], p["crop"]["margin"]) == (6e-05, 1000.0, 0.1)


def test_an_unknown_section_is_named_with_the_closest_one(tmp_path):
    p = committed()
    p["evalute"] = p.pop("evaluate")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ParamsError, match=r"evalute: unknown key; did you mean evaluate\?"):
        params.load(tmp_path / "params.yaml", data=sources.check_params)


@pytest.mark.parametrize("kind", ["file", "below a file", "no such user"])
def test_a_local_root_that_cannot_be_a_folder_is_named(tmp_path, kind):
    (tmp_path / "images.zip").write_bytes(b"PK")
    root = {"file": str(tmp_path / "images.zip"), "below a file": str(tmp_path / "images.zip" / "x"),
            "no such user": "~no-such-user-here/covidx"}[kind]
    expected = {"file": "a file, not a folder", "below a file": f"below {tmp_path / 'images.zip'}, which is a file",
                "no such user": "not a usable path"}[kind]
    found = sources.check_params({"source": "local", "variant": "3A", "local_root": root, "kaggle_handle": None})
    assert len(found) == 1 and found[0].startswith(f"data.local_root={root!r}: {expected}")


def test_a_local_root_that_is_a_file_stops_the_download_stage_with_one_line(tmp_path):
    import os
    import subprocess
    import sys

    p = committed()
    (tmp_path / "images.tar").write_bytes(b"not a folder")
    p["data"].update(source="local", local_root=str(tmp_path / "images.tar"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    result = subprocess.run([sys.executable, "-m", "stages.download", "--sample", "data/sample", "--out", "data/raw"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: params.yaml: data.local_root={str(tmp_path / 'images.tar')!r}: a file, "
                                    "not a folder")


@pytest.mark.parametrize(
    "device, gpus, message",
    [("cuda", 0, "extract.device='cuda': no CUDA GPU is available here"),
     ("cuda:2", 1, "extract.device='cuda:2': this machine has 1 CUDA GPU(s), cuda:0 to cuda:0"),
     ("gpu", 0, "extract.device='gpu': one of auto, cpu, cuda, cuda:<index>, mps"),
     ("mps", 0, "extract.device='mps': no Apple MPS device here")],
)
def test_a_device_that_is_not_there_is_a_params_error(monkeypatch, device, gpus, message):
    import torch

    from covidct.classifier import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ParamsError) as err:
        resolve_device(device, "extract.device")
    assert message in str(err.value)
    assert resolve_device("cpu", "extract.device").type == "cpu"


def _paths(node, prefix=()):
    """Every key path of the committed params, sections and inner mappings included."""
    for key, value in node.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


PATHS = sorted(_paths(committed()), key=str)


def repr_id(value) -> str:
    return repr(value)[:12]


def _values():
    from hypothesis import strategies as st

    text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(-(10**400), 10**400), st.sampled_from([2**32, 2**64, -0]),
        st.floats(allow_nan=True, allow_infinity=True), text,
        st.sampled_from(["cuda", "gpu", "auto", "1e3", "6e-05", "local", "kaggle", "imagenet", "scratch", "resnet18",
                         "gradcam", "none", "binary", "fp16", ""]),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(text, scalars, max_size=3))


def test_any_value_for_any_key_is_accepted_or_named_in_a_params_error():
    """Random keys get random values (types, huge numbers, nan/inf, nested lists and dicts), are deleted, or get an
    unknown key beside them: params.load with every check either succeeds or raises ParamsError naming a key it
    changed, never another exception."""
    import tempfile

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    edit = st.tuples(st.sampled_from(PATHS), st.sampled_from(["set", "delete", "add"]), _values(),
                     st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=8))

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(edit, min_size=1, max_size=8))
    def check(edits):
        p, changed = committed(), []
        for path, op, value, new_key in edits:
            parent = p
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if not isinstance(parent, dict) or path[-1] not in parent:
                continue  # an earlier edit replaced or removed this part
            if op == "set":
                parent[path[-1]] = value
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent[path[-1]], dict):
                parent[path[-1]][new_key] = value
                path = (*path, new_key)
            else:
                continue
            changed.append(path)
        with tempfile.TemporaryDirectory() as folder:
            file = f"{folder}/params.yaml"
            with open(file, "w") as f:
                yaml.dump(p, f, Dumper=params.Dumper)
            try:
                params.load(file, **CHECKS)
            except ParamsError as exc:
                message = str(exc).split(": ", 1)[1]
                assert any(path[0] in message and str(path[-1]) in message for path in changed), (message, changed)

    check()


@pytest.mark.parametrize("value", [None, True, -1, 0, 2**64, 10**400, float("nan"), float("-inf"), 1e308, "x", "",
                                   [], [1, "a"], {}, {"a": [1]}], ids=repr_id)
def test_every_key_set_to_nonsense_is_accepted_or_named(value):
    """The sweep beside the property test: every key of params.yaml, one at a time, set to one odd value; each
    section's check (what params.load runs) returns problems naming the key, or none, and never raises."""
    import copy

    base = committed()
    for path in PATHS:
        p = copy.deepcopy(base)
        parent = p
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        section = p[path[0]]
        found = CHECKS[path[0]](section) if isinstance(section, dict) else [f"{path[0]}: not a mapping"]
        assert not found or any(path[0] in f and str(path[-1]) in f for f in found), (path, found)
