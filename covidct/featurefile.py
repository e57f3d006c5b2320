"""Feature files: one Parquet file per split with ``fname``, ``patient``, ``source``, ``label`` and ``features`` (a
fixed-size float32 list); the schema metadata records the backbone, its weights and input size, the labels and versions.

Written by the extract stage (``features``), read by the heads' train and evaluate stages, which therefore never
import the extraction engine or torch's model code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from covidct.errors import DataError

BACKBONE_CONFIG = "backbone.json"


def schema_for(dim: int, metadata: dict) -> pa.Schema:
    return pa.schema(
        [
            ("fname", pa.string()),
            ("patient", pa.string()),
            ("source", pa.string()),
            ("label", pa.int64()),
            ("features", pa.list_(pa.float32(), dim)),
        ],
        metadata={k: json.dumps(v) if not isinstance(v, str) else v for k, v in metadata.items()},
    )


def _metadata(schema: pa.Schema) -> dict:
    return {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}


def _damaged(path: str | os.PathLike, exc: Exception) -> DataError:
    """A features file that is there but cannot be read (truncated or rewritten in place): which, and what to run."""
    path = Path(path)
    return DataError(f"{path}: not a readable features file ({type(exc).__name__}: {exc}). Restore it with "
                     f"`dvc checkout {path.parent}`, or rebuild it with `dvc repro -f extract@{path.parent.name}`.")


def read_metadata(path: str | os.PathLike) -> dict:
    """One split file's schema metadata (backbone, label names, ...), without reading its rows."""
    try:
        return _metadata(pq.read_schema(path))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None


def label_names(metadata: dict) -> list[str]:
    """The class names, in label order, from a features file's schema metadata."""
    return json.loads(metadata["label_names"])


def read_features(path: str | os.PathLike):
    """(DataFrame without features, float32 array (n, dim), schema metadata dict) from one split file; a damaged
    file (truncated in place, not Parquet, no fixed-size ``features`` column) is a ``DataError`` saying what to run."""
    try:
        table = pq.read_table(path)
        dim = table.schema.field("features").type.list_size
        flat = table.column("features").combine_chunks().values.to_numpy(zero_copy_only=False)
        return (table.drop(["features"]).to_pandas(), flat.reshape(-1, dim).astype(np.float32, copy=False),
                _metadata(table.schema))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, ValueError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None


def save_backbone_config(model_dir: str | os.PathLike, metadata: dict) -> None:
    """``model_dir/backbone.json``: what ``models.load_model`` needs to rebuild a head's backbone, exactly as
    the extract stage built it (taken from the features' schema metadata)."""
    keys = ("backbone", "weights", "image_size", "seed", "label_names")
    config = {k: json.loads(metadata[k]) if k in ("image_size", "seed", "label_names") else metadata[k] for k in keys}
    (Path(model_dir) / BACKBONE_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
