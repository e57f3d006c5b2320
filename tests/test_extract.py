import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import build_store

from covidct import featurefile, features


@pytest.fixture(scope="module")
def crop_store(tiny_sample, tmp_path_factory):
    return build_store(tiny_sample, tmp_path_factory.mktemp("crops"), size=48, shard_size=10)


def run(store_dir, out, backbone="resnet18", **kw):
    out.mkdir()
    return features.extract(store_dir, out, backbone, "none", 32, batch_size=5, device="cpu", num_threads=2,
                            row_group_size=7, progress=False, **kw)


def test_same_input_gives_identical_features_on_cpu(crop_store, tmp_path):
    run(crop_store, tmp_path / "a")
    run(crop_store, tmp_path / "b")
    for split in ("train", "val", "test"):
        rows_a, a, _ = featurefile.read_features(tmp_path / "a" / f"{split}.parquet")
        rows_b, b, _ = featurefile.read_features(tmp_path / "b" / f"{split}.parquet")
        assert rows_a.equals(rows_b)
        assert np.array_equal(a, b)


def test_parquet_layout_order_and_metadata(crop_store, tmp_path):
    from covidct.store import CropStore

    stats = run(crop_store, tmp_path / "f", backbone="efficientnet_lite0")
    store = CropStore(crop_store)
    for split in ("train", "val", "test"):
        path = tmp_path / "f" / f"{split}.parquet"
        schema = pq.read_schema(path)
        assert schema.names == ["fname", "patient", "source", "label", "features"]
        assert schema.field("features").type.list_size == 1280
        rows, x, meta = featurefile.read_features(path)
        expected = store.rows(split)
        assert list(rows["fname"]) == list(expected["fname"]) and list(rows["label"]) == list(expected["label"])
        assert list(rows["source"]) == list(expected["source"])
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


def test_store_reads_any_rows_into_a_given_buffer(crop_store):
    from covidct.store import CropStore

    store = CropStore(crop_store)
    rows = store.index.iloc[[3, 4, 5, 0, 12, 11, len(store.index) - 1]]  # runs, a jump back, across shards
    expected = np.stack([np.asarray(store.shard(int(r.shard))[int(r.offset)]) for r in rows.itertuples()])
    out = np.full((len(rows), store.size, store.size), 7, np.uint8)
    assert store.read(rows, out=out) is out
    assert np.array_equal(out, expected)
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        store.read(rows, out=np.empty((len(rows), store.size, store.size), np.float32))
    store.close()


def test_truncated_shard_is_named_with_what_to_do(crop_store, tmp_path):
    import shutil

    from covidct.store import shard_name

    broken = tmp_path / "crops"
    shutil.copytree(crop_store, broken)
    shard = broken / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-100])
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"shard-00001\.npy: ends before image .*dvc repro crop"):
        features.extract(broken, tmp_path / "out", "resnet18", "none", 32, batch_size=4, device="cpu",
                         progress=False)


def test_padded_static_batches_give_the_features_of_plain_ones(crop_store):
    """What a compiled engine does with a short last batch (padding, then dropping it) changes nothing."""
    import torch

    from covidct.store import CropStore

    store = CropStore(crop_store)
    images = torch.from_numpy(store.read(store.index.iloc[:3]))
    engine = features.Engine("resnet18", "none", 32, "cpu", seed=0)
    plain = engine(images)
    engine.static_batch = 8
    padded = engine(images)
    assert padded.shape == plain.shape == (3, 512)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-5)


def test_a_failing_writer_stops_the_run_with_its_error(crop_store, tmp_path, monkeypatch):
    def broken_write(*args):
        raise OSError("disk full")

    monkeypatch.setattr(features, "_write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        run(crop_store, tmp_path / "f")


@pytest.mark.gpu
def test_cuda_extract_matches_cpu_within_bf16_precision(crop_store, tmp_path):
    run(crop_store, tmp_path / "cpu")
    (tmp_path / "gpu").mkdir()
    features.extract(crop_store, tmp_path / "gpu", "resnet18", "none", 32, batch_size=5, device="cuda",
                     row_group_size=7, progress=False)
    for split in ("train", "val", "test"):
        rows_c, c, _ = featurefile.read_features(tmp_path / "cpu" / f"{split}.parquet")
        rows_g, g, _ = featurefile.read_features(tmp_path / "gpu" / f"{split}.parquet")
        assert rows_c.equals(rows_g)
        cosine = (c * g).sum(1) / np.linalg.norm(c, axis=1) / np.linalg.norm(g, axis=1)
        assert cosine.min() > 0.99
