"""Issue 16: the source of every slice (metadata.csv, file-name rules), per-source metrics, leave-one-source-out and
the confounding check, on the phantom sample (several sites) and on hand-made data where the answer is known."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import build_store

from covidct import confounding, crop, featurefile, features, heads, loso, metrics, phantom, provenance, report
from covidct.errors import DataError
from covidct.store import CropStore

RULES = provenance.DEFAULT_RULES


# -----------------------------------------------------------------------------------------------------------------
# where a slice's source comes from


@pytest.mark.parametrize("fname, source", [
    ("NCP_96_1328_0032.png", "CNCB"), ("CP_1068_3131_0010.png", "CNCB"), ("Normal_2_104_0001.png", "CNCB"),
    ("LIDC-IDRI-0001_1_0042.png", "LIDC-IDRI"), ("radiopaedia_10_85902_1_0005.png", "radiopaedia"),
    ("study_0795_1_0003.png", "study"), ("covid19-A-0003_5_0012.png", "covid"), ("sub/NCP_1_2_3.png", "CNCB"),
    ("0042_1_2.png", None),
])
def test_default_rules_name_ct3a_sources_by_file_name(fname, source):
    assert provenance.by_name(fname, RULES) == source


def test_metadata_comes_first_then_rules_then_unknown_and_each_way_is_counted():
    table = pd.DataFrame({"fname": ["CP_1_2_3.png", "CP_1_2_4.png", "NCP_7_1_1.png", "9_9_9.png"],
                          "patient": ["CP_1", "CP_1", "NCP_7", "9"]})
    sources, how = provenance.assign(table, {"CP_1": "CNCB-listed"}, RULES)
    assert sources.tolist() == ["CNCB-listed", "CNCB-listed", "CNCB", "unknown"]
    assert how == {"metadata.csv": 2, "file-name rule": 1, "unknown": 1}
    sources, _ = provenance.assign(table, None, [["^(\\w+?)_", "site-\\1"]])
    assert sources.tolist() == ["site-CP", "site-CP", "site-NCP", "site-9"]


def test_metadata_csv_in_covidnet_format_is_read_and_its_problems_name_the_line(tmp_path):
    good = tmp_path / "metadata.csv"
    good.write_text("\ufeffpatient id,source,country,sex\nCP_0,CNCB,China,\n\nstudy_0795,MosMedData,Russia,F\n")
    assert provenance.read_metadata(good) == {"CP_0": "CNCB", "study_0795": "MosMedData"}
    (tmp_path / "header.csv").write_text("id,collection\nCP_0,CNCB\n")
    with pytest.raises(DataError, match=r"header\.csv:1: expected a header with 'patient id' and 'source'"):
        provenance.read_metadata(tmp_path / "header.csv")
    (tmp_path / "twice.csv").write_text("patient id,source\nCP_0,CNCB\nCP_1,CNCB\nCP_0,iCTCF\n")
    with pytest.raises(DataError, match=r"twice\.csv:4: patient 'CP_0' is listed again with source 'iCTCF' \(line 2"):
        provenance.read_metadata(tmp_path / "twice.csv")
    (tmp_path / "blank.csv").write_text("patient id,source\nCP_0,\n")
    with pytest.raises(DataError, match=r"blank\.csv:2: no patient id or source"):
        provenance.read_metadata(tmp_path / "blank.csv", shown_as=tmp_path / "blank.csv")


@pytest.mark.parametrize("rules, message", [
    ([], "a list of \\[regex, source\\] pairs"),
    ([["(unclosed", "x"]], "missing \\), unterminated subpattern"),
    ([["^(a)_", "\\2"]], "refers to group 2, which the regex does not have"),
    ([["^a", ""]], "a pair \\[regex, source\\] of two non-empty strings"),
    (["^a"], "a pair \\[regex, source\\]"),
])
def test_bad_source_rules_are_refused_before_any_name_is_read(rules, message):
    params = {"classes": "binary", "balance": "none", "margin": 0.0, "image_size": 8, "shard_size": 8, "seed": 0,
              "workers": 1, "max_skipped_fraction": 0.0, "source_rules": rules}
    problems = crop.check_params(params)
    assert any(p.startswith("crop.source_rules") and __import__("re").search(message, p) for p in problems), problems


@pytest.fixture(scope="module")
def sites_sample(tmp_path_factory):
    """A 3-site phantom sample (metadata.csv names each patient's site) and its crop store, at 48 px."""
    root = tmp_path_factory.mktemp("sites")
    phantom.generate(root / "raw", patients={"train": 12, "val": 6, "test": 6},
                     class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5}, slices_per_patient=[2, 2],
                     image_size=96, seed=3, progress=False, sites=3)
    return root / "raw", CropStore(build_store(root / "raw", root / "store", 48, 64))


def test_the_sample_s_metadata_csv_gives_every_slice_its_site_in_the_store(sites_sample):
    raw, store = sites_sample
    listed = pd.read_csv(raw / "metadata.csv")
    assert list(listed.columns[:2]) == ["patient id", "source"] and set(listed["source"]) == {"site_a", "site_b", "site_c"}
    expected = dict(zip(listed["patient id"], listed["source"]))
    assert store.index["source"].tolist() == [expected[p] for p in store.index["patient"]]
    # every site holds both classes in every split (sites take turns within a class)
    assert (store.index.groupby(["split", "source"])["label"].nunique() == 2).all()
    hand = store.index[store.index["split"] == "test"].groupby("source")["label"].value_counts()
    counts = store.meta["sources"]["test"]
    assert {(s, n): c for (s, lab), c in hand.items() for n in [store.meta["label_names"][lab]]} == {
        (s, n): c for s, per in counts.items() for n, c in per.items() if c}


def test_sites_differ_in_intensity_and_the_confounded_site_stands_out():
    def mean_gray(site, confounded):
        specs = phantom.plan_slices({"train": 30, "val": 1, "test": 1}, {"normal": 0.5, "covid": 0.5}, (1, 1), 0, 3,
                                    confounded)
        chosen = [s for s in specs if s.site == site][:4]
        return np.mean([phantom.render_slice(s, 96)[0].mean() for s in chosen]), {s.cls for s in chosen}

    means = {site: mean_gray(site, False)[0] for site in ("site_a", "site_b", "site_c")}
    assert max(means.values()) - min(means.values()) > 3, means
    confounded, classes = mean_gray("site_c", True)
    assert classes == {phantom.COVID} and confounded - means["site_c"] > 20


# -----------------------------------------------------------------------------------------------------------------
# per-source metrics


def test_per_source_metrics_match_a_hand_count():
    test = pd.DataFrame({"source": ["a"] * 6 + ["b"] * 4, "patient": ["a1", "a1", "a2", "a2", "a3", "a3", "b1", "b1",
                                                                       "b2", "b2"],
                         "label": [1, 1, 0, 0, 1, 0, 1, 1, 1, 1],
                         "prob": [0.9, 0.2, 0.1, 0.7, 0.8, 0.3, 0.9, 0.6, 0.4, 0.1]})
    by_source = metrics.per_source(test, n_resamples=200)
    a, b = by_source["a"], by_source["b"]
    assert (a["slices"], a["patients"], a["per_class"]) == (6, 3, {"COVID-19": 3, "not COVID-19": 3})
    assert a["accuracy"]["value"] == pytest.approx(4 / 6) and a["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert a["specificity"]["value"] == pytest.approx(2 / 3) and a["roc_auc"]["value"] == pytest.approx(7 / 9)
    assert b["accuracy"]["value"] == pytest.approx(0.5) and b["sensitivity"]["value"] == pytest.approx(0.5)
    assert b["specificity"]["value"] is None and "no non-COVID case" in b["specificity"]["undefined"]
    assert b["roc_auc"]["value"] is None
    assert metrics.worst_source(by_source) == "b"
    result = metrics.evaluate(test, test, n_resamples=50)
    assert result["worst_source"] == "b" and result["by_source"]["a"]["accuracy"] == a["accuracy"] | {
        k: result["by_source"]["a"]["accuracy"][k] for k in ("ci_low", "ci_high")}
    assert "worst source b: accuracy 0.500" in metrics.headline("m", result)


def test_the_summary_shows_each_model_s_worst_source_and_a_per_source_table():
    test = pd.DataFrame({"source": ["a", "a", "b", "b"], "patient": ["1", "2", "3", "4"], "label": [1, 0, 1, 0],
                         "prob": [0.9, 0.1, 0.2, 0.1]})
    result = metrics.evaluate(test, test, n_resamples=20)
    text = report.summary_markdown({"m-logreg": result}, 20)
    row = next(line for line in text.splitlines() if line.startswith("| m-logreg"))
    assert row.endswith("| b: 0.500 [0.000, 1.000] |"), row
    assert "## Per source (test)" in text and "| m-logreg | 1.000 [1.000, 1.000] | **0.500 [0.000, 1.000]** |" in text


# -----------------------------------------------------------------------------------------------------------------
# leave one source out


def features_with_a_flipped_source(n=60, seed=0):
    """Source c's label is the opposite of a's and b's in the first feature; the second carries the signal on c only.
    Fitted with c, a linear model weighs both and gets c right; fitted without c, it gets c wrong."""
    rng = np.random.default_rng(seed)
    frames = {}
    for split in ("train", "val", "test"):
        source = np.repeat(["a", "b", "c"], n // 3)
        label = rng.integers(0, 2, n)
        signal = np.where(source == "c", 1 - label, label) * 2.0 - 1.0
        x = np.c_[signal + rng.normal(0, 0.3, n), signal * (source == "c") + rng.normal(0, 0.3, n)].astype(np.float32)
        rows = pd.DataFrame({"source": source, "label": label, "patient": [f"{split}{i}" for i in range(n)]})
        frames[split] = (rows, x)
    return frames


def test_leave_one_source_out_refits_without_the_source_and_scores_it():
    data = features_with_a_flipped_source()
    params = {"C": 1.0, "max_iter": 200}
    trained = heads.create_head("logreg", params)
    (train, x_train), (val, x_val) = data["train"], data["val"]
    trained.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(), positive=1)
    out = loso.leave_one_source_out("logreg", params, None, 1, data, trained, n_resamples=50, log=lambda _: None)
    assert sorted(out) == ["a", "b", "c"]
    assert out["c"]["in_source"]["accuracy"]["value"] >= 0.85, "trained with c, the model gets c right"
    assert out["c"]["held_out"]["accuracy"]["value"] <= 0.15, "refitted without c, it cannot know c is flipped"
    for source in ("a", "b"):
        assert out[source]["held_out"]["accuracy"]["value"] >= 0.7, "b (or a) still tells how a (or b) works"
    assert out["a"]["slices"] == 20 and set(out["a"]["held_out"]) == set(metrics.SOURCE_METRICS)


def test_a_source_without_which_train_has_one_class_is_skipped_with_the_reason():
    data = features_with_a_flipped_source()
    rows, x = data["train"]
    rows = rows.assign(label=np.where(rows["source"] == "c", 1, 0))  # c holds every positive of train
    data["train"] = (rows, x)
    trained = heads.create_head("logreg", {"C": 1.0, "max_iter": 200})
    trained.fit(x, rows["label"].to_numpy(), *(data["val"][1], data["val"][0]["label"].to_numpy()), positive=1)
    out = loso.leave_one_source_out("logreg", {"C": 1.0, "max_iter": 200}, None, 1, data, trained, 20, 0,
                                    log=lambda _: None)
    assert out["c"]["skipped"] == "without c, train has one class ([0])" and "held_out" not in out["c"]
    assert "held_out" in out["a"]
    table = report.loso_table({"m-logreg": out})
    assert sorted(table["source"]) == ["a", "b"]
    assert "skipped (without c, train has one class ([0]))" in report.loso_markdown({"m-logreg": out})


# -----------------------------------------------------------------------------------------------------------------
# the confounding check, on features of the phantom sample: firing where one site is single-class and distinct


def check_and_flags(root: Path, confounded: bool) -> tuple[dict, list[str]]:
    phantom.generate(root / "raw", patients={"train": 18, "val": 9, "test": 9},
                     class_fractions={"normal": 0.5, "pneumonia": 0.0, "covid": 0.5}, slices_per_patient=[2, 2],
                     image_size=96, seed=5, progress=False, sites=3, confounded=confounded)
    build_store(root / "raw", root / "store", 48, 256)
    (root / "features").mkdir()
    features.extract(root / "store", root / "features", "resnet18", "none", 32, batch_size=64, device="cpu",
                     num_threads=2, progress=False)
    frames, x = {}, {}
    for split in ("train", "val", "test"):
        rows, x[split], meta = featurefile.read_features(root / "features" / f"{split}.parquet")
        frames[split] = rows.assign(label=(rows["label"] == featurefile.label_names(meta).index("COVID-19")).astype(int))
    check = {"source_only": confounding.source_only(frames, 100, 0),
             "source_probe": confounding.source_probe(x, {s: f["source"] for s, f in frames.items()})}
    head = heads.create_head("logreg", {"C": 1.0, "max_iter": 500})
    head.fit(x["train"], frames["train"]["label"].to_numpy(), x["val"], frames["val"]["label"].to_numpy(), positive=1)
    p = head.predict_proba(x["test"])[:, 1]
    result = metrics.evaluate(frames["val"].assign(prob=head.predict_proba(x["val"])[:, 1]),
                              frames["test"].assign(prob=p), n_resamples=50)
    flags = report.flagged_models({"resnet18-logreg": result}, {"resnet18": check}, 0.05)
    (root / "summary.md").write_text(report.summary_markdown({"resnet18-logreg": result}, 50, {"resnet18": check},
                                                             None, 0.05))
    return check, flags


def test_the_confounding_check_fires_on_a_single_class_distinct_site_and_not_on_the_default_sample(tmp_path):
    check, flags = check_and_flags(tmp_path / "confounded", confounded=True)
    test = check["source_only"]["test"]
    assert test["accuracy"]["value"] == 1.0 and test["majority_class"] < 0.75, test
    assert check["source_probe"]["accuracy"] > check["source_probe"]["chance"] + 0.2, check["source_probe"]
    assert flags == ["resnet18-logreg"]
    summary = (tmp_path / "confounded" / "summary.md").read_text()
    assert "| resnet18-logreg ⚠ |" in summary and "**⚠ Flagged: resnet18-logreg.**" in summary

    check, flags = check_and_flags(tmp_path / "default", confounded=False)
    test = check["source_only"]["test"]
    assert test["accuracy"]["value"] - test["majority_class"] < 0.05, test
    assert flags == []
    assert "No model flagged" in (tmp_path / "default" / "summary.md").read_text()


def test_confounding_margin_is_checked():
    assert confounding.check_params({"margin": 0.05}) == []
    assert any("confounding.margin=2" in p for p in confounding.check_params({"margin": 2}))
    assert any("unknown key" in p for p in confounding.check_params({"margin": 0.05, "margn": 1}))


def test_json_round_trip_of_a_check(tmp_path):
    frames = {s: pd.DataFrame({"source": ["a", "a", "b", "b"], "label": [1, 1, 0, 0], "patient": list("wxyz")})
              for s in ("train", "val", "test")}
    out = confounding.source_only(frames, 20, 0)
    (tmp_path / "c.json").write_text(json.dumps(out))
    assert json.loads((tmp_path / "c.json").read_text())["test"]["accuracy"]["value"] == 1.0
    assert out["train_rates"] == {"a": 1.0, "b": 0.0}


def test_compare_prints_each_model_on_its_worst_source():
    from covidct import compare

    test = pd.DataFrame({"source": ["a", "a", "b", "b"], "patient": ["1", "2", "3", "4"], "label": [1, 0, 1, 0],
                         "prob": [0.9, 0.1, 0.2, 0.1]})
    result = metrics.evaluate(test, test, n_resamples=20)
    lines = compare.table({"vgg16-logreg": result}, "worst_source", ["accuracy"], 120)
    assert any(line.startswith("vgg16 ") and "0.500 [0.000, 1.000]" in line for line in lines), lines
    assert compare.metrics_of({"test": {}}, "worst_source") == {}
