import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covidct import crop, layout, store
from covidct.errors import DataError


def test_crop_to_a_known_box(tmp_path):
    image = np.zeros((100, 120), np.uint8)
    image[20:60, 30:90] = 200  # the box: x 30..90, y 20..60 (max exclusive, as COVIDx uses it)
    image[20:60, 30] = 255  # a marker column on the box's left edge
    Image.fromarray(image).save(tmp_path / "a.png")
    out = crop.load_crop(tmp_path / "a.png", (30, 20, 90, 60), size=60, margin=0.0)
    assert out.shape == (60, 60)
    # 60x40 box resized to 60x60: every pixel from inside the box, the marker still on the left
    assert out.min() >= 200 and out[:, 0].mean() > out[:, 1:].mean()
    assert crop.crop_box(120, 100, (30, 20, 90, 60), margin=0.5) == (0, 0, 120, 80)


def test_patient_is_the_name_without_scan_and_slice():
    assert layout.patient_id("NCP_96_1328_0032.png") == "NCP_96"
    assert layout.patient_id("radiopaedia_org_covid-19-pneumonia-7_85703_0-0050.png") == "radiopaedia_org_covid-19-pneumonia-7"


def _table(rows):
    return pd.DataFrame(rows, columns=["split", "fname", "cls", "patient", "line"])


def test_undersampling_balances_train_and_val_never_test():
    rows, line = [], 0
    for split in layout.SPLITS:
        for cls, n in ((0, 30), (1, 5), (2, 10)):
            for i in range(n):
                line += 1
                rows.append((split, f"s_{split}{cls}_{i}_0.png", cls, f"s_{split}{cls}", line))
    table, info = crop.label_and_balance(_table(rows), "binary", "undersample", seed=0)
    assert info["counts"]["train"] == {"Normal": 10, "COVID-19": 10}
    assert info["counts"]["val"] == {"Normal": 10, "COVID-19": 10}
    assert info["counts"]["test"] == {"Normal": 30, "COVID-19": 10}
    assert info["class_weights"] == [1.0, 1.0]
    assert (table["cls"] != 1).all()  # pneumonia dropped

    weighted, info = crop.label_and_balance(_table(rows), "binary_pneumonia_negative", "weighted", seed=0)
    assert info["counts"]["train"] == {"Non-COVID": 35, "COVID-19": 10}
    assert info["class_weights"] == pytest.approx([45 / 70, 45 / 20])
    three, info = crop.label_and_balance(_table(rows), "three_class", "none", seed=0)
    assert len(three) == len(rows) and info["label_names"] == ["Normal", "Pneumonia", "COVID-19"]


def test_leakage_between_splits_is_an_error(tmp_path):
    (tmp_path / "train_COVIDx_CT-3A.txt").write_text("a_1_1_1.png 0 0 0 5 5\r\nb_2_1_1.png 2 0 0 5 5  \n")
    (tmp_path / "val_COVIDx_CT-3A.txt").write_text("a_1_1_1.png 0 0 0 5 5\n")
    (tmp_path / "test_COVIDx_CT-3A.txt").write_text("c_3_1_1.png 0 0 0 5 5\n")
    with pytest.raises(DataError, match=r"a_1_1_1.png \(\S*/train_COVIDx_CT-3A.txt:1\).*one split"):
        crop.slice_table(tmp_path)
    (tmp_path / "val_COVIDx_CT-3A.txt").write_text("a_1_1_2.png 0 0 0 5 5\n")
    with pytest.raises(DataError, match=r"patients in more than one split.*'a_1'"):
        crop.slice_table(tmp_path)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "train_COVIDx_CT-3A.txt"
    path.write_text("a_1_1_1.png 0 0 0 5 5\na_1_1_2.png 0 0 5\n")
    with pytest.raises(DataError, match=r"train_COVIDx_CT-3A.txt:2: expected 6 fields"):
        layout.read_split_file(path, "train")


def test_store_round_trip_in_any_order(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (10, 8, 8), dtype=np.uint8)
    writer = store.ShardWriter(tmp_path, 10, 8, shard_size=4)
    for image in images:
        writer.append(image)
    writer.close()
    index = pd.DataFrame({"fname": [f"{i}" for i in range(10)], "split": ["train"] * 10})
    index["shard"], index["offset"] = writer.locations()
    store.write_index(tmp_path, index, {"size": 8})
    s = store.CropStore(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]
    assert np.array_equal(np.concatenate([b for _, b in s.batches("train", 3)]), images)
    order = [7, 1, 8, 0, 5]
    assert np.array_equal(s.read(s.index.iloc[order]), images[order])


def test_store_from_the_sample(tiny_sample, tmp_path):
    table = crop.slice_table(tiny_sample)
    table, info = crop.label_and_balance(table, "binary", "undersample", seed=0)
    meta, skipped = crop.build_store(table, info, tiny_sample, tmp_path, size=32, margin=0.0, shard_size=16,
                                     workers=2, progress=False)
    assert skipped == []
    s = store.CropStore(tmp_path)
    assert meta["slices"] == len(s.index) == len(table)
    assert list(s.index["split"].drop_duplicates()) == ["train", "val", "test"]
    first = s.index.iloc[0]
    with Image.open(tiny_sample / "3A_images" / first.fname) as im:
        expected = np.asarray(im.crop((first.xmin, first.ymin, first.xmax, first.ymax)).resize((32, 32), Image.BILINEAR))
    assert np.array_equal(s.image(0), expected)
