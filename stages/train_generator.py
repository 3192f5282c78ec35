"""Stage `train_generator`: a VAE, DCGAN, WGAN-GP or DDPM on the train split's faces (see README "Generator").

Resumable: the working checkpoint lives in data/cache/generator/<params hash>/ (DVC deletes stage
outputs before a rerun, so it cannot live in results/); results/generator/ is written once, at the end.
With ``generator.processes`` > 1 (or under torchrun) it trains data-parallel; rank 0 alone writes files
and the MLflow run.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch

from core.distributed import World, relaunch_under_torchrun, training_world
from core.errors import require, run_stage
from core.io import atomic_output_dir, link_or_copy, read_csv, write_csv, write_json
from core.params import GeneratorParams, load_block
from core.tracking import stage_run
from generator.data import load_image_cache, tensor_fingerprint, training_rows
from generator.train import TrainingResult, fd_mobilenet_hook, model_payload, params_hash, save_torch, train
from generator.trainers import arch_of

TRAIN_SPLIT = Path("data/splits/train.csv")
WORK_ROOT = Path("data/cache/generator")
OUT_DIR = Path("results/generator")
# the same columns for every model (empty where a model has no such value), so one DVC plot spec fits all
HISTORY_COLUMNS = [
    "epoch",
    "d_loss",
    "g_loss",
    "d_real",
    "d_fake",
    "gp",
    "wasserstein",
    "loss",
    "recon",
    "kl",
    "r1",
    "grad_norm",
    "fd_mobilenet",
    "fd_seconds",
    "instance_noise",
    "seconds",
]


def main() -> None:
    p = load_block("generator", GeneratorParams)
    require(TRAIN_SPLIT, "split")
    exit_code = relaunch_under_torchrun("stages.train_generator", p.processes)
    if exit_code is not None:
        raise SystemExit(exit_code)
    with training_world(p.device, p.threads) as (world, device, threads):
        train_and_save(p, world, device, threads)


def train_and_save(p: GeneratorParams, world: World, device: torch.device, threads: int) -> None:
    rows = training_rows(read_csv(TRAIN_SPLIT), p.train_on)
    with world.main_first():  # rank 0 builds the image cache, the other ranks then read it
        images = load_image_cache(
            [Path(x) for x in rows["path"]],
            p.image_size,
            desc=f"{len(rows)} faces",
            progress=world.is_main,
            cache_name=f"generator-train-{p.train_on}",
        )
    run_hash = params_hash(p, tensor_fingerprint(images))
    work_dir = WORK_ROOT / run_hash
    if not world.is_main:
        train(p, images, work_dir, run_hash, device, log=lambda _: None, world=world)
        return
    print(
        f"train_generator: {p.model} {p.image_size}px on {len(rows)} {p.train_on} train faces, device {device} "
        f"({world.size} process{'es' if world.distributed else ''} x {threads} CPU threads), work dir {work_dir}"
    )
    noise_dim = arch_of(p).noise_dim
    hook = fd_mobilenet_hook(p.fd_every_epochs, p.fd_every_samples, images, noise_dim, p.seed, p.batch_size, device)

    def log_epoch(epoch: int, metrics: dict[str, float], grid: Path) -> None:
        mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
        mlflow.log_artifact(str(grid), artifact_path="samples")

    with stage_run("train_generator", "generator", p, manifest=TRAIN_SPLIT):
        mlflow.set_tags(
            {
                "generator.params_hash": run_hash,
                "generator.n_train": len(rows),
                "generator.device": str(device),
                "generator.world_size": world.size,
            }
        )
        result = train(p, images, work_dir, run_hash, device, on_epoch=log_epoch, extra_metrics=hook, world=world)
        for metrics, grid in zip(result.history[: result.resumed_from], result.grids):  # earlier runs' epochs
            log_epoch(int(metrics["epoch"]), metrics, grid)
        summary = write_outputs(result, p, len(rows), world.size)
        mlflow.log_metrics(
            {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        )
        mlflow.set_tag("generator.complete", str(summary["complete"]))
        for name in ("model.pt", "history.csv", "summary.json"):
            mlflow.log_artifact(str(OUT_DIR / name))
    state = "complete" if summary["complete"] else "STOPPED by generator.max_minutes (rerun to continue)"
    print(
        f"train_generator: {summary['epochs_done']}/{p.epochs} epochs, {state}; "
        f"{summary['train_images_per_second']:.1f} img/s; outputs in {OUT_DIR}"
    )


def write_outputs(result: TrainingResult, p: GeneratorParams, n_train: int, processes: int = 1) -> dict[str, object]:
    """results/generator/: model.pt (EMA weights), history.csv, samples/epoch_XXX.png, summary.json (atomic)."""
    run_epochs = result.history[result.resumed_from :]
    train_seconds = sum(float(m["seconds"]) for m in run_epochs)
    summary: dict[str, object] = {
        "model": p.model,
        "image_size": p.image_size,
        "train_on": p.train_on,
        "n_train": n_train,
        "epochs_done": result.epochs_done,
        "epochs_planned": p.epochs,
        "complete": result.complete,
        "stopped_by_budget": result.stopped_by_budget,
        "resumed_from_epoch": result.resumed_from,
        "params_hash": result.run_hash,
        "processes": processes,
        "seconds_this_run": round(result.seconds, 2),
        "train_images_per_second": n_train * len(run_epochs) / train_seconds if train_seconds > 0 else 0.0,
    }
    if result.history:
        summary.update({f"final_{k}": v for k, v in result.history[-1].items() if k not in ("epoch", "seconds")})
    with atomic_output_dir(OUT_DIR) as tmp:
        save_torch(tmp / "model.pt", model_payload(result.trainer, p, result.run_hash, result.epochs_done))
        history = pd.DataFrame(result.history)
        write_csv(
            tmp / "history.csv",
            history.reindex(columns=HISTORY_COLUMNS + sorted(set(history.columns) - set(HISTORY_COLUMNS))),
        )
        for grid in result.grids:
            link_or_copy(grid, tmp / "samples" / grid.name)
        write_json(tmp / "summary.json", summary)
    return summary


if __name__ == "__main__":
    run_stage(
        "train_generator",
        main,
        __doc__,
        "generator",
        ["results/generator/{model.pt,history.csv,samples/,summary.json}"],
    )
