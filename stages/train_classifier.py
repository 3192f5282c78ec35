"""Stage train_classifier: real-vs-fake classifier on the face crops of data/splits/{train,val}.csv.

Reads params block ``classifier``; records the faces params that made the crops (data/faces/params.json,
written by the faces stage) and data.min_side (data/raw/summary.json, written by download) in the checkpoint,
so predict crops the same way and skips the images the pipeline skips. Writes
results/classifier/{model.pt, history.csv, history.png, metrics.json}. The temperature and the
decision threshold are fitted on the validation split only (data/splits/calib.csv is never read: it stays
for the conformal calibration of evaluate). A deep ensemble (``classifier.ensemble`` > 1) trains its members
in turn, each with its own seed and an equal share of ``max_minutes``, and saves them in one checkpoint;
its probability is the members' mean. With ``classifier.processes`` > 1 (or under torchrun) it trains
data-parallel; rank 0 alone writes the outputs and the MLflow run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from classifier.checkpoint import ClassifierCheckpoint, save_checkpoint
from classifier.data import label_subset, load_split, load_views
from classifier.metrics import binary_metrics, calibrated, choose_threshold_from_logits, fit_temperature_with_reason
from classifier.train import EpochRecord, TrainResult, member_params, train_loop
from core.distributed import World, relaunch_under_torchrun, training_world
from core.errors import MissingInputError, run_stage
from core.io import write_csv, write_json
from core.params import ClassifierParams, FacesParams, as_dict, load_block, parse_block
from core.plots import history_figure, save_figure
from core.pretrained import find_weights
from core.tracking import active_run_id, stage_run
from models.classifier import ArchSpec, build_classifier
from models.ensemble import mean_probability_logit
from selfsup.encoder import load_into

SPLITS_DIR = Path("data/splits")
FACES_PARAMS = Path("data/faces/params.json")  # the faces params that made the crops (faces stage)
VIEWS = Path("data/faces/views.csv")  # training views of each face (faces.framing_views)
RAW_SUMMARY = Path("data/raw/summary.json")  # data.min_side the raw images were filtered with (download)
OUT_DIR = Path("results/classifier")
HISTORY_PANELS: dict[str, Sequence[str]] = {
    "loss": ["train_loss", "val_loss"],
    "accuracy": ["train_accuracy", "val_accuracy"],
    "ROC-AUC": ["train_roc_auc", "val_roc_auc"],
}


def crop_params() -> FacesParams:
    """How the training crops were made (data/faces/params.json, written by the faces stage)."""
    if not FACES_PARAMS.exists():
        raise MissingInputError(f"{FACES_PARAMS} not found", "run the faces stage first (dvc repro faces)")
    raw = json.loads(FACES_PARAMS.read_text())
    known = {f.name for f in dataclasses.fields(FacesParams)}
    return parse_block("faces", FacesParams, {k: v for k, v in raw.items() if k in known})


def raw_min_side() -> int | None:
    """data.min_side of the download that made the data (predict skips smaller images); None when unknown."""
    value = json.loads(RAW_SUMMARY.read_text()).get("min_side") if RAW_SUMMARY.exists() else None
    return None if value is None else int(value)


def main() -> None:
    p = load_block("classifier", ClassifierParams)
    exit_code = relaunch_under_torchrun("stages.train_classifier", p.processes)
    if exit_code is not None:
        raise SystemExit(exit_code)
    faces = crop_params()
    with training_world(p.device, p.threads) as (world, device, threads):
        train_and_save(p, faces, world, device, threads)


def train_and_save(p: ClassifierParams, faces: FacesParams, world: World, device: torch.device, threads: int) -> None:
    torch.manual_seed(p.seed)
    # Fail before any work when ImageNet weights are asked for but absent (never train from scratch instead).
    weights = find_weights(p.arch) if p.init == "imagenet" else None
    with world.main_first():  # rank 0 builds the image caches, the other ranks then memory-map them
        train = load_split(SPLITS_DIR / "train.csv", p.image_size, progress=world.is_main)
        train = label_subset(train, p.label_fraction, p.seed)  # whole groups, both labels (label-efficiency runs)
        val = load_split(SPLITS_DIR / "val.csv", p.image_size, progress=world.is_main)
        views = load_views(train, VIEWS, p.image_size, progress=world.is_main)
    spec = ArchSpec.from_params(p)
    # checked before the run opens: a missing encoder or one of another architecture is one clear error
    encoder = load_into(build_classifier(spec), spec) if p.init == "ssl" else None
    if encoder is not None and encoder.image_size != p.image_size and world.is_main:
        print(
            f"train_classifier: the encoder was pretrained at {encoder.image_size} px, "
            f"the classifier runs at {p.image_size} px"
        )
    mean, std = spec.normalisation
    history: list[dict] = []
    run = (
        stage_run(stage="train_classifier", block="classifier", params=p, manifest=SPLITS_DIR / "train.csv")
        if world.is_main
        else nullcontext()
    )  # one MLflow run, opened by rank 0

    with run:
        if world.is_main:
            mlflow.set_tags(
                {
                    "classifier.device": str(device),
                    "classifier.torch_threads": threads,
                    "classifier.world_size": world.size,
                    "classifier.pretrained_weights": f"{weights.origin}:{weights.path}" if weights else "none",
                    "classifier.ssl_encoder_image_size": encoder.image_size if encoder else "none",
                }
            )

        results: list[TrainResult] = []
        for member in range(p.ensemble):
            prefix = f"member{member}_" if member else ""  # member 0 keeps the plain metric names

            def on_epoch(record: EpochRecord, member: int = member, prefix: str = prefix) -> None:
                history.append({"member": member, **record.as_dict()})
                write_csv(OUT_DIR / "history.csv", pd.DataFrame(history))
                metrics = {f"{prefix}{k}": float(v) for k, v in record.as_dict().items() if k != "epoch"}
                mlflow.log_metrics(metrics, step=record.epoch)
                print(
                    f"member {member + 1}/{p.ensemble} epoch {record.epoch}: train loss {record.train_loss:.4f} "
                    f"auc {record.train_roc_auc:.3f} | val loss {record.val_loss:.4f} acc {record.val_accuracy:.3f} "
                    f"auc {record.val_roc_auc:.3f} ({record.seconds:.1f}s)"
                )

            mp = member_params(p, member)
            torch.manual_seed(mp.seed)
            model = build_classifier(spec, weights.path if weights else None)
            if p.init == "ssl":
                load_into(model, spec)  # every member starts from the self-supervised encoder
            results.append(
                train_loop(
                    model,
                    train.images,
                    train.labels,
                    val.images,
                    val.labels,
                    mp,
                    device,
                    mean,
                    std,
                    on_epoch=on_epoch if world.is_main else None,
                    world=world,
                    views=views,
                )
            )
        if not world.is_main:
            return
        result = results[0]
        member_logits = torch.from_numpy(np.stack([r.val_logits for r in results]))
        # the temperature is fitted on the members' mean logit (one member: its logit); never collapses on separable val
        fit = fit_temperature_with_reason(member_logits.mean(0).numpy(), val.labels)
        temperature = fit.temperature
        val_logits = mean_probability_logit(member_logits, temperature).numpy()  # the ensemble's mean probability
        p_raw = calibrated(mean_probability_logit(member_logits, 1.0).numpy(), 1.0)
        p_cal = calibrated(val_logits, temperature)
        # chosen on the calibrated val probabilities; midpoint taken between logits (meaningful when separable)
        threshold = choose_threshold_from_logits(val.labels, val_logits, temperature, p.threshold_rule)
        val_metrics = binary_metrics(val.labels, p_cal, threshold)
        val_summary = {**val_metrics, "ece_before_temperature": binary_metrics(val.labels, p_raw, 0.5)["ece"]}
        summary: dict[str, Any] = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stop_reason": result.stop_reason,
            "seconds": round(sum(r.seconds for r in results), 2),
            "ensemble": len(results),
            "member_seconds": [round(r.seconds, 2) for r in results],
            "member_best_val_roc_auc": [r.best_val_roc_auc for r in results],
            "member_stop_reasons": [r.stop_reason for r in results],
            "temperature": temperature,
            "temperature_reason": fit.reason,
            "threshold": threshold,
            "threshold_rule": p.threshold_rule,
            "class_weight_real": result.class_weights[0],
            "class_weight_fake": result.class_weights[1],
            "n_train": len(train),
            "n_val": len(val),
            "processes": world.size,
            "n_train_views": len(views) if views else 0,
            "train_images_per_s": float(np.mean([h.train_images_per_s for r in results for h in r.history])),
            "val": val_summary,
        }
        ckpt = ClassifierCheckpoint(
            state_dict=result.model.state_dict(),
            arch=spec.to_dict(),
            temperature=temperature,
            threshold=threshold,
            threshold_rule=p.threshold_rule,
            mean=list(mean),
            std=list(std),
            image_size=p.image_size,
            faces=as_dict(faces),
            info={
                "best_epoch": result.best_epoch,
                "best_val_roc_auc": result.best_val_roc_auc,
                "init": p.init,
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "temperature_reason": fit.reason,
                "min_side": raw_min_side(),
                "ensemble": len(results),
                "mlflow_run_id": active_run_id(),  # the app says which run it serves
                "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            },
            members=[r.model.state_dict() for r in results[1:]],
        )
        save_checkpoint(OUT_DIR / "model.pt", ckpt)
        write_json(OUT_DIR / "metrics.json", summary)
        first = pd.DataFrame(history).query("member == 0")  # the figure shows member 0's curves
        save_figure(history_figure(first, "epoch", HISTORY_PANELS), OUT_DIR / "history.png")
        mlflow.log_metrics(
            {
                "best_epoch": result.best_epoch,
                "temperature": temperature,
                "threshold": threshold,
                **{f"final_val_{k}": float(v) for k, v in val_summary.items() if isinstance(v, (int, float))},
            }
        )
        mlflow.set_tags({"classifier.stop_reason": result.stop_reason, "classifier.temperature_reason": fit.reason})
        for name in ("history.csv", "history.png", "metrics.json"):
            mlflow.log_artifact(str(OUT_DIR / name))
    print(
        f"train_classifier: {len(results)} member(s); member 0 best epoch {result.best_epoch}/{len(result.history)} "
        f"({result.stop_reason}), val ROC-AUC {result.best_val_roc_auc:.4f}; ensemble val ROC-AUC "
        f"{val_metrics['roc_auc']:.4f}, T={temperature:.3f} ({fit.reason}), threshold={threshold:.4f} "
        f"({p.threshold_rule}) -> {OUT_DIR / 'model.pt'}"
    )


if __name__ == "__main__":
    run_stage(
        "train_classifier",
        main,
        __doc__,
        "classifier",
        ["results/classifier/{model.pt,history.csv,history.png,metrics.json}"],
    )
