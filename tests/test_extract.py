import numpy as np
import pyarrow.parquet as pq
import pytest

from covidct import crop, features


@pytest.fixture(scope="module")
def crop_store(tiny_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("crops")
    table, info = crop.label_and_balance(crop.slice_table(tiny_sample), "binary", "undersample", seed=0)
    crop.build_store(table, info, tiny_sample, out, size=48, margin=0.0, shard_size=10, workers=1, progress=False)
    return out


def run(store_dir, out, backbone="resnet18", **kw):
    out.mkdir()
    return features.extract(store_dir, out, backbone, "none", 32, batch_size=5, device="cpu", num_threads=2,
                            row_group_size=7, progress=False, **kw)


def test_same_input_gives_identical_features_on_cpu(crop_store, tmp_path):
    run(crop_store, tmp_path / "a")
    run(crop_store, tmp_path / "b")
    for split in ("train", "val", "test"):
        rows_a, a, _ = features.read_features(tmp_path / "a" / f"{split}.parquet")
        rows_b, b, _ = features.read_features(tmp_path / "b" / f"{split}.parquet")
        assert rows_a.equals(rows_b)
        assert np.array_equal(a, b)


def test_parquet_layout_order_and_metadata(crop_store, tmp_path):
    from covidct.store import CropStore

    stats = run(crop_store, tmp_path / "f", backbone="efficientnet_lite0")
    store = CropStore(crop_store)
    for split in ("train", "val", "test"):
        path = tmp_path / "f" / f"{split}.parquet"
        schema = pq.read_schema(path)
        assert schema.names == ["fname", "patient", "label", "features"]
        assert schema.field("features").type.list_size == 1280
        rows, x, meta = features.read_features(path)
        expected = store.rows(split)
        assert list(rows["fname"]) == list(expected["fname"]) and list(rows["label"]) == list(expected["label"])
        assert x.shape == (len(expected), 1280) and np.isfinite(x).all()
        assert meta["backbone"] == "efficientnet_lite0" and meta["weights"] == "none" and meta["image_size"] == "32"
        assert "torch" in meta["versions"]
        assert stats[split]["images"] == len(expected)


def test_preprocess_makes_three_normalised_channels():
    import torch

    prep = features.Preprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = prep(torch.full((2, 32, 32), 255, dtype=torch.uint8))
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, 2.0))
