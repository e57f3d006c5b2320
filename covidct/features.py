"""Frozen-backbone features: crop store -> ``<out>/<split>.parquet``, streamed with bounded memory.

One Parquet file per split: ``fname``, ``patient``, ``label`` and ``features`` (a fixed-size float32
list). Backbone, weights, input size and library versions are in the schema metadata. Reading the
next batch and writing the last one run on helper threads, so the model is the only thing the main
thread waits for.
"""

from __future__ import annotations

import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from covidct.backbones import create_backbone, get_spec
from covidct.rawdata import SPLITS
from covidct.store import CropStore


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class Preprocess(torch.nn.Module):
    """uint8 grayscale (N, H, W) -> normalised float (N, 3, size, size), on whatever device it runs."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images.unsqueeze(1).float().div_(255.0), self.size, self.mean, self.std)


def to_model_input(x: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Gray (N, 1, H, W) in [0, 1] -> resized to size x size, expanded to RGB, normalised: what every backbone eats
    (the extract stage and the fine-tuned ``Classifier`` alike, so both see identical inputs)."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def schema_for(dim: int, metadata: dict) -> pa.Schema:
    return pa.schema(
        [
            ("fname", pa.string()),
            ("patient", pa.string()),
            ("label", pa.int64()),
            ("features", pa.list_(pa.float32(), dim)),
        ],
        metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()},
    )


def library_versions() -> dict:
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "pyarrow": pa.__version__, "numpy": np.__version__}
    for module in ("pytorch_pretrained_vit", "efficientnet_lite_pytorch"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return versions


def extract(store_dir: str | os.PathLike, out_dir: str | os.PathLike, backbone: str, weights: str, image_size: int,
            batch_size: int = 64, device: str = "auto", seed: int = 0, num_threads: int = 0,
            row_group_size: int = 8192, progress: bool = True) -> dict:
    """Writes ``out_dir/{train,val,test}.parquet`` (``out_dir`` must exist); returns per-split counts and speed."""
    from tqdm import tqdm

    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    dev = resolve_device(device)
    spec = get_spec(backbone)
    store = CropStore(store_dir)
    torch.manual_seed(seed)  # random-init ("none") backbones are then the same on every run
    model = create_backbone(backbone, weights, image_size).to(dev)
    prep = Preprocess(image_size, spec.mean, spec.std).to(dev)
    on_cuda = dev.type == "cuda"
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)

    metadata = {
        "backbone": backbone, "weights": weights, "image_size": image_size, "seed": seed, "feature_dim": spec.feature_dim,
        "crop_size": store.size, "normalization": {"mean": spec.mean, "std": spec.std},
        "label_names": store.meta["label_names"], "balance": store.meta["balance"],
        "class_weights": store.meta["class_weights"], "versions": library_versions(),
    }
    schema = schema_for(spec.feature_dim, metadata)
    stats = {}
    bar = tqdm(total=len(store.index), desc=f"extract {backbone}", unit="img", disable=not progress)
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer_pool:
        for split in SPLITS:
            start, n = time.perf_counter(), 0
            batches = store.batches(split, batch_size)
            pending_write = None
            with pq.ParquetWriter(Path(out_dir) / f"{split}.parquet", schema) as writer:
                next_batch = reader.submit(next, batches, None)
                buffered = []
                while (item := next_batch.result()) is not None:
                    next_batch = reader.submit(next, batches, None)
                    rows, images = item
                    feats = _forward(model, prep, images, dev, on_cuda)
                    buffered.append((rows, feats))
                    n += len(rows)
                    bar.update(len(rows))
                    if sum(len(r) for r, _ in buffered) >= row_group_size:
                        if pending_write is not None:
                            pending_write.result()
                        pending_write = writer_pool.submit(_write, writer, schema, buffered)
                        buffered = []
                if pending_write is not None:
                    pending_write.result()
                if buffered:
                    _write(writer, schema, buffered)
            seconds = time.perf_counter() - start
            stats[split] = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1)}
    bar.close()
    return stats


@torch.inference_mode()
def _forward(model, prep, images: np.ndarray, dev: torch.device, on_cuda: bool) -> np.ndarray:
    x = torch.from_numpy(images)
    if on_cuda:
        x = x.pin_memory().to(dev, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(prep(x).contiguous(memory_format=torch.channels_last))
    else:
        y = model(prep(x.to(dev)))
    return y.float().cpu().numpy()


def _write(writer: pq.ParquetWriter, schema: pa.Schema, buffered: list) -> None:
    import pandas as pd

    rows = pd.concat([r for r, _ in buffered])
    feats = np.concatenate([f for _, f in buffered]).astype(np.float32, copy=False)
    dim = schema.field("features").type.list_size
    table = pa.table(
        {
            "fname": pa.array(rows["fname"].to_numpy(), pa.string()),
            "patient": pa.array(rows["patient"].to_numpy(), pa.string()),
            "label": pa.array(rows["label"].to_numpy(), pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), dim),
        },
        schema=schema,
    )
    writer.write_table(table)


def _metadata(schema: pa.Schema) -> dict:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def read_metadata(path: str | os.PathLike) -> dict:
    """One split file's schema metadata (backbone, label names, ...), without reading its rows."""
    return _metadata(pq.read_schema(path))


def read_features(path: str | os.PathLike):
    """(DataFrame without features, float32 array (n, dim), schema metadata dict) from one split file."""
    table = pq.read_table(path)
    dim = table.schema.field("features").type.list_size
    flat = table.column("features").combine_chunks().values.to_numpy(zero_copy_only=False)
    return table.drop(["features"]).to_pandas(), flat.reshape(-1, dim).astype(np.float32, copy=False), _metadata(table.schema)
