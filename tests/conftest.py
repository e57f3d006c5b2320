import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory):
    """A few phantom patients in the Kaggle layout, at 128 px to stay fast."""
    from covidct import rawdata

    out = tmp_path_factory.mktemp("raw")
    rawdata.prepare(
        {"source": "sample", "variant": "3A"},
        {"seed": 1, "image_size": 128, "patients": {"train": 6, "val": 4, "test": 4},
         "class_fractions": {"normal": 0.5, "pneumonia": 0.0, "covid": 0.5}, "slices_per_patient": [3, 4]},
        out,
        progress=False,
    )
    return out
