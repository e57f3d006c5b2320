"""The crop store: decoded uint8 slices in a few large ``.npy`` shards plus a Parquet index.

    data/crops/
      shard-00000.npy ...   (n, size, size) uint8, memory-mapped on read
      index.parquet         fname, patient, split, label, cls, bbox, shard, offset
      meta.json             size, classes, label names, balance, class weights, counts

Rows are ordered train, val, test, so one split is one contiguous run of rows: readers stream it in
order with bounded memory, whatever the dataset size.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

INDEX, META = "index.parquet", "meta.json"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.npy"


class ShardWriter:
    """Appends images to shards of ``shard_size`` images each, with plain writes.

    ``total`` is an upper bound (some inputs may turn out unusable): the last shard is trimmed on close. No
    memory map: writing into a mapped file on a full disk kills the process with SIGBUS, where ``write`` raises
    ``OSError(ENOSPC)`` that the stage reports and cleans up after.
    """

    def __init__(self, out_dir: Path, total: int, size: int, shard_size: int):
        self.out_dir, self.total, self.size, self.shard_size = Path(out_dir), total, size, shard_size
        self.written, self._shard, self._file, self._capacity, self._used = 0, -1, None, 0, 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def append(self, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        if image.shape != (self.size, self.size):
            raise ValueError(f"expected a {self.size}x{self.size} image, got {image.shape}")
        if self._used == self._capacity:
            self._open_next()
        with _naming(self._file.name):
            self._file.write(memoryview(image).cast("B"))
        self.written += 1
        self._used += 1

    def _open_next(self) -> None:
        self._close_file()
        self._shard += 1
        self._capacity, self._used = min(self.shard_size, self.total - self.written), 0
        self._file = open(self.out_dir / shard_name(self._shard), "wb")  # noqa: SIM115 - open across appends
        with _naming(self._file.name):
            _write_header(self._file, self._capacity, self.size)

    def _close_file(self) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        with _naming(f.name):
            self._finish(f)

    def _finish(self, f) -> None:
        try:
            if self._used < self._capacity:  # the last shard, short of unusable slices: shape and length fixed up
                data_start = f.tell() - self._used * self.size * self.size
                f.seek(0)
                _write_header(f, self._used, self.size)
                if f.tell() != data_start:  # never with numpy's 64-byte header padding; kept correct regardless
                    raise RuntimeError(f"{f.name}: header length changed")
                f.truncate(data_start + self._used * self.size * self.size)
        finally:
            f.close()

    def close(self) -> None:
        self._close_file()

    def locations(self):
        rows = np.arange(self.written)
        return rows // self.shard_size, rows % self.shard_size


@contextlib.contextmanager
def _naming(path) -> None:
    """Adds the file's name to an ``OSError`` from writing it (``write`` on a full disk names none)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _write_header(f, images: int, size: int) -> None:
    """The ``.npy`` header of a C-order uint8 (images, size, size) array, byte for byte what ``np.save`` writes."""
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                             "fortran_order": False, "shape": (images, size, size)})


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
        self._files: dict[int, tuple[int, int]] = {}

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

    def read(self, rows: pd.DataFrame, out: np.ndarray | None = None) -> np.ndarray:
        """The images of ``rows`` into ``out`` (a C-contiguous uint8 (n, size, size) array, e.g. a pinned host
        buffer's view) or a new array.

        Plain ``pread`` calls, one per run of consecutive rows, not the memory map: the bytes land straight in
        ``out``, the GIL is released, and nothing stays mapped, so a 382k-slice pass keeps a flat RSS.
        """
        n, size = len(rows), self.size
        out = np.empty((n, size, size), np.uint8) if out is None else out
        if out.shape != (n, size, size) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {(n, size, size)}")
        if n == 0:
            return out
        shards, offsets = rows["shard"].to_numpy(), rows["offset"].to_numpy()
        breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(offsets) != 1)) + 1
        flat = out.reshape(n, size * size)
        for first, stop in zip(np.r_[0, breaks], np.r_[breaks, n]):
            fd, data_start = self._open(int(shards[first]))
            start = data_start + int(offsets[first]) * size * size
            if not _pread_into(fd, memoryview(flat[first:stop]).cast("B"), start):
                raise ValueError(f"{self.path / shard_name(int(shards[first]))}: ends before image "
                                 f"{int(offsets[stop - 1])} (truncated?). Rebuild it: dvc repro crop")
        return out

    def _open(self, number: int) -> tuple[int, int]:
        """(file descriptor, byte offset of the pixel data) of one shard, checked against the store's size."""
        if number not in self._files:
            path = self.path / shard_name(number)
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                data_start = f.tell()
            if dtype != np.uint8 or fortran or len(shape) != 3 or shape[1:] != (self.size, self.size):
                raise ValueError(f"{path}: expected uint8 (n, {self.size}, {self.size}) in C order, found "
                                 f"{dtype} {shape}{' (Fortran order)' if fortran else ''}. Rebuild it: dvc repro crop")
            self._files[number] = (os.open(path, os.O_RDONLY), data_start)
        return self._files[number]

    def close(self) -> None:
        files = getattr(self, "_files", {})  # also from __del__ of a store whose __init__ raised
        for fd, _ in files.values():
            os.close(fd)
        files.clear()
        getattr(self, "_shards", {}).clear()

    def __del__(self):
        self.close()


def _pread_into(fd: int, buffer: memoryview, position: int) -> bool:
    """Fills ``buffer`` from ``position``; False if the file ends first."""
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], position + done)
        if got == 0:
            return False
        done += got
    return True
