"""params.yaml: loaded and checked once, before a stage does any work."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from covidct.backbones import REGISTRY, WEIGHTS
from covidct.crop import BALANCES, CLASS_MAPS
from covidct.explain import CAM_METHODS
from covidct.features import PRECISIONS
from covidct.finetune import INITS
from covidct.heads import HEADS

SOURCES = ("sample", "local", "kaggle")


class ParamsError(ValueError):
    """A parameter is missing or invalid; the message lists the valid choices."""


def load(path: str | os.PathLike = "params.yaml") -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run stages from the repository root (dvc repro does).") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    problems = validate(params)
    if problems:
        raise ParamsError(f"{path}: " + "; ".join(problems))
    return params


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate(params: dict) -> list[str]:
    """Every problem found, each naming the key and what it accepts."""
    problems = []

    def check(ok: bool, message: str):
        if not ok:
            problems.append(message)

    data, crop, extract = params.get("data", {}), params.get("crop", {}), params.get("extract", {})
    check(data.get("source") in SOURCES, f"data.source={data.get('source')!r}: choose one of {list(SOURCES)}")
    check(crop.get("classes") in CLASS_MAPS, f"crop.classes={crop.get('classes')!r}: choose one of {sorted(CLASS_MAPS)}")
    check(crop.get("balance") in BALANCES, f"crop.balance={crop.get('balance')!r}: choose one of {list(BALANCES)}")
    for key in ("image_size", "shard_size"):
        check(_positive_int(crop.get(key)), f"crop.{key}={crop.get(key)!r}: must be a positive integer")
    fraction = crop.get("max_skipped_fraction")
    check(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 1,
          f"crop.max_skipped_fraction={fraction!r}: must be in [0, 1]")
    margin = crop.get("margin", 0)
    check(isinstance(margin, (int, float)) and 0 <= margin <= 1, f"crop.margin={margin!r}: must be in [0, 1]")
    check(_positive_int(extract.get("batch_size")), f"extract.batch_size={extract.get('batch_size')!r}: must be a positive integer")
    check(_positive_int(extract.get("processes", 1)),
          f"extract.processes={extract.get('processes')!r}: a positive integer (1 = no torchrun)")
    check(extract.get("precision", "auto") in PRECISIONS,
          f"extract.precision={extract.get('precision')!r}: choose one of {list(PRECISIONS)}")
    check(isinstance(extract.get("compile", False), bool), f"extract.compile={extract.get('compile')!r}: true or false")

    backbones = params.get("backbones", {})
    check(isinstance(backbones, dict) and backbones, "backbones: list at least one backbone")
    for name, cfg in (backbones or {}).items():
        if name not in REGISTRY:
            problems.append(f"backbones.{name}: unknown backbone; choose from {sorted(REGISTRY)}")
            continue
        spec = REGISTRY[name]
        check(cfg.get("weights") in WEIGHTS, f"backbones.{name}.weights={cfg.get('weights')!r}: choose one of {list(WEIGHTS)}")
        size = cfg.get("image_size")
        check(
            _positive_int(size) and size >= spec.min_size and size % spec.size_multiple == 0,
            f"backbones.{name}.image_size={size!r}: a positive integer >= {spec.min_size}"
            + (f", a multiple of {spec.size_multiple}" if spec.size_multiple > 1 else "")
            + f" (native: {spec.native_size})",
        )

    heads = params.get("heads", {})
    check(isinstance(heads, dict) and heads, "heads: list at least one head")
    for name in heads or {}:
        check(name in HEADS, f"heads.{name}: unknown head; choose from {sorted(HEADS)}")
    mlp = (heads or {}).get("mlp")
    if mlp:
        for key in ("hidden", "epochs", "batch_size", "step_epochs"):
            check(_positive_int(mlp.get(key)), f"heads.mlp.{key}={mlp.get(key)!r}: must be a positive integer")
        check(0 < mlp.get("base_lr", 0) <= mlp.get("max_lr", 0),
              f"heads.mlp: need 0 < base_lr <= max_lr, got {mlp.get('base_lr')!r}, {mlp.get('max_lr')!r}")
        check(0 <= mlp.get("dropout", -1) < 1, f"heads.mlp.dropout={mlp.get('dropout')!r}: must be in [0, 1)")
    problems += _validate_finetune(params.get("finetune"))
    explain = params.get("explain", {})
    methods = explain.get("methods")
    check(isinstance(methods, list) and methods and set(methods) <= set(CAM_METHODS),
          f"explain.methods={methods!r}: a non-empty list from {list(CAM_METHODS)}")
    check(_positive_int(explain.get("per_kind")), f"explain.per_kind={explain.get('per_kind')!r}: must be a positive integer")
    evaluate = params.get("evaluate", {})
    check(_positive_int(evaluate.get("bootstrap")), f"evaluate.bootstrap={evaluate.get('bootstrap')!r}: must be a positive integer")
    return problems


def _validate_finetune(finetune: dict | None) -> list[str]:
    if not isinstance(finetune, dict) or not isinstance(finetune.get("runs"), dict) or not finetune["runs"]:
        return ["finetune.runs: list at least one run, e.g. resnet18-scratch: {arch: resnet18, init: scratch, image_size: 96}"]
    problems = []
    train = finetune.get("train", {})
    for key in ("epochs", "batch_size", "warmup_epochs", "patience"):
        if not _positive_int(train.get(key)):
            problems.append(f"finetune.train.{key}={train.get(key)!r}: must be a positive integer")
    for name, run in finetune["runs"].items():
        arch, init, size = run.get("arch"), run.get("init"), run.get("image_size")
        if arch not in REGISTRY:
            problems.append(f"finetune.runs.{name}.arch={arch!r}: choose from {sorted(REGISTRY)}")
            continue
        if init not in INITS:
            problems.append(f"finetune.runs.{name}.init={init!r}: choose one of {list(INITS)}")
        if name != f"{arch}-{init}":
            problems.append(f"finetune.runs.{name}: name the run {arch}-{init} (<arch>-<init>), as outputs are")
        spec = REGISTRY[arch]
        if not (_positive_int(size) and size >= spec.min_size and size % spec.size_multiple == 0):
            problems.append(f"finetune.runs.{name}.image_size={size!r}: a positive integer >= {spec.min_size}"
                            + (f", a multiple of {spec.size_multiple}" if spec.size_multiple > 1 else ""))
        lr = run.get("lr", train.get("lr"))
        if not (isinstance(lr, (int, float)) and lr > 0):
            problems.append(f"finetune.runs.{name}: lr={lr!r} must be a positive number")
    return problems
