"""Leave one source out: does a head still work on a collection it never saw?

For each source present in test, the head is fitted again without any of that source's slices (train and val:
model selection never sees it either) and scores that source's test slices. Beside it, the pipeline's own model
(trained on every source) on the same slices: in-source. The gap between the two is what a new hospital costs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from covidct import heads
from covidct.metrics import SOURCE_METRICS, bootstrap


def leave_one_source_out(head: str, head_params: dict, class_weights, positive: int, data: dict,
                         trained, n_resamples: int = 1000, seed: int = 0, log=print) -> dict:
    """{source: {slices, patients, per_class, in_source: metrics, held_out: metrics | skipped: why}}.

    ``data``: split -> (rows with source, label (class index), patient; float32 features). ``trained``: the fitted
    head on every source (``heads.load_head``), for the in-source numbers.
    """
    (train, x_train), (val, x_val), (test, x_test) = data["train"], data["val"], data["test"]
    out = {}
    for source in sorted(test["source"].unique()):
        rows = (test["source"] == source).to_numpy()
        part, x_part = test[rows], x_test[rows]
        y = (part["label"] == positive).astype(int).to_numpy()
        entry = {"slices": int(rows.sum()), "patients": int(part["patient"].nunique()),
                 "per_class": {"COVID-19": int(y.sum()), "not COVID-19": int(len(y) - y.sum())},
                 "in_source": _scores(y, trained.predict_proba(x_part)[:, positive], part, n_resamples, seed)}
        keep_train, keep_val = (train["source"] != source).to_numpy(), (val["source"] != source).to_numpy()
        left = np.unique(train["label"].to_numpy()[keep_train])
        if len(left) < 2 or not keep_val.any():
            why = (f"without {source}, train has one class ({left.tolist()})" if len(left) < 2
                   else f"without {source}, val is empty")
            entry["skipped"] = why
            log(f"loso: {source}: skipped: {why}")
        else:
            fitted = heads.create_head(head, head_params, class_weights)
            fitted.fit(x_train[keep_train], train["label"].to_numpy()[keep_train], x_val[keep_val],
                       val["label"].to_numpy()[keep_val], positive=positive)
            entry["held_out"] = _scores(y, fitted.predict_proba(x_part)[:, positive], part, n_resamples, seed)
            log(f"loso: {source}: {entry['slices']} test slices, accuracy in-source "
                f"{entry['in_source']['accuracy']['value']:.3f}, held out {entry['held_out']['accuracy']['value']:.3f}")
        out[str(source)] = entry
    return out


def _scores(y, p, rows: pd.DataFrame, n_resamples: int, seed: int) -> dict:
    return bootstrap(y, p, rows["patient"], 0.5, n_resamples, seed, which=SOURCE_METRICS)
