"""Data-parallel training over several processes (torchrun): one process per GPU, or gloo on CPU.

A training stage run as ``python -m stages.<name>`` with ``processes: N > 1`` in its params block
re-runs itself under ``torch.distributed.run`` (torchrun) with N local workers; a stage started by
torchrun directly (``WORLD_SIZE`` set, e.g. multi-node on SLURM) uses that launcher's world instead.
Every global batch is drawn in the same order on every rank and split between the ranks
(``batch_size`` stays the global batch size); gradients are averaged; only rank 0 writes outputs,
checkpoints and the MLflow run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.device import pick_device, set_threads


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: np.ndarray | torch.Tensor) -> Any:
        """This rank's share of a global batch (every ``size``-th item, starting at ``rank``)."""
        return idx[self.rank :: self.size]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. building a shared cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (so all ranks take the same branch)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (picklable objects)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Per-key mean over the ranks (every rank must pass the same keys)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.size for k, v in zip(keys, t.tolist())}

    def average_gradients(self, module: nn.Module) -> None:
        """Replace each parameter's gradient by its mean over the ranks (one flat all-reduce)."""
        if not self.distributed:
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_from_main(self, module: nn.Module, buffers_only: bool = False) -> None:
        """Copy rank 0's buffers (e.g. BatchNorm running statistics), and parameters unless
        ``buffers_only``, to every rank."""
        if not self.distributed:
            return
        tensors = [*module.buffers()] if buffers_only else [*module.parameters(), *module.buffers()]
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def check_in_sync(self, module: nn.Module, what: str) -> None:
        """Raise when the ranks' parameters differ (data-parallel training must keep them identical)."""
        if not self.distributed:
            return
        with torch.no_grad():
            checksum = float(sum(p.detach().double().sum().item() for p in module.parameters()))
        sums = self.gather(checksum)
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(
                f"{what}: the {self.size} data-parallel ranks ended with different weights "
                f"(parameter sums {sums}); this is a bug, please report it"
            )


def world_from_env() -> World:
    """The world torchrun describes in the environment (a single process when WORLD_SIZE is unset)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return World(
        rank=int(os.environ.get("RANK", "0")),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))),
    )


def local_processes(processes: int) -> int:
    """``processes`` as asked, or for 0 one per visible GPU (1 without a GPU)."""
    if processes < 0:
        raise ValueError(f"processes: got {processes}; allowed: 0 (one per GPU) or a positive count")
    return processes or max(1, torch.cuda.device_count())


def relaunch_under_torchrun(module: str, processes: int) -> int | None:
    """Run ``python -m module`` as ``processes`` torchrun workers on this machine and return its exit code.

    None (nothing launched) when one process is asked for or when already inside a torchrun job.
    """
    n = local_processes(processes)
    if n <= 1 or "WORLD_SIZE" in os.environ:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", "-m", module]
    print(f"{module}: {n} data-parallel processes: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=False).returncode


@contextmanager
def training_world(device_pref: str, threads: int) -> Iterator[tuple[World, torch.device, int]]:
    """(world, device, CPU threads) for one training stage; joins the process group when distributed.

    NCCL with one GPU per local rank when the device is CUDA, gloo on CPU. ``threads`` 0 shares the
    available cores between the local workers.
    """
    world = world_from_env()
    device = pick_device(device_pref)
    n_threads = set_threads(threads, world.local_size)
    if not world.distributed:
        yield world, device, n_threads
        return
    if device.type == "cuda":
        if torch.cuda.device_count() < world.local_size:
            raise RuntimeError(
                f"{world.local_size} workers on this node but only {torch.cuda.device_count()} "
                "CUDA devices: use at most one process per GPU (or device: cpu)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield world, device, n_threads
    finally:
        dist.destroy_process_group()


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))
