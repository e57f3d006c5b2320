"""Does choosing the heads' regularisation on val pay off on test? Measured on extracted features.

    python -m bench.head_grid                          # data/features/<backbone>/{train,val,test}.parquet
    python -m bench.head_grid /path/to/data/features --backbones vgg16,resnet18

For each backbone folder and each head, fits the head twice on the training features: with the settings committed
before grids (``OLD``: logreg C 1.0; mlp 256 units, dropout 0.5) and with ``params.yaml``'s heads (the grids, chosen
on val log loss inside ``fit``); every other setting is params.yaml's. Then scores both on test as the evaluate
stage's ``test`` block does (slices, threshold 0.5): accuracy, ROC AUC and log loss with 95 % intervals over 1,000
patient resamples (``covidct.metrics.bootstrap``, seed 0), and the grid-minus-old difference with its interval over
the same resamples (paired: both models scored on each resampled set of patients). Test data are read here only to
report; nothing is chosen on them. Results go to bench/results/head-grid.json and a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from covidct import featurefile, heads, metrics, params
from covidct.atomic import atomic_write_json

OLD = {"logreg": {"C": 1.0}, "mlp": {"hidden": 256, "dropout": 0.5}}  # heads: before grids (commit 0c64db5)
WHICH = ("accuracy", "roc_auc", "log_loss")


def paired_difference(y, p_old, p_new, groups, n_resamples=1000, seed=0, level=0.95, chunk=100) -> dict:
    """{metric: {value, ci_low, ci_high}} of new minus old, over the patient resamples ``metrics.bootstrap`` draws
    with the same seed (the same draws, in the same order, so each model's own interval comes from these sets)."""
    y = np.asarray(y)
    point_old, point_new = (metrics.all_metrics(y, p, which=WHICH) for p in (p_old, p_new))
    codes, uniques = pd.factorize(np.asarray(groups))
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in WHICH}
    for start in range(0, n_resamples, chunk):
        n = min(chunk, n_resamples - start)
        drawn = rng.integers(0, len(uniques), (n, len(uniques)))
        counts = np.zeros((n, len(uniques)))
        np.add.at(counts, (np.arange(n)[:, None], drawn), 1.0)
        old, new = (metrics.resampled_metrics(y, p, counts[:, codes]) for p in (p_old, p_new))
        for k in WHICH:
            draws[k].append(new[k] - old[k])
    alpha = (1 - level) / 2
    out = {}
    for k in WHICH:
        values = np.concatenate(draws[k])
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, [alpha, 1 - alpha])
        out[k] = {"value": round(float(point_new[k] - point_old[k]), 6), "ci_low": round(float(low), 6),
                  "ci_high": round(float(high), 6)}
    return out


def fit_and_score(name: str, settings: dict, splits: dict, weights, positive: int, n_resamples: int, seed: int):
    (train, x_train), (val, x_val), (test, x_test) = (splits[s] for s in ("train", "val", "test"))
    head = heads.create_head(name, settings, weights)
    start = time.perf_counter()
    result = head.fit(x_train, train["label"].to_numpy(), x_val, val["label"].to_numpy(), positive)
    seconds = time.perf_counter() - start
    proba_val = head.predict_proba(x_val)
    y_test = (test["label"].to_numpy() == positive).astype(int)
    p_test = head.predict_proba(x_test)[:, positive]
    row = {"params": {k: head.fitted_params()[k] for k in heads.HEADS[name].GRID}, "fit_s": round(seconds, 2),
           "best_epoch": result["best_epoch"],
           "val_log_loss": round(heads.val_log_loss(proba_val, val["label"].to_numpy(), weights), 6),
           "val_accuracy": round(float((proba_val.argmax(1) == val["label"].to_numpy()).mean()), 6),
           "test": metrics.bootstrap(y_test, p_test, test["patient"], n_resamples=n_resamples, seed=seed, which=WHICH)}
    if "grid" in result:
        row["candidates"] = result["grid"]["candidates"]
    return row, y_test, p_test


def backbone_dirs(root: Path, names: list[str] | None, order: list[str]) -> list[Path]:
    found = [d for d in root.iterdir() if all((d / f"{s}.parquet").is_file() for s in ("train", "val", "test"))]
    if names:
        found = [d for d in found if d.name in names]
    rank = {name: i for i, name in enumerate(order)}  # params.yaml's order, then any other folder by name
    return sorted(found, key=lambda d: (rank.get(d.name, len(rank)), d.name))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", nargs="?", default="data/features", help="folder of <backbone>/ feature folders")
    parser.add_argument("--backbones", help="comma-separated subset (default: every folder with the three splits)")
    parser.add_argument("--params", default="params.yaml", help="its heads: section gives the grids")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/head-grid.json")
    args = parser.parse_args(argv)

    p = params.load(args.params, heads=heads.check_params)
    grid_settings = {name: p["heads"][name] for name in OLD}
    old_settings = {name: {**grid_settings[name], **OLD[name]} for name in OLD}
    report = {"features": str(args.features), "old": OLD, "grid": {n: heads.searched(n, s) for n, s in grid_settings.items()},
              "criterion": "val_log_loss", "test_threshold": 0.5, "resamples": args.resamples, "seed": args.seed,
              "level": 0.95, "rows": []}
    names = args.backbones.split(",") if args.backbones else None
    for folder in backbone_dirs(Path(args.features), names, list(p.get("backbones") or [])):
        splits, meta = {}, None
        md5 = {split: hashlib.md5((folder / f"{split}.parquet").read_bytes()).hexdigest()  # which features these were
               for split in ("train", "val", "test")}
        for split in ("train", "val", "test"):
            rows, x, meta_split = featurefile.read_features(folder / f"{split}.parquet")
            splits[split] = (rows, x)
            meta = meta or meta_split
        label_names = json.loads(meta["label_names"])
        positive = label_names.index("COVID-19")
        weights = json.loads(meta["class_weights"]) if meta["balance"] == "weighted" else None
        for name in OLD:
            old, y_test, p_old = fit_and_score(name, old_settings[name], splits, weights, positive, args.resamples,
                                               args.seed)
            new, _, p_new = fit_and_score(name, grid_settings[name], splits, weights, positive, args.resamples,
                                          args.seed)
            row = {"backbone": folder.name, "head": name, "features_md5": md5, "old": old, "grid": new,
                   "difference": paired_difference(y_test, p_old, p_new, splits["test"][0]["patient"],
                                                   args.resamples, args.seed)}
            report["rows"].append(row)
            print(f"{folder.name}-{name}: old {old['params']} test accuracy {old['test']['accuracy']['value']:.3f}, "
                  f"grid {new['params']} {new['test']['accuracy']['value']:.3f} ({old['fit_s']:.1f} s, "
                  f"{new['fit_s']:.1f} s)", flush=True)
    atomic_write_json(args.out, report)
    print_table(report)
    return report


def _ci(m: dict, signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(m['value'])} [{fmt.format(m['ci_low'])}, {fmt.format(m['ci_high'])}]"


def print_table(report: dict) -> None:
    print("| features | head | chosen on val | test accuracy: old | grid | grid - old | "
          "test ROC AUC: old | grid | grid - old |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["rows"]:
        chosen = ", ".join(f"{k} {v:g}" for k, v in r["grid"]["params"].items())
        cells = [_ci(r[arm]["test"][m]) if arm != "difference" else _ci(r["difference"][m], signed=True)
                 for m in ("accuracy", "roc_auc") for arm in ("old", "grid", "difference")]
        print(f"| {r['backbone']} | {r['head']} | {chosen} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
