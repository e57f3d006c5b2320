import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory):
    """A few phantom patients in the Kaggle layout (images and split files in one folder), at 128 px to stay fast."""
    from covidct import phantom

    out = tmp_path_factory.mktemp("raw")
    phantom.generate(out, patients={"train": 6, "val": 4, "test": 4},
                     class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5}, slices_per_patient=[3, 4],
                     image_size=128, seed=1, progress=False)
    return out


def build_store(raw: Path, out: Path, size: int, shard_size: int, balance: str = "undersample") -> Path:
    """The crop stage's store of ``raw`` (binary classes), single-process and quiet."""
    from covidct import crop

    table, _ = crop.with_sources(crop.slice_table(raw), raw)
    table, info = crop.label_and_balance(table, "binary", balance, seed=0)
    crop.build_store(table, info, raw, out, size=size, margin=0.0, shard_size=shard_size, workers=1, progress=False)
    return out


PROJECT_FILES = ["dvc.yaml", "params.yaml", "stages", "covidct", ".dvc/config", ".dvc/.gitignore", ".dvc/plots", ".dvcignore",
                 ".gitignore"]


def make_project(work: Path, edit_params) -> Path:
    """A copy of the committed pipeline in ``work``, params changed by ``edit_params(dict)``, as a git repo."""
    import shutil
    import subprocess

    import yaml

    for name in PROJECT_FILES:
        src, dst = ROOT / name, work / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    params = yaml.safe_load((work / "params.yaml").read_text())
    edit_params(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A clone has commits; dvclive needs one (it reads HEAD before checking that a commit exists).
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "project"], cwd=work, check=True)
    return work


def dvc_env() -> dict:
    """The environment stage commands need: this venv's python first on PATH, no analytics, git identity for
    `dvc exp run`'s commits."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}


def dvc(work: Path, *args: str, env: dict | None = None):
    """Runs the dvc CLI in ``work``; fails the test with its output if it fails."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=work, env=env or dvc_env(), check=False,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def stages_run(result) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` ran (restored-from-run-cache ones are not counted)."""
    import re

    return set(re.findall(r"Running stage '([^']+)'", result.stdout))


def stale(work: Path, *targets: str, env: dict | None = None) -> dict:
    """`dvc status` as {stage: changes}, leaving out stages that are only 'always changed' (download)."""
    import json

    status = json.loads(dvc(work, "status", "--json", *targets, env=env).stdout or "{}")
    return {stage: changes for stage, changes in status.items() if changes != ["always changed"]}


def png_header_only(path: Path, width: int, height: int, bit_depth: int = 16) -> Path:
    """A PNG whose header declares ``width`` x ``height`` but which holds no pixels: enough to be judged by its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path
