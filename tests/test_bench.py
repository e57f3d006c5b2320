"""The benchmark harness still runs (tiny sizes; the real figures come from running it on demand)."""

import json

import pytest

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
