"""The classifier's training loop (no MLflow, no files: the stage does that).

AdamW with a per-batch cosine or one-cycle schedule, label smoothing, class weights when the
classes are imbalanced, an optional frozen-backbone warm-up, early stopping on validation ROC-AUC
(best weights kept), a wall-clock budget, AMP + channels_last on CUDA, and seeded randomness.

Data-parallel (``world.size`` > 1, see core.distributed): every rank draws the same global
batches and trains on its share under DistributedDataParallel; validation is split between the ranks
and gathered (classifier.infer), so every rank takes the same early-stopping and budget decisions.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from classifier.augment import AugmentConfig, Augmenter
from classifier.data import TrainViews, batch_indices, gather
from classifier.infer import prepare_input, validation_logits
from core.distributed import World, seed_for
from core.params import ClassifierParams
from models.classifier import DeepfakeClassifier

IMBALANCE_RATIO = 1.2  # class_weighting "auto": weights only when one class is more than this x the other
AUC_TOLERANCE = 1e-6   # equal validation ROC-AUC (e.g. both 1.0): the lower validation loss wins


@dataclass(frozen=True)
class LoopConfig:
    """The subset of ClassifierParams the loop needs (so tests and benchmarks can build one directly)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    class_weighting: str = "auto"
    early_stopping_patience: int = 0
    max_minutes: float = 0.0
    freeze_backbone_epochs: int = 0
    amp: bool = True
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig.none)

    @classmethod
    def from_params(cls, p: ClassifierParams) -> LoopConfig:
        return cls(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                   schedule=p.schedule, label_smoothing=p.label_smoothing, class_weighting=p.class_weighting,
                   early_stopping_patience=p.early_stopping_patience, max_minutes=p.max_minutes,
                   freeze_backbone_epochs=p.freeze_backbone_epochs if p.pretrained == "imagenet" else 0,
                   amp=p.amp, seed=p.seed, augment=AugmentConfig.from_params(p))


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    train_accuracy: float
    train_roc_auc: float
    val_loss: float
    val_accuracy: float
    val_roc_auc: float
    lr: float
    backbone_frozen: bool
    seconds: float
    train_images_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: DeepfakeClassifier
    history: list[EpochRecord]
    best_epoch: int
    best_val_roc_auc: float
    stop_reason: str               # completed | early_stopping | time_budget
    val_logits: np.ndarray         # of the best weights
    class_weights: tuple[float, float]
    seconds: float


def class_weights(labels: np.ndarray, mode: str) -> tuple[float, float]:
    """(real, fake) loss weights: inverse frequency ('balanced'), or only when imbalanced ('auto')."""
    n_fake = float(labels.sum())
    n_real = float(len(labels) - n_fake)
    if n_fake == 0 or n_real == 0:
        raise ValueError(f"training needs both classes; got {int(n_real)} real and {int(n_fake)} fake images")
    imbalanced = max(n_real, n_fake) / min(n_real, n_fake) > IMBALANCE_RATIO
    if mode == "none" or (mode == "auto" and not imbalanced):
        return 1.0, 1.0
    total = n_real + n_fake
    return total / (2 * n_real), total / (2 * n_fake)


def smoothed_bce(logits: torch.Tensor, y: torch.Tensor, weights: tuple[float, float], smoothing: float) -> torch.Tensor:
    target = y * (1.0 - smoothing) + 0.5 * smoothing
    per_item = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    w = torch.where(y > 0.5, weights[1], weights[0])
    return (per_item * w).sum() / w.sum()


def make_scheduler(opt: torch.optim.Optimizer, cfg: LoopConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    total_steps = max(1, total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=cfg.lr * 0.01)
    raise ValueError(f"classifier.schedule {cfg.schedule!r}; allowed: 'cosine', 'onecycle'")


def data_parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` itself in one process, else a DistributedDataParallel wrapper over its trainable
    parameters (rebuilt when they change, e.g. after the frozen-backbone epochs)."""
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def bce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits.astype(np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def safe_auc(y: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


def train_loop(model: DeepfakeClassifier, train_images: np.ndarray, train_labels: np.ndarray,
               val_images: np.ndarray, val_labels: np.ndarray, cfg: LoopConfig, device: torch.device,
               mean: tuple[float, ...], std: tuple[float, ...],
               on_epoch: Callable[[EpochRecord], None] | None = None, progress: bool = True,
               world: World = World(), views: TrainViews | None = None) -> TrainResult:
    """Train ``model`` and return it holding the weights of its best validation ROC-AUC epoch.

    ``cfg.batch_size`` is the global batch; with several ranks each trains on its share of it. With
    ``views``, each training row is shown as its crop or one of its views (drawn per batch).
    """
    if len(np.unique(val_labels)) < 2:
        raise ValueError("the validation split needs both real and fake images (early stopping on ROC-AUC, "
                         "temperature scaling and the threshold are fitted on it)")
    min_batch = 2 * world.size  # BatchNorm needs 2 images per process
    if cfg.batch_size < min_batch:
        raise ValueError(f"classifier.batch_size={cfg.batch_size} is the global batch, split over {world.size} "
                         f"processes; it must be at least {min_batch} (2 images per process)")
    started = time.monotonic()
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes > 0 else math.inf
    order = torch.Generator().manual_seed(cfg.seed)  # the same batch order on every rank
    augment = Augmenter(cfg.augment, torch.Generator().manual_seed(seed_for(cfg.seed, world.rank)), device)
    view_picks = torch.Generator().manual_seed(seed_for(cfg.seed, world.rank, 1))
    weights = class_weights(train_labels, cfg.class_weighting)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        if world.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(list(batch_indices(len(train_labels), cfg.batch_size, min_size=min_batch)))
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_labels)} training images are too few for {world.size} processes "
                         f"(at least {min_batch} are needed)")
    sched = make_scheduler(opt, cfg, steps_per_epoch * cfg.epochs)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    labels_t = torch.from_numpy(train_labels.astype(np.float32))

    history: list[EpochRecord] = []
    best_auc, best_loss, best_epoch, best_state, best_val_logits = -math.inf, math.inf, 0, None, None
    stale, stop_reason = 0, "completed"
    progress = progress and world.is_main
    net: nn.Module | None = None
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.monotonic()
        frozen = epoch <= cfg.freeze_backbone_epochs
        if net is None or frozen != model.backbone_frozen:
            model.freeze_backbone(frozen)
            net = data_parallel(model, world, device)
        model.train()
        losses, seen, tr_logits, tr_targets = 0.0, 0, [], []
        bar = tqdm(list(batch_indices(len(train_labels), cfg.batch_size, order, min_size=min_batch)),
                   desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not progress,
                   mininterval=1.0)
        out_of_time = False
        for batch in bar:
            idx = world.shard(batch)
            x = augment(views.gather(train_images, idx, view_picks) if views else gather(train_images, idx))
            y = labels_t[idx].to(device)
            with torch.autocast(device.type, enabled=use_amp):
                logits = net(prepare_input(x, mean, std, device))
            loss = smoothed_bce(logits, y, weights, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses += float(loss.detach()) * len(idx)
            seen += len(idx)
            tr_logits.append(logits.detach().float().cpu().numpy())
            tr_targets.append(y.cpu().numpy())
            bar.set_postfix(loss=f"{losses / seen:.4f}")
            if math.isfinite(budget_s) and world.any(time.monotonic() - started > budget_s):
                out_of_time = True
                break
        train_s = time.monotonic() - t0
        parts = world.gather((np.concatenate(tr_logits), np.concatenate(tr_targets), losses, seen))
        tl, ty = np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
        losses, seen = sum(q[2] for q in parts), sum(q[3] for q in parts)
        val_logits = validation_logits(model, val_images, cfg.batch_size * 2, device, mean, std, cfg.amp, world,
                                       progress)
        if not (np.isfinite(val_logits).all() and math.isfinite(losses)):
            raise FloatingPointError(f"training diverged at epoch {epoch} (non-finite loss or logits); "
                                     f"lower classifier.lr (now {cfg.lr})")
        val_auc = safe_auc(val_labels, val_logits)
        record = EpochRecord(
            epoch=epoch, train_loss=losses / max(1, seen), train_accuracy=float(np.mean((tl > 0) == (ty > 0.5))),
            train_roc_auc=safe_auc(ty, tl), val_loss=bce(val_logits, val_labels),
            val_accuracy=float(np.mean((val_logits > 0) == (val_labels > 0.5))), val_roc_auc=val_auc,
            lr=float(opt.param_groups[0]["lr"]), backbone_frozen=model.backbone_frozen,
            seconds=time.monotonic() - t0, train_images_per_s=seen / max(train_s, 1e-9))
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if val_auc > best_auc + AUC_TOLERANCE or (val_auc >= best_auc - AUC_TOLERANCE
                                                  and record.val_loss < best_loss):
            best_auc, best_loss, best_epoch, stale = max(val_auc, best_auc), record.val_loss, epoch, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            best_val_logits = val_logits
        else:
            stale += 1
        if out_of_time or world.any(time.monotonic() - started > budget_s):
            stop_reason = "time_budget"
            break
        if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
            stop_reason = "early_stopping"
            break
    assert best_state is not None and best_val_logits is not None
    world.check_in_sync(model, "train_classifier")
    model.freeze_backbone(False)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, history, best_epoch, best_auc, stop_reason, best_val_logits, weights,
                       time.monotonic() - started)
