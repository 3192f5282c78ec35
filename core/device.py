"""Torch device and thread choices shared by the stages (CPU by default, CUDA when present)."""

from __future__ import annotations

import os

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def pick_device(pref: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without a GPU is an error, not a fallback."""
    if pref not in DEVICE_CHOICES:
        raise ValueError(f"device: got {pref!r}; allowed values: {', '.join(map(repr, DEVICE_CHOICES))}")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device: 'cuda' was asked for but torch sees no CUDA device "
            f"(torch {torch.__version__}); use 'auto' or 'cpu'"
        )
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def available_cores() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(threads: int, workers: int = 1) -> int:
    """Set torch's intra-op threads: ``threads`` > 0 as given, 0 → the available cores shared by ``workers``
    processes on this machine. Returns the count."""
    if threads < 0:
        raise ValueError(f"threads: got {threads}; allowed: 0 (all available cores) or a positive count")
    n = threads or max(1, available_cores() // max(1, workers))
    torch.set_num_threads(n)
    return n
