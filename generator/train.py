"""The generators' training run: train or resume, one checkpoint and one sample grid per epoch, a time budget.

The networks are initialised under ``torch.manual_seed(seed)`` (generator.trainers); the run's
checkpoint holds the trainer's state, the global RNG state and the history, so a run killed or stopped by
``max_minutes`` resumes where it stopped. With several ranks every rank reads the checkpoint; only rank 0
writes files and calls the hooks. Checkpoints are read with ``weights_only=True``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from core.distributed import World
from core.io import atomic_write_bytes, stable_hash
from core.params import GeneratorParams
from generator.sampling import MODEL_FORMAT, generate, grid_png, load_torch
from generator.trainers import Trainer, build_trainer

CHECKPOINT_NAME = "checkpoint.pt"

# params that change neither what is trained nor how: a checkpoint made under other values is resumed
NOT_HASHED = ("max_minutes", "device", "threads", "processes")
# the trainers' checkpoint layout and update rules: a checkpoint of another version starts over
# (2: the EMA is torch's AveragedModel; 3: residual / resize networks, hinge, R1, DDPM)
TRAINER_VERSION = 3


def params_hash(p: GeneratorParams, data_fingerprint: str) -> str:
    """Identity of a training run: every training-relevant param, the training images' content and the
    trainers' version."""
    hashed = {k: v for k, v in asdict(p).items() if k not in NOT_HASHED}
    return stable_hash({"params": hashed, "data": data_fingerprint, "trainer": TRAINER_VERSION})


def save_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def model_payload(trainer: Trainer, p: GeneratorParams, run_hash: str, epochs_done: int) -> dict[str, Any]:
    """What results/generator/model.pt holds: the EMA sampling weights and how to rebuild the network."""
    state = {k: v.detach().cpu() for k, v in trainer.sampler().state_dict().items()}
    return {
        "format": MODEL_FORMAT,
        "arch": trainer.arch.as_dict(),
        "state_dict": state,
        "epochs_done": epochs_done,
        "params_hash": run_hash,
        "params": asdict(p),
    }


@dataclass
class TrainingResult:
    trainer: Trainer
    run_hash: str
    history: list[dict[str, float]]
    epochs_done: int
    epochs_planned: int
    resumed_from: int
    stopped_by_budget: bool
    seconds: float
    images_seen: int
    grids: list[Path] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.epochs_done >= self.epochs_planned


EpochHook = Callable[[int, dict[str, float], Path], None]
MetricHook = Callable[[nn.Module, int], dict[str, float]]


def train(
    p: GeneratorParams,
    images: torch.Tensor,
    work_dir: Path,
    run_hash: str,
    device: torch.device,
    on_epoch: EpochHook | None = None,
    extra_metrics: MetricHook | None = None,
    log: Callable[[str], None] = print,
    world: World = World(),
) -> TrainingResult:
    """Train (or resume) in ``work_dir``: one atomic checkpoint and one sample grid per epoch.

    Stops after ``p.epochs`` epochs, or earlier when the next epoch would overrun ``p.max_minutes``
    (at least one epoch per call). ``extra_metrics(sampler, epoch)`` adds per-epoch metrics
    (e.g. fd_mobilenet); ``on_epoch(epoch, metrics, grid_png)`` is called after the checkpoint is saved.
    With several ranks, every rank reads the checkpoint; only rank 0 writes files and calls the hooks.
    """
    if min(images.shape[0], p.batch_size) < 2 * world.size:
        raise ValueError(
            f"generator.batch_size={p.batch_size} on {images.shape[0]} images is split over "
            f"{world.size} processes: each needs at least 2 images per batch"
        )
    trainer = build_trainer(p, device, world)
    noise_dim = trainer.arch.noise_dim
    fixed_noise = torch.randn((p.grid_size**2, noise_dim), generator=torch.Generator().manual_seed(p.seed + 1))
    ckpt = work_dir / CHECKPOINT_NAME
    start, history = 0, []
    if ckpt.exists():
        state = load_torch(ckpt)
        if state.get("params_hash") == run_hash:
            trainer.load_state_dict(state["trainer"])
            _set_global_rng(state["global_rng"])
            start, history = int(state["epoch"]), list(state["history"])
            log(f"resuming from {ckpt} at epoch {start}/{p.epochs}")
        else:
            log(f"{ckpt} was made with other params (hash {state.get('params_hash')} != {run_hash}); starting over")
    trainer.sync_from_main()
    t0 = time.monotonic()
    epoch_seconds: list[float] = []
    images_seen = 0
    stopped = False
    grids = [work_dir / "samples" / f"epoch_{e:03d}.png" for e in range(1, start + 1)]
    images = images.to(device) if device.type == "cuda" else images
    bar = tqdm(
        range(start + 1, p.epochs + 1),
        desc=f"train {p.model}",
        unit="epoch",
        initial=start,
        total=p.epochs,
        disable=not world.is_main,
    )
    for epoch in bar:
        t_epoch = time.monotonic()
        metrics = trainer.train_epoch(epoch, images)
        trainer.sync_from_main(buffers_only=True)  # the weights must already agree: checked at the end
        seconds = time.monotonic() - t_epoch
        images_seen += images.shape[0]
        metrics = {"epoch": epoch, **metrics, "seconds": seconds}
        history.append(metrics)
        grid = work_dir / "samples" / f"epoch_{epoch:03d}.png"
        grids.append(grid)
        if world.is_main:
            if extra_metrics is not None:
                metrics.update(extra_metrics(trainer.sampler(), epoch))
            with torch.no_grad():
                sampler = trainer.sampler().eval()
                atomic_write_bytes(grid, grid_png(sampler(fixed_noise.to(device)), nrow=p.grid_size))
            save_torch(
                ckpt,
                {
                    "params_hash": run_hash,
                    "epoch": epoch,
                    "trainer": trainer.state_dict(),
                    "global_rng": _global_rng(),
                    "history": history,
                },
            )
            if on_epoch is not None:
                on_epoch(epoch, metrics, grid)
        bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("d_loss", "g_loss", "loss")})
        epoch_seconds.append(time.monotonic() - t_epoch)
        elapsed = time.monotonic() - t0
        if world.any(p.max_minutes > 0 and epoch < p.epochs and elapsed + _mean(epoch_seconds) > p.max_minutes * 60):
            if world.is_main:
                log(
                    f"generator.max_minutes={p.max_minutes} reached after epoch {epoch}/{p.epochs}; "
                    "rerun to continue from the checkpoint"
                )
            stopped = True
            break
    bar.close()
    for module in trainer.modules():
        world.check_in_sync(module, f"train_generator ({type(module).__name__})")
    done = int(history[-1]["epoch"]) if history else 0
    return TrainingResult(
        trainer, run_hash, history, done, p.epochs, start, stopped, time.monotonic() - t0, images_seen, grids
    )


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _global_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def fd_mobilenet_hook(
    every_epochs: int,
    n_samples: int,
    reals: torch.Tensor,
    noise_dim: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    log: Callable[[str], None] = print,
) -> MetricHook | None:
    """Per-epoch ``fd_mobilenet`` of ``n_samples`` EMA samples vs ``reals`` every ``every_epochs`` (None if off)."""
    if every_epochs <= 0:
        return None
    from generator.extractors import MOBILENET, MOBILENET_LAYER, mobilenet_weights
    from generator.fidelity import Features, frechet_distance

    weights = mobilenet_weights()
    if weights.path is None:
        log(f"generator.fd_every_epochs={every_epochs}: per-epoch fd_mobilenet skipped: {weights.instructions}")
        return None
    features = Features(MOBILENET, MOBILENET_LAYER, weights.path, batch_size)
    real_features = features(reals)

    def hook(sampler: nn.Module, epoch: int) -> dict[str, float]:
        if epoch % every_epochs:
            return {}
        t0 = time.monotonic()
        fake = generate(sampler, n_samples, noise_dim, seed, batch_size, device)
        fd = frechet_distance(features(fake), real_features)
        return {"fd_mobilenet": fd, "fd_seconds": time.monotonic() - t0}

    return hook
