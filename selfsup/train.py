"""SimCLR: two random views of each face, an encoder + projection head, the NT-Xent loss.

SimCLR needs one network and one forward pass per view: no momentum copy (MoCo, BYOL, DINO), no queue, no
teacher. On a CPU and a few thousand crops that is the cheapest method per image, and with batches of
128 each view still has 254 negatives. The loss is torch's cross-entropy over the scaled cosine
similarities (a few lines; see ``nt_xent``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.params import PretrainParams
from selfsup.augment import ViewMaker


class SimCLR(nn.Module):
    """backbone -> pooled features -> projection MLP (the head SimCLR's loss sees; dropped after training)."""

    def __init__(self, backbone: nn.Module, n_features: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(n_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy: each view must pick its partner among the other 2B - 1 views."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


@dataclass(frozen=True)
class PretrainEpoch:
    epoch: int
    loss: float
    knn_val_roc_auc: float
    lr: float
    images_per_s: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class PretrainResult:
    history: list[PretrainEpoch]
    stop_reason: str  # completed | time_budget
    seconds: float


def pretrain_loop(
    model: SimCLR,
    images: np.ndarray,
    p: PretrainParams,
    views: ViewMaker,
    device: torch.device,
    probe: Callable[[nn.Module], float],
    on_epoch: Callable[[PretrainEpoch], None] | None = None,
    progress: bool = True,
) -> PretrainResult:
    """Train ``model`` on the uint8 crops ``images`` (no labels) for ``p.epochs`` or ``p.max_minutes``;
    after each epoch ``probe(backbone)`` scores the frozen features."""
    batch = min(p.batch_size, len(images))
    if batch < 4:
        raise ValueError(f"pretraining needs at least 4 images; got {len(images)}")
    steps = len(images) // batch  # the short last batch is dropped: BatchNorm and the negatives want full ones
    use_amp = p.amp and device.type == "cuda"
    memory = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device).to(memory_format=memory)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps * p.epochs))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    order = torch.Generator().manual_seed(p.seed)
    started = time.monotonic()
    deadline = started + p.max_minutes * 60 if p.max_minutes > 0 else math.inf
    history: list[PretrainEpoch] = []
    stop_reason = "completed"
    for epoch in range(1, p.epochs + 1):
        t0, loss_sum, seen = time.monotonic(), 0.0, 0
        model.train()
        perm = torch.randperm(len(images), generator=order).numpy()
        for s in tqdm(range(steps), desc=f"pretrain {epoch}/{p.epochs}", leave=False, disable=not progress):
            idx = np.sort(perm[s * batch : (s + 1) * batch])
            v1, v2 = (v.to(device, memory_format=memory) for v in views.pair(torch.from_numpy(images[idx])))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = nt_xent(model(v1), model(v2), p.temperature)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            if time.monotonic() > deadline:
                break
        if not math.isfinite(loss_sum):
            raise FloatingPointError(f"pretraining diverged at epoch {epoch}; lower pretrain.lr (now {p.lr})")
        train_seconds = time.monotonic() - t0
        record = PretrainEpoch(
            epoch=epoch,
            loss=loss_sum / max(seen, 1),
            knn_val_roc_auc=probe(model.backbone),
            lr=float(opt.param_groups[0]["lr"]),
            images_per_s=seen / max(train_seconds, 1e-9),
            seconds=time.monotonic() - t0,
        )
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if time.monotonic() > deadline:
            stop_reason = "time_budget"
            break
    return PretrainResult(history, stop_reason, time.monotonic() - started)
