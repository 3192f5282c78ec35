"""The classifier's training loop (no MLflow, no files: the stage does that), configured by its params block.

Shaped like the generator's: ``train_epoch`` is one pass over the training batches, ``KeepBest`` keeps
the best epoch's weights and says when to stop early, and ``train_loop`` runs the epochs. AdamW with a
per-batch cosine or one-cycle schedule, label smoothing, class weights when the classes are imbalanced,
an optional frozen-backbone warm-up, early stopping on validation ROC-AUC (best weights kept), a
wall-clock budget, AMP + channels_last on CUDA, and seeded randomness.

Data-parallel (``world.size`` > 1, see core.distributed): every rank draws the same global
batches and trains on its share under DistributedDataParallel; validation is split between the ranks
and gathered (classifier.infer), so every rank takes the same early-stopping and budget decisions.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from classifier.augment import AugmentConfig, Augmenter
from classifier.data import TrainViews, gather
from classifier.infer import prepare_input, validation_logits
from core.distributed import World, seed_for
from core.params import ClassifierParams
from core.pixels import batch_indices
from models.classifier import DeepfakeClassifier

IMBALANCE_RATIO = 1.2  # class_weighting "auto": weights only when one class is more than this x the other
AUC_TOLERANCE = 1e-6  # equal validation ROC-AUC (e.g. both 1.0): the lower validation loss wins


def member_params(p: ClassifierParams, member: int) -> ClassifierParams:
    """Deep ensemble member ``member`` (0-based): its own seed (weights of the head aside, the batch order,
    augmentations and dropout differ) and an equal share of the time budget."""
    return replace(p, seed=p.seed + member, max_minutes=p.max_minutes / p.ensemble)


def frozen_epochs(p: ClassifierParams) -> int:
    """Epochs that train the head alone: all of them for a linear probe, else classifier.freeze_backbone_epochs for
    a pretrained (imagenet or ssl) backbone."""
    if p.linear_probe:
        return p.epochs
    return p.freeze_backbone_epochs if p.init != "none" else 0


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
    stop_reason: str  # completed | early_stopping | time_budget
    val_logits: np.ndarray  # of the best weights
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


def make_scheduler(
    opt: torch.optim.Optimizer, p: ClassifierParams, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total_steps = max(1, total_steps)
    if p.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p.lr, total_steps=total_steps, pct_start=0.25)
    if p.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=p.lr * 0.01)
    raise ValueError(f"classifier.schedule {p.schedule!r}; allowed: 'cosine', 'onecycle'")


def on_device(model: DeepfakeClassifier, device: torch.device, world: World) -> DeepfakeClassifier:
    """``model`` on ``device``: channels_last on CUDA, and synchronised BatchNorm across CUDA ranks."""
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        if world.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


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


@dataclass
class TrainBatches:
    """The training rows as this rank sees them: shuffled global batches (the same order on every rank), and
    each batch's share turned into augmented inputs and targets."""

    images: np.ndarray  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) float, 1 = fake
    views: TrainViews | None  # shown instead of a row's crop, drawn per batch
    batch_size: int  # global
    world: World
    augment: Augmenter
    order: torch.Generator  # the batch order: the same on every rank
    view_picks: torch.Generator
    device: torch.device
    mean: tuple[float, ...]  # the network's input normalisation
    std: tuple[float, ...]

    @property
    def min_size(self) -> int:
        return 2 * self.world.size  # BatchNorm needs 2 images per process

    def __len__(self) -> int:
        return len(list(batch_indices(len(self.labels), self.batch_size, min_size=self.min_size)))

    def epoch(self) -> list[np.ndarray]:
        return list(batch_indices(len(self.labels), self.batch_size, self.order, min_size=self.min_size))

    def share(self, batch: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of a global batch: the network's (augmented, normalised) input and the targets."""
        idx = self.world.shard(batch)
        x = self.views.gather(self.images, idx, self.view_picks) if self.views else gather(self.images, idx)
        x = self.augment(x)
        y = self.labels[idx].to(self.device)
        return prepare_input(x, self.mean, self.std, self.device), y


@dataclass
class Optimiser:
    """AdamW with its per-batch schedule and AMP loss scaling: one ``step(loss)`` per batch."""

    opt: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.schedule.step()

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


@dataclass(frozen=True)
class Deadline:
    """The wall-clock budget (classifier.max_minutes; none when 0): the same answer on every rank."""

    at: float  # time.monotonic() value; inf = no budget

    @classmethod
    def after(cls, minutes: float) -> Deadline:
        return cls(time.monotonic() + minutes * 60.0 if minutes > 0 else math.inf)

    def passed(self, world: World) -> bool:
        return math.isfinite(self.at) and world.any(time.monotonic() > self.at)


@dataclass(frozen=True)
class EpochStats:
    """One training pass, over every rank's images."""

    loss_sum: float
    seen: int
    logits: np.ndarray
    targets: np.ndarray
    seconds: float
    out_of_time: bool


def train_epoch(
    net: nn.Module,
    data: TrainBatches,
    optimiser: Optimiser,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    use_amp: bool,
    deadline: Deadline,
    desc: str = "epoch",
    progress: bool = True,
) -> EpochStats:
    """One shuffled pass over the training batches (this rank's share of each); stops early when the
    deadline passes. Returns the pass's loss, logits and targets of all ranks."""
    net.train()
    t0 = time.monotonic()
    loss_sum, seen, logits_seen, targets_seen = 0.0, 0, [], []
    out_of_time = False
    bar = tqdm(data.epoch(), desc=desc, unit="batch", leave=False, disable=not progress, mininterval=1.0)
    for batch in bar:
        x, y = data.share(batch)
        with torch.autocast(data.device.type, enabled=use_amp):
            logits = net(x)
        loss = loss_fn(logits, y)
        optimiser.step(loss)
        loss_sum += float(loss.detach()) * len(y)
        seen += len(y)
        logits_seen.append(logits.detach().float().cpu().numpy())
        targets_seen.append(y.cpu().numpy())
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
        if deadline.passed(data.world):
            out_of_time = True
            break
    seconds = time.monotonic() - t0
    parts = data.world.gather((np.concatenate(logits_seen), np.concatenate(targets_seen), loss_sum, seen))
    return EpochStats(
        sum(q[2] for q in parts),
        sum(q[3] for q in parts),
        np.concatenate([q[0] for q in parts]),
        np.concatenate([q[1] for q in parts]),
        seconds,
        out_of_time,
    )


def epoch_record(
    epoch: int,
    stats: EpochStats,
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    lr: float,
    backbone_frozen: bool,
    started: float,
) -> EpochRecord:
    tl, ty, vl, vy = stats.logits, stats.targets, val_logits, val_labels
    return EpochRecord(
        epoch=epoch,
        train_loss=stats.loss_sum / max(1, stats.seen),
        train_accuracy=float(np.mean((tl > 0) == (ty > 0.5))),
        train_roc_auc=safe_auc(ty, tl),
        val_loss=bce(vl, vy),
        val_accuracy=float(np.mean((vl > 0) == (vy > 0.5))),
        val_roc_auc=safe_auc(vy, vl),
        lr=lr,
        backbone_frozen=backbone_frozen,
        seconds=time.monotonic() - started,
        train_images_per_s=stats.seen / max(stats.seconds, 1e-9),
    )


@dataclass
class KeepBest:
    """The best epoch so far (the highest validation ROC-AUC; within AUC_TOLERANCE, the lower validation
    loss), its weights on the CPU and validation logits, and how many epochs have not beaten it."""

    auc: float = -math.inf
    loss: float = math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None
    val_logits: np.ndarray | None = None
    stale: int = 0

    def update(self, record: EpochRecord, model: nn.Module, val_logits: np.ndarray) -> bool:
        """Keep this epoch if it beats the best so far; True when it did."""
        auc = record.val_roc_auc
        tied = auc >= self.auc - AUC_TOLERANCE
        improved = auc > self.auc + AUC_TOLERANCE or (tied and record.val_loss < self.loss)
        if improved:
            self.auc, self.loss, self.epoch, self.stale = max(auc, self.auc), record.val_loss, record.epoch, 0
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            self.val_logits = val_logits
        else:
            self.stale += 1
        return improved

    def should_stop(self, patience: int) -> bool:
        """Early stopping: ``patience`` epochs in a row without a better one (0 = never)."""
        return patience > 0 and self.stale >= patience


def check_inputs(train_labels: np.ndarray, val_labels: np.ndarray, batch_size: int, world: World) -> None:
    if len(np.unique(val_labels)) < 2:
        raise ValueError(
            "the validation split needs both real and fake images (early stopping on ROC-AUC, "
            "temperature scaling and the threshold are fitted on it)"
        )
    min_batch = 2 * world.size  # BatchNorm needs 2 images per process
    if batch_size < min_batch:
        raise ValueError(
            f"classifier.batch_size={batch_size} is the global batch, split over {world.size} "
            f"processes; it must be at least {min_batch} (2 images per process)"
        )


def train_loop(
    model: DeepfakeClassifier,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    p: ClassifierParams,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    world: World = World(),
    views: TrainViews | None = None,
) -> TrainResult:
    """Train ``model`` as params block ``p`` says and return it holding the weights of its best validation
    ROC-AUC epoch.

    ``p.batch_size`` is the global batch; with several ranks each trains on its share of it. With
    ``views``, each training row is shown as its crop or one of its views (drawn per batch).
    """
    check_inputs(train_labels, val_labels, p.batch_size, world)
    started = time.monotonic()
    deadline = Deadline.after(p.max_minutes)
    augment = Augmenter(
        AugmentConfig.from_params(p), torch.Generator().manual_seed(seed_for(p.seed, world.rank)), device
    )
    data = TrainBatches(
        train_images,
        torch.from_numpy(train_labels.astype(np.float32)),
        views,
        p.batch_size,
        world,
        augment,
        order=torch.Generator().manual_seed(p.seed),
        view_picks=torch.Generator().manual_seed(seed_for(p.seed, world.rank, 1)),
        device=device,
        mean=mean,
        std=std,
    )
    weights = class_weights(train_labels, p.class_weighting)
    model = on_device(model, device, world)
    if len(data) == 0:
        raise ValueError(
            f"{len(train_labels)} training images are too few for {world.size} processes "
            f"(at least {data.min_size} are needed)"
        )
    use_amp = p.amp and device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    optimiser = Optimiser(
        opt, make_scheduler(opt, p, len(data) * p.epochs), torch.amp.GradScaler("cuda", enabled=use_amp)
    )
    loss_fn = functools.partial(smoothed_bce, weights=weights, smoothing=p.label_smoothing)
    progress = progress and world.is_main

    history: list[EpochRecord] = []
    best, stop_reason, net = KeepBest(), "completed", None
    for epoch in range(1, p.epochs + 1):
        t0 = time.monotonic()
        frozen = epoch <= frozen_epochs(p)
        if net is None or frozen != model.backbone_frozen:
            model.freeze_backbone(frozen)
            net = data_parallel(model, world, device)
        stats = train_epoch(net, data, optimiser, loss_fn, use_amp, deadline, f"epoch {epoch}/{p.epochs}", progress)
        val_logits = validation_logits(model, val_images, p.batch_size * 2, device, mean, std, p.amp, world, progress)
        if not (np.isfinite(val_logits).all() and math.isfinite(stats.loss_sum)):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (non-finite loss or logits); lower classifier.lr (now {p.lr})"
            )
        record = epoch_record(epoch, stats, val_logits, val_labels, optimiser.lr, model.backbone_frozen, t0)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        best.update(record, model, val_logits)
        if stats.out_of_time or deadline.passed(world):
            stop_reason = "time_budget"
            break
        if best.should_stop(p.early_stopping_patience):
            stop_reason = "early_stopping"
            break
    assert best.state is not None and best.val_logits is not None
    world.check_in_sync(model, "train_classifier")
    model.freeze_backbone(False)
    model.load_state_dict(best.state)
    model.eval()
    return TrainResult(
        model, history, best.epoch, best.auc, stop_reason, best.val_logits, weights, time.monotonic() - started
    )
