"""The benchmark harness still runs (tiny sizes; the real figures come from running it on demand)."""

import json
from pathlib import Path

import pytest
import yaml

from bench import data, extract, memory


@pytest.mark.slow
def test_extract_bench_times_ceiling_extract_and_baseline(tmp_path, capsys):
    report = extract.main(["--slices", "60", "--unique", "16", "--backbones", "resnet18", "--image-size", "32",
                           "--crop-size", "40", "--batch-size", "16", "--ceiling-batches", "2", "--device", "cpu",
                           "--workers", "1", "--work", str(tmp_path), "--out", str(tmp_path / "out.json")])
    row = report["backbones"]["resnet18"]
    assert report["slices"] == 60 and report["crop"]["images_per_s"] > 0
    assert min(row["ceiling"], row["extract"], row["baseline"]) > 0
    assert row["extract_vs_ceiling"] == pytest.approx(row["extract"] / row["ceiling"], rel=0.01)
    assert json.loads((tmp_path / "out.json").read_text()) == report
    assert "| resnet18 | 32 |" in capsys.readouterr().out
    assert len(list((tmp_path / "features-resnet18").glob("*.parquet"))) == 3


def test_bench_data_has_the_asked_size_and_distinct_names(tmp_path):
    from covidct import crop

    raw = data.make_raw(tmp_path / "raw", slices=50, unique=16)
    table = crop.slice_table(raw)  # also checks: no duplicate names, no patient in two splits
    assert len(table) == 50 and set(table["split"]) == {"train", "val", "test"}
    assert all((raw / "3A_images" / f).is_file() for f in table["fname"])


@pytest.mark.slow
def test_memory_bench_reports_peak_rss_per_stage(tmp_path):
    report = memory.main(["--sizes", "40,160", "--device", "cpu", "--image-size", "32", "--crop-size", "32",
                          "--batch-size", "16", "--workers", "1", "--work", str(tmp_path),
                          "--out", str(tmp_path / "memory.json")])
    assert [r["slices"] for r in report["rows"]] == [40, 160]
    for r in report["rows"]:
        assert r["crop"]["process_mb"] > 50 and r["extract"]["process_mb"] > 50


def test_head_grid_bench_compares_old_and_grid_settings_on_test_with_paired_intervals(tmp_path, capsys):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import head_grid
    from covidct import featurefile

    folder = tmp_path / "features" / "tiny"
    folder.mkdir(parents=True)
    metadata = {"backbone": "tiny", "weights": "none", "image_size": 16, "seed": 0,
                "label_names": ["Normal", "COVID-19"], "balance": "undersample", "class_weights": None}
    rng = np.random.default_rng(0)
    for split, n in (("train", 80), ("val", 40), ("test", 40)):
        y = np.arange(n) % 2
        x = (rng.normal(size=(n, 6)) + y[:, None] * 0.8).astype(np.float32)
        table = pa.table({"fname": [f"{split}{i}.png" for i in range(n)], "patient": [f"{split}{i // 4}" for i in range(n)],
                          "source": ["site_a"] * n,
                          "label": y, "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 6)},
                         schema=featurefile.schema_for(6, metadata))
        pq.write_table(table, folder / f"{split}.parquet")
    (tmp_path / "features" / "empty").mkdir()  # a folder without the three splits is not a backbone
    params_file = Path(__file__).resolve().parents[1] / "params.yaml"
    report = head_grid.main([str(tmp_path / "features"), "--resamples", "50", "--out", str(tmp_path / "grid.json"),
                             "--params", str(params_file)])
    assert [(r["backbone"], r["head"]) for r in report["rows"]] == [("tiny", "logreg"), ("tiny", "mlp")]
    committed = yaml.safe_load(params_file.read_text())["heads"]
    for r in report["rows"]:
        assert r["old"]["params"] == head_grid.OLD[r["head"]]
        assert all(v in committed[r["head"]][k] for k, v in r["grid"]["params"].items()), "chosen from the grid"
        assert len(r["grid"]["candidates"]) == 4 and "candidates" not in r["old"]
        for m in ("accuracy", "roc_auc"):
            diff = r["difference"][m]
            assert diff["value"] == pytest.approx(r["grid"]["test"][m]["value"] - r["old"]["test"][m]["value"], abs=1e-3)
            assert diff["ci_low"] <= diff["ci_high"]
    assert json.loads((tmp_path / "grid.json").read_text()) == report
    assert "| tiny | logreg | C " in capsys.readouterr().out


def test_a_model_against_itself_differs_by_exactly_zero():
    import numpy as np

    from bench import head_grid

    rng = np.random.default_rng(1)
    y, p = np.arange(60) % 2, rng.random(60)
    diff = head_grid.paired_difference(y, p, p, np.arange(60) // 3, n_resamples=40)
    assert all(d == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0} for d in diff.values())
