"""Data parallelism on ``torch.distributed``: which rank this process is, its device, barriers.

Launched with ``torchrun --nproc-per-node N [--nnodes M ...]`` (or ``accelerate launch``, which
sets the same environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``), each
process joins the default process group: ``nccl`` on ``cuda:LOCAL_RANK`` when CUDA exists,
``gloo`` on the CPU otherwise. A process group the caller already initialised is used as it is.
Without that environment the run is a single process (rank 0 of 1) and nothing is initialised.

Ranks share no tensors: each scores its own batches and writes its own shards; the file system
is the merge. The only collectives are barriers and one sum of per-rank counts for the summary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    initialised_here: bool  # this module created the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under torchrun / accelerate launch with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA exists, else the CPU.

    Example:
        >>> from jscopes_tl.runs.distributed import rank_device
        >>> rank_device() if torch.cuda.is_available() else rank_device().type
        'cpu'
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def setup() -> RankInfo:
    """Join (or reuse) the default process group when launched distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return RankInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), False)
    if not launched_distributed():
        return RankInfo(0, 1, 0, False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed.")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank_device())
    dist.init_process_group(backend=backend)
    return RankInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)


def barrier(info: RankInfo) -> None:
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_ranks_ok(info: RankInfo, ok: bool) -> bool:
    """Whether every rank reports ``ok`` (a refusal on one rank stops all, none hangs in a barrier)."""
    if not info.distributed:
        return ok
    return sum_over_ranks(info, [0.0 if ok else 1.0])[0] == 0


def sum_over_ranks(info: RankInfo, values: list[float]) -> list[float]:
    if not info.distributed:
        return list(values)
    import torch.distributed as dist

    device = rank_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def max_over_ranks(info: RankInfo, value: float) -> float:
    if not info.distributed:
        return value
    import torch.distributed as dist

    device = rank_device() if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def teardown(info: RankInfo) -> None:
    if info.initialised_here:
        import torch.distributed as dist

        dist.destroy_process_group()


def model_devices(model: Any) -> set[torch.device]:
    """Every device holding a parameter of ``model``."""
    return {parameter.device for parameter in model.parameters()}
