"""Extraction spread over processes with torchrun: one rank per GPU, each a contiguous share of every split.

Ranks write ``<tmp>/.rank-<r>/<split>.parquet``; rank 0 owns the atomic output folder, waits for all ranks,
then merges the shares in rank order, so the files hold the same rows in the same order as one process.
Only control messages go between ranks (gloo), so the same code runs on CPUs, GPUs and in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from covidct import features
from covidct.atomic import atomic_dir


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def from_env() -> Ranks:
    """What torchrun set for this process (a single process: rank 0 of 1)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                 int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))


def relaunch(processes: int, module: str, *args: str) -> int:
    """Runs ``python -m module args`` under torchrun with ``processes`` ranks on this machine; its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", module, *args]
    print("running:", " ".join(command[1:]), flush=True)
    return subprocess.run(command).returncode


def rank_device(device: str, ranks: Ranks) -> str:
    """Each rank its own GPU: ``auto``/``cuda`` become ``cuda:<local rank>`` when CUDA is there."""
    import torch

    if ranks.world_size > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
    return device


def extract(store_dir: str, out: str, ranks: Ranks, **kwargs) -> dict:
    """``features.extract`` into ``out`` (replaced atomically), by all ranks together; returns this rank's stats."""
    import torch.distributed as dist

    kwargs["num_threads"] = kwargs.get("num_threads") or max(1, (os.cpu_count() or 1) // ranks.local_world_size)
    kwargs["device"] = rank_device(kwargs.get("device", "auto"), ranks)
    if ranks.world_size == 1:
        with atomic_dir(out) as tmp:
            return features.extract(store_dir, tmp, **kwargs)
    dist.init_process_group("gloo")
    try:
        if ranks.rank == 0:
            with atomic_dir(out) as tmp:
                dist.broadcast_object_list([str(tmp)], src=0)
                stats = _extract_share(store_dir, tmp, ranks, kwargs)
                dist.barrier()  # every share written
                parts = [tmp / f".rank-{r}" for r in range(ranks.world_size)]
                features.merge_parts(parts, tmp, kwargs.get("row_group_size", 8192))
                for part in parts:
                    shutil.rmtree(part)
            return stats
        shared = [None]
        dist.broadcast_object_list(shared, src=0)
        stats = _extract_share(store_dir, Path(shared[0]), ranks, kwargs)
        dist.barrier()
        return stats
    finally:
        dist.destroy_process_group()


def _extract_share(store_dir: str, tmp: Path, ranks: Ranks, kwargs: dict) -> dict:
    part = tmp / f".rank-{ranks.rank}"
    part.mkdir()
    return features.extract(store_dir, part, rank=ranks.rank, world_size=ranks.world_size, **kwargs)
