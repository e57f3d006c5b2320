"""Outputs damaged in place (issue 15): a head.json or a features file truncated or rewritten is named in one
``error:`` line with what to run (`dvc checkout`, `dvc repro -f <stage>`), never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covidct import featurefile, heads
from covidct.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    """A fitted logistic-regression head saved as the train stage saves one, in models/vgg16-logreg."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2
    head = heads.create_head("logreg", {"C": 1.0, "max_iter": 100})
    head.fit(x, y, x, y, positive=1)
    folder = tmp_path_factory.mktemp("models") / "vgg16-logreg"
    folder.mkdir()
    head.save(folder)
    return folder, x


def _drop_key(text: str) -> str:
    config = json.loads(text)
    del config["n_classes"]
    return json.dumps(config)


@pytest.mark.parametrize(
    "damage, reason",
    [(lambda text: text[: len(text) // 2], "not JSON"),
     (lambda text: "\x00\x01garbage", "not JSON"),
     (lambda text: "[1, 2]", "expected an object with head"),
     (lambda text: text.replace('"logreg"', '"svm"'), "expected an object with head"),
     (_drop_key, "KeyError")],
    ids=["truncated", "garbage", "a list", "unknown head", "a key missing"],
)
def test_a_damaged_head_json_is_named_with_what_to_run(trained_head, tmp_path, damage, reason):
    folder, x = trained_head
    copy = tmp_path / folder.name
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert heads.load_head(copy).predict_proba(x).shape == (40, 2)
    (copy / "head.json").write_text(damage((copy / "head.json").read_text()))
    with pytest.raises(DataError) as err:
        heads.load_head(copy)
    message = str(err.value)
    assert message.startswith(f"{copy / 'head.json'}: damaged (") and reason in message
    assert f"`dvc checkout {copy}`" in message and "`dvc repro -f train@vgg16-logreg`" in message


def _features_dir(tmp_path: Path) -> Path:
    """data/features/vgg16/{train,val}.parquet as the extract stage writes them, 60 slices each."""
    out = tmp_path / "data" / "features" / "vgg16"
    out.mkdir(parents=True)
    n, dim = 60, 8
    metadata = {"backbone": "vgg16", "weights": "none", "image_size": 64, "seed": 0, "label_names": ["Normal", "COVID-19"],
                "balance": "undersample", "class_weights": None}
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        table = pa.table({"fname": [f"{split}{i}.png" for i in range(n)], "patient": [f"p{i // 3}" for i in range(n)],
                          "source": ["site_a"] * n, "label": np.arange(n) % 2,
                          "features": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * dim),
                                                                                 pa.float32()), dim)},
                         schema=featurefile.schema_for(dim, metadata))
        pq.write_table(table, out / f"{split}.parquet")
    return out


@pytest.mark.parametrize("keep", [0, 4, 100, -8, -1], ids=["emptied", "magic only", "head only", "no footer", "1 byte short"])
def test_a_truncated_features_file_is_named_with_what_to_run(tmp_path, keep):
    path = _features_dir(tmp_path) / "train.parquet"
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])  # truncated in place
    for read in (featurefile.read_features, featurefile.read_metadata):
        with pytest.raises(DataError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: not a readable features file (")
        assert f"`dvc checkout {path.parent}`" in str(err.value) and "`dvc repro -f extract@vgg16`" in str(err.value)
    with pytest.raises(FileNotFoundError):  # a missing file stays what it was (cli.run reports it as one line too)
        featurefile.read_features(path.with_name("test.parquet"))


def test_the_train_stage_reports_a_truncated_features_file_in_one_line(tmp_path):
    features = _features_dir(tmp_path)
    path = features / "train.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = subprocess.run([sys.executable, "-m", "stages.train", "logreg", "--features", "data/features/vgg16",
                             "--model", "models/vgg16-logreg", "--epochs", "plots/epochs/vgg16-logreg.csv",
                             "--live", "dvclive/train/vgg16-logreg"],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: data/features/vgg16/train.parquet: not a readable features file (")
    assert "`dvc repro -f extract@vgg16`" in result.stderr
    assert not (tmp_path / "models").exists()
