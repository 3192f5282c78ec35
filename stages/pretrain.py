"""Stage pretrain: self-supervised SimCLR pretraining of the classifier's backbone on unlabelled face crops.

Reads params block ``pretrain``, the face crops of data/splits/train.csv (labels unused; val and test images
are never trained on) and, with ``pretrain.extra_folder``, more unlabelled images cropped by the faces path.
After each epoch a kNN probe on the frozen features (train crops as memory, labels used only there) scores
the validation split. Writes results/pretrain/{encoder.pt, history.csv, history.png, metrics.json}:
``classifier.init: ssl`` starts from encoder.pt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from core.device import pick_device, set_threads
from core.errors import InputError, run_stage
from core.io import write_csv, write_json
from core.params import PretrainParams, as_dict, load_block
from core.plots import history_figure, save_figure
from core.pretrained import find_weights
from core.tracking import stage_run
from models.classifier import build_classifier
from selfsup.augment import ViewMaker
from selfsup.data import SPLITS_DIR, extra_crops, split_crops
from selfsup.encoder import ENCODER_PATH, EncoderFile, arch_key, encoder_spec, feature_width
from selfsup.probe import probe_auc
from selfsup.train import PretrainEpoch, SimCLR, pretrain_loop

OUT_DIR = ENCODER_PATH.parent
PANELS: dict[str, Sequence[str]] = {"NT-Xent loss": ["loss"], "kNN val ROC-AUC (frozen features)": ["knn_val_roc_auc"]}


def main() -> None:
    p = load_block("pretrain", PretrainParams)
    device = pick_device(p.device)
    threads = set_threads(p.threads)
    torch.manual_seed(p.seed)  # the views' random draws (torchvision v2 uses torch's global generator)
    weights = find_weights(p.arch) if p.start == "imagenet" else None  # fails before any work when absent
    train = split_crops("train", p.image_size)
    val = split_crops("val", p.image_size)
    extra, extra_counts = (
        extra_crops(Path(p.extra_folder), p.image_size) if p.extra_folder else (train.images[:0], {"kept": 0})
    )
    images = np.concatenate([np.asarray(train.images), extra]) if len(extra) else np.asarray(train.images)
    if len(images) < 4:
        raise InputError(f"pretraining needs at least 4 face crops; got {len(images)}", "add data")
    spec = encoder_spec(p)
    classifier = build_classifier(spec, weights.path if weights else None)
    mean, std = spec.normalisation
    model = SimCLR(classifier.backbone, feature_width(classifier), p.proj_hidden, p.proj_dim)
    views = ViewMaker.from_params(p, mean, std)

    def probe(backbone: torch.nn.Module) -> float:
        return probe_auc(backbone, train, val, mean, std, device, p.probe_k)

    history: list[dict[str, float]] = []
    with stage_run(stage="pretrain", block="pretrain", params=p, manifest=SPLITS_DIR / "train.csv"):
        mlflow.set_tags({"pretrain.device": str(device), "pretrain.torch_threads": threads})
        start_auc = probe(model.backbone.to(device))
        mlflow.log_metric("knn_val_roc_auc", start_auc, step=0)
        print(f"pretrain: {len(images)} crops ({extra_counts['kept']} extra), kNN val ROC-AUC at start {start_auc:.3f}")

        def on_epoch(record: PretrainEpoch) -> None:
            history.append(record.as_dict())
            write_csv(OUT_DIR / "history.csv", pd.DataFrame(history))
            mlflow.log_metrics({k: v for k, v in record.as_dict().items() if k != "epoch"}, step=record.epoch)
            print(
                f"epoch {record.epoch}: loss {record.loss:.4f}, kNN val ROC-AUC {record.knn_val_roc_auc:.3f} "
                f"({record.images_per_s:.0f} img/s, {record.seconds:.1f}s)"
            )

        result = pretrain_loop(model, images, p, views, device, probe, on_epoch)
        last = result.history[-1]
        summary = {
            "epochs_run": len(result.history),
            "stop_reason": result.stop_reason,
            "seconds": round(result.seconds, 2),
            "n_images": len(images),
            "n_train_crops": len(train.images),
            "extra": extra_counts,
            "first_loss": result.history[0].loss,
            "final_loss": last.loss,
            "knn_val_roc_auc_start": start_auc,
            "knn_val_roc_auc": last.knn_val_roc_auc,
            "images_per_s": float(np.mean([r.images_per_s for r in result.history])),
            "device": str(device),
        }
        EncoderFile(
            state_dict=model.backbone.state_dict(),
            arch=arch_key(spec),
            mean=list(mean),
            std=list(std),
            image_size=p.image_size,
            info={"params": as_dict(p), "epochs_run": len(result.history), "knn_val_roc_auc": last.knn_val_roc_auc},
        ).save(ENCODER_PATH)
        write_json(OUT_DIR / "metrics.json", summary)
        save_figure(history_figure(pd.DataFrame(history), "epoch", PANELS), OUT_DIR / "history.png")
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        for name in ("history.csv", "history.png", "metrics.json"):
            mlflow.log_artifact(str(OUT_DIR / name))
    print(
        f"pretrain: {len(result.history)} epochs ({result.stop_reason}), loss {summary['first_loss']:.3f} -> "
        f"{last.loss:.3f}, kNN val ROC-AUC {start_auc:.3f} -> {last.knn_val_roc_auc:.3f} -> {ENCODER_PATH}"
    )


if __name__ == "__main__":
    run_stage(
        "pretrain", main, __doc__, "pretrain", ["results/pretrain/{encoder.pt,history.csv,history.png,metrics.json}"]
    )
