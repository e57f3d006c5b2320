"""Frozen-backbone features: crop store -> ``<out>/<split>.parquet``, streamed with bounded memory.

One Parquet file per split: ``fname``, ``patient``, ``source``, ``label`` and ``features`` (a fixed-size float32
list). Backbone, weights, input size and library versions are in the schema metadata. Reading the
next batch and writing the last one run on helper threads, so the model is the only thing the main
thread waits for.
"""

from __future__ import annotations

import os
import platform
import queue
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from covidct.backbones import create_backbone, get_spec
from covidct.classifier import resolve_device, to_model_input
from covidct.featurefile import schema_for
from covidct.layout import SPLITS
from covidct.params import (
    MAX_WORKERS,
    Problems,
    choice,
    device_name,
    flag,
    integer,
    is_positive_int,
    unknown_keys,
    worker_count,
)
from covidct.store import CropStore

PRECISIONS = ("auto", "fp32", "bf16")


def check_params(extract: dict) -> list[str]:
    """The ``extract:`` section."""
    problems = Problems(unknown_keys("extract", extract, ("device", "batch_size", "num_threads", "precision",
                                                         "compile", "processes")))
    problems += device_name("extract.device", extract.get("device"))
    problems.require(is_positive_int(extract.get("batch_size")),
                     f"extract.batch_size={extract.get('batch_size')!r}: a positive integer")
    problems += worker_count("extract.num_threads", extract.get("num_threads"))
    problems += integer("extract.processes", extract.get("processes", 1), 1, MAX_WORKERS, " (1 = no torchrun)")
    problems += choice("extract.precision", extract.get("precision", "auto"), PRECISIONS)
    problems += flag("extract.compile", extract.get("compile", False))
    return problems


class Preprocess(torch.nn.Module):
    """uint8 grayscale (N, H, W) -> normalised float (N, 3, size, size), on whatever device it runs."""

    def __init__(self, size: int, mean, std):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images.unsqueeze(1).float().div_(255.0), self.size, self.mean, self.std)


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


class Engine:
    """A frozen backbone ready to run on uint8 slices already on its device: preprocessing, precision
    (bf16 autocast on CUDA by default), channels-last on CUDA and, optionally, ``torch.compile``.

    Compiled engines see one static batch shape: a short last batch is padded and the padding dropped.
    """

    def __init__(self, backbone: str, weights: str, image_size: int, device: str = "auto", seed: int = 0,
                 precision: str = "auto", compile: bool = False, batch_size: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}; choose one of {PRECISIONS}")
        self.device = resolve_device(device, "extract.device")
        if self.device.type == "cuda":
            # An explicit index, made current: events, streams and the reader thread then all mean this GPU
            # (one per rank under torchrun).
            self.device = torch.device("cuda", self.device.index if self.device.index is not None
                                       else torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        spec = get_spec(backbone)
        torch.manual_seed(seed)  # random-init ("none") backbones are then the same on every run
        model = create_backbone(backbone, weights, image_size).to(self.device)
        self.prep = Preprocess(image_size, spec.mean, spec.std).to(self.device)
        on_cuda = self.device.type == "cuda"
        self.bf16 = precision == "bf16" or (precision == "auto" and on_cuda)
        self.channels_last = on_cuda
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if on_cuda:
            torch.backends.cudnn.benchmark = True
        self.model = torch.compile(model, dynamic=False) if compile else model
        self.static_batch = batch_size if compile else None
        self.feature_dim, self.image_size = spec.feature_dim, image_size

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, H, W) on the engine's device -> float32 features (n, dim) on the same device."""
        n = len(images)
        if self.static_batch and n < self.static_batch:
            images = torch.cat([images, images.new_zeros((self.static_batch - n, *images.shape[1:]))])
        return self.forward(self.model_input(images))[:n].float()

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (n, H, W) -> the normalised (n, 3, size, size) batch the model takes, in its memory format."""
        x = self.prep(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone alone on a ``model_input`` batch, at the engine's precision (the benchmark's ceiling)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x)


def stream_features(engine: Engine, store: CropStore, rows, batch_size: int, prefetch: int = 3):
    """Yields (rows part, float32 features (n, dim) numpy) batch by batch, in ``rows`` order.

    A helper thread reads the store (``pread`` into pinned memory on CUDA) and copies each batch to the device
    on its own stream while the model runs the previous one; results come back to pinned memory without
    stalling: batch k's features are waited for only after batch k+1 has been launched.
    """
    on_cuda = engine.device.type == "cuda"
    batches: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    reader = threading.Thread(target=_read_batches, name="extract-read", daemon=True,
                              args=(store, rows, batch_size, engine.device, batches, stop))
    reader.start()
    pending = deque()
    try:
        while (item := batches.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            part, images, copied = item
            if copied is not None:
                torch.cuda.current_stream(engine.device).wait_event(copied)
                images.record_stream(torch.cuda.current_stream(engine.device))
            features = engine(images)
            if on_cuda:
                host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
                host.copy_(features, non_blocking=True)
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(engine.device))
                pending.append((part, host, done))
            else:
                pending.append((part, features, None))
            while len(pending) > (1 if on_cuda else 0):
                part, host, done = pending.popleft()
                if done is not None:
                    done.synchronize()
                yield part, host.numpy()
        for part, host, done in pending:
            done.synchronize()
            yield part, host.numpy()
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                batches.get(timeout=0.1)
            except queue.Empty:
                pass
        reader.join()


def _put(into: queue.Queue, item, give_up) -> bool:
    """``into.put(item)``, except that it returns False once ``give_up()`` is true instead of blocking for good
    on a consumer that has stopped."""
    while not give_up():
        try:
            into.put(item, timeout=0.1)
            return True
        except queue.Full:
            pass
    return False


def _read_batches(store: CropStore, rows, batch_size: int, device: torch.device, out, stop) -> None:
    def put(item) -> bool:
        return _put(out, item, stop.is_set)

    try:
        on_cuda = device.type == "cuda"
        if on_cuda:
            torch.cuda.set_device(device)
            stream = torch.cuda.Stream(device)
            # Two pinned buffers: one is read into while the other's copy to the GPU is in flight.
            shape = (batch_size, store.size, store.size)
            buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            copies = [None, None]
        for k, start in enumerate(range(0, len(rows), batch_size)):
            part = rows.iloc[start:start + batch_size]
            if not on_cuda:
                images = torch.from_numpy(store.read(part)).to(device)
                if not put((part, images, None)):
                    return
                continue
            slot = k % 2
            if copies[slot] is not None:
                copies[slot].synchronize()
            host = buffers[slot][:len(part)]
            store.read(part, out=host.numpy())
            with torch.cuda.stream(stream):
                images = host.to(device, non_blocking=True)
                copies[slot] = torch.cuda.Event()
                copies[slot].record(stream)
            if not put((part, images, copies[slot])):
                return
        put(None)
    except BaseException as exc:  # handed to the consumer, which raises it with its traceback
        put(exc)


class ParquetSink:
    """Writes (rows, features) batches into one Parquet file on a helper thread, ``row_group_size`` rows per
    row group; ``put`` blocks only when ``max_pending`` batches are waiting (bounded memory)."""

    def __init__(self, path, schema: pa.Schema, row_group_size: int = 8192, max_pending: int = 8):
        self.schema, self.row_group_size = schema, row_group_size
        self._writer = pq.ParquetWriter(path, schema)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="extract-write", daemon=True)
        self._thread.start()

    def put(self, rows, features: np.ndarray) -> None:
        if not _put(self._queue, (rows, features), lambda: self._error is not None):
            raise self._error

    def _run(self) -> None:
        buffered, count = [], 0
        try:
            while (item := self._queue.get()) is not None:
                buffered.append(item)
                count += len(item[0])
                if count >= self.row_group_size:
                    _write(self._writer, self.schema, buffered)
                    buffered, count = [], 0
            if buffered:
                _write(self._writer, self.schema, buffered)
        except BaseException as exc:
            self._error = exc
            while self._queue.get() is not None:  # drain so put/close never block on a dead writer
                pass

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._writer.close()
        if self._error is not None:
            raise self._error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of ``rank``: contiguous, in order, sizes differing by at most one."""
    return rank * n // world_size, (rank + 1) * n // world_size


def extract(store_dir: str | os.PathLike, out_dir: str | os.PathLike, backbone: str, weights: str, image_size: int,
            batch_size: int = 64, device: str = "auto", seed: int = 0, num_threads: int = 0,
            row_group_size: int = 8192, progress: bool = True, precision: str = "auto", compile: bool = False,
            rank: int = 0, world_size: int = 1, engine: Engine | None = None) -> dict:
    """Writes ``out_dir/{train,val,test}.parquet`` (``out_dir`` must exist); returns per-split counts and speed.

    ``engine``: one already built (and compiled, warmed up) with these settings, as the benchmark passes.

    With ``world_size`` > 1 this process does only its contiguous share of each split (``shard_bounds``);
    ``merge_parts`` joins the shares of all ranks in rank order.
    """
    from tqdm import tqdm

    torch.set_num_threads(num_threads or os.cpu_count() or 1)
    store = CropStore(store_dir)
    engine = engine or Engine(backbone, weights, image_size, device, seed, precision, compile, batch_size)
    spec = get_spec(backbone)
    metadata = {
        "backbone": backbone, "weights": weights, "image_size": image_size, "seed": seed, "feature_dim": spec.feature_dim,
        "crop_size": store.size, "normalization": {"mean": spec.mean, "std": spec.std},
        "label_names": store.meta["label_names"], "balance": store.meta["balance"],
        "class_weights": store.meta["class_weights"], "versions": library_versions(),
    }
    schema = schema_for(spec.feature_dim, metadata)
    shares = {}
    for split in SPLITS:
        rows = store.rows(split)
        start, stop = shard_bounds(len(rows), rank, world_size)
        shares[split] = rows.iloc[start:stop]
    stats = {}
    bar = tqdm(total=sum(map(len, shares.values())), desc=f"extract {backbone}", unit="img", disable=not progress)
    for split, rows in shares.items():
        start, n = time.perf_counter(), 0
        with ParquetSink(Path(out_dir) / f"{split}.parquet", schema, row_group_size) as sink:
            for part, feats in stream_features(engine, store, rows, batch_size):
                sink.put(part, feats)
                n += len(part)
                bar.update(len(part))
        seconds = time.perf_counter() - start
        stats[split] = {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1)}
    bar.close()
    store.close()
    return stats


def merge_parts(part_dirs: list, out_dir: str | os.PathLike, row_group_size: int = 8192) -> None:
    """Concatenates each split's Parquet file of ``part_dirs`` (rank order) into ``out_dir``, streaming row groups."""
    for split in SPLITS:
        paths = [Path(d) / f"{split}.parquet" for d in part_dirs]
        schema = pq.read_schema(paths[0])
        with pq.ParquetWriter(Path(out_dir) / f"{split}.parquet", schema) as writer:
            for path in paths:
                part = pq.ParquetFile(path)
                if part.schema_arrow != schema:
                    raise ValueError(f"{path}: schema differs from {paths[0]}'s; were the ranks run with one config?")
                for batch in part.iter_batches(batch_size=row_group_size):
                    writer.write_batch(batch, row_group_size=row_group_size)


def _write(writer: pq.ParquetWriter, schema: pa.Schema, buffered: list) -> None:
    import pandas as pd

    rows = pd.concat([r for r, _ in buffered])
    feats = np.concatenate([f for _, f in buffered]).astype(np.float32, copy=False)
    dim = schema.field("features").type.list_size
    table = pa.table(
        {
            "fname": pa.array(rows["fname"].to_numpy(), pa.string()),
            "patient": pa.array(rows["patient"].to_numpy(), pa.string()),
            "source": pa.array(rows["source"].to_numpy(), pa.string()),
            "label": pa.array(rows["label"].to_numpy(), pa.int64()),
            "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), dim),
        },
        schema=schema,
    )
    writer.write_table(table)
