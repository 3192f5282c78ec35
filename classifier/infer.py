"""Batched inference of the classifier: logits of uint8 images, and validation split between ranks.

Used by training (validation each epoch), ``evaluate`` and ``predict``; it imports no training code,
so the evaluation stages do not depend on the training loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from classifier.data import batch_indices, gather, normalise, to_unit
from core.distributed import World


def prepare_input(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> torch.Tensor:
    x = normalise(x, mean, std)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    desc: str = "infer",
    amp: bool = True,
    rows: np.ndarray | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Logits for every (3, S, S) uint8 image (or only ``rows``, in their order); ``transform`` maps a
    uint8 CPU batch to float [0, 1]."""
    model.eval()
    rows = np.arange(len(images)) if rows is None else rows
    out = np.empty(len(rows), dtype=np.float32)
    use_amp = amp and device.type == "cuda"
    for pos in tqdm(
        list(batch_indices(len(rows), batch_size)),
        desc=desc,
        unit="batch",
        leave=False,
        mininterval=1.0,
        disable=not progress,
    ):
        batch = gather(images, rows[pos])
        x = transform(batch).to(device) if transform is not None else to_unit(batch.to(device))
        with torch.autocast(device.type, enabled=use_amp):
            logits = model(prepare_input(x, mean, std, device))
        out[pos] = logits.float().cpu().numpy()
    return out


def validation_logits(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    amp: bool,
    world: World,
    progress: bool,
) -> np.ndarray:
    """Logits for every validation image, each rank inferring its share; the same array on every rank."""
    world.broadcast_from_main(model, buffers_only=True)  # rank 0's BatchNorm statistics on every rank
    rows = world.shard(np.arange(len(images)))
    part = infer_logits(
        model, images, batch_size, device, mean, std, desc="validate", amp=amp, rows=rows, progress=progress
    )
    out = np.empty(len(images), dtype=np.float32)
    for r, logits in world.gather((rows, part)):
        out[r] = logits
    return out
