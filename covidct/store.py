"""The crop store: decoded uint8 slices in a few large ``.npy`` shards plus a Parquet index.

    data/crops/
      shard-00000.npy ...   (n, size, size) uint8, memory-mapped on read
      index.parquet         fname, patient, split, label, cls, bbox, shard, offset
      meta.json             size, classes, label names, balance, class weights, counts

Rows are ordered train, val, test, so one split is one contiguous run of rows: readers stream it in
order with bounded memory, whatever the dataset size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

INDEX, META = "index.parquet", "meta.json"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


class ShardWriter:
    """Appends images to memory-mapped shards of ``shard_size`` images each.

    ``total`` is an upper bound (some inputs may turn out unusable): the last shard is trimmed on close.
    """

    def __init__(self, out_dir: Path, total: int, size: int, shard_size: int):
        self.out_dir, self.total, self.size, self.shard_size = Path(out_dir), total, size, shard_size
        self.written, self._shard, self._array, self._used = 0, -1, None, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def append(self, image: np.ndarray) -> None:
        offset = self.written % self.shard_size
        if offset == 0:
            self._open_next()
        self._array[offset] = image
        self.written += 1
        self._used = offset + 1

    def _open_next(self) -> None:
        self._flush()
        self._shard += 1
        n = min(self.shard_size, self.total - self.written)
        path = self.out_dir / shard_name(self._shard)
        self._array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, self.size, self.size))

    def _flush(self) -> None:
        if self._array is not None:
            self._array.flush()
            self._array = None

    def close(self) -> None:
        if self._array is not None and self._used < len(self._array):
            path = self.out_dir / shard_name(self._shard)
            used = np.array(self._array[:self._used])
            self._array = None
            tmp = path.with_name(f".tmp-{path.name}")
            np.save(tmp, used)
            os.replace(tmp, path)
        self._flush()

    def locations(self):
        rows = np.arange(self.written)
        return rows // self.shard_size, rows % self.shard_size


def write_index(out_dir: Path, index: pd.DataFrame, meta: dict) -> None:
    index.to_parquet(Path(out_dir) / INDEX, index=False)
    (Path(out_dir) / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


class CropStore:
    """Read side: ``store.index`` (a DataFrame), ``store.meta``, and batches of images by split."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / INDEX).is_file():
            raise FileNotFoundError(f"{self.path}: no crop store here ({INDEX} missing). Run: dvc repro crop")
        self.index = pd.read_parquet(self.path / INDEX)
        self.meta = json.loads((self.path / META).read_text())
        self._shards: dict[int, np.ndarray] = {}

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    def shard(self, number: int) -> np.ndarray:
        if number not in self._shards:
            self._shards[number] = np.load(self.path / shard_name(number), mmap_mode="r")
        return self._shards[number]

    def rows(self, split: str | None = None) -> pd.DataFrame:
        return self.index if split is None else self.index[self.index["split"] == split]

    def image(self, row: int) -> np.ndarray:
        return self.shard(int(self.index["shard"].iat[row]))[int(self.index["offset"].iat[row])]

    def batches(self, split: str | None, batch_size: int):
        """Yields (rows DataFrame, uint8 array (n, size, size)) in store order; copies at most one batch."""
        rows = self.rows(split)
        for start in range(0, len(rows), batch_size):
            part = rows.iloc[start:start + batch_size]
            yield part, self.read(part)

    def read(self, rows: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(rows), self.size, self.size), np.uint8)
        shards, offsets = rows["shard"].to_numpy(), rows["offset"].to_numpy()
        for number in np.unique(shards):
            picked = np.flatnonzero(shards == number)
            block = offsets[picked]
            data = self.shard(int(number))
            if picked[-1] - picked[0] == len(picked) - 1 and block[-1] - block[0] == len(block) - 1:
                # Consecutive rows of one shard are one slice of its memmap: a single copy.
                out[picked[0]:picked[-1] + 1] = data[block[0]:block[-1] + 1]
            else:
                out[picked] = data[block]
        return out
