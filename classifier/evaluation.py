"""Pieces of the evaluate stage: robustness corruptions, the metadata shortcut audit, worst errors.

Robustness: the test crops are corrupted (JPEG re-compression, Gaussian blur, downscale and back
up, Gaussian noise), quantised back to uint8 pixels and scored with the same temperature and
validation threshold as the clean ones.

Shortcut audit: a logistic regression that sees only metadata of the *raw* files (width, height,
bytes, JPEG quantisation tables) is fitted on the train split and scored on the test split. If it
gets close to the model's ROC-AUC, the data carries a format shortcut the model may be using.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classifier.augment import add_noise, down_up, gaussian_blur, jpeg_recompress, quantise
from classifier.data import to_unit
from core.params import EvaluateParams

Transform = Callable[[torch.Tensor], torch.Tensor]
METADATA_FEATURES = ("width", "height", "bytes", "jpeg_tables", "jpeg_luma_q_mean", "jpeg_chroma_q_mean")


def robustness_transforms(p: EvaluateParams) -> dict[str, Transform]:
    """Condition name -> (uint8 batch -> float batch in [0, 1]); noise draws are seeded by ``p.seed``."""
    g = torch.Generator().manual_seed(p.seed)

    def jpeg(batch: torch.Tensor) -> torch.Tensor:
        return to_unit(jpeg_recompress(batch, [p.robust_jpeg_quality] * len(batch)))

    def blur(batch: torch.Tensor) -> torch.Tensor:
        return to_unit(quantise(gaussian_blur(to_unit(batch), torch.full((len(batch),), p.robust_blur_sigma))))

    def downscale(batch: torch.Tensor) -> torch.Tensor:
        return to_unit(quantise(down_up(to_unit(batch), p.robust_downscale)))

    def noise(batch: torch.Tensor) -> torch.Tensor:
        return to_unit(quantise(add_noise(to_unit(batch), torch.full((len(batch),), p.robust_noise_std), g)))

    return {
        f"jpeg_q{p.robust_jpeg_quality}": jpeg,
        f"blur_sigma{p.robust_blur_sigma:g}": blur,
        f"downscale_x{p.robust_downscale:g}": downscale,
        f"noise_std{p.robust_noise_std:g}": noise,
    }


def raw_metadata(path: Path) -> dict[str, float]:
    """Width, height, file bytes and a JPEG quantisation-table summary (0 when not JPEG)."""
    with Image.open(path) as im:
        width, height = im.size
        tables = (getattr(im, "quantization", None) or {}) if im.format == "JPEG" else {}
    luma, chroma = tables.get(0), tables.get(1)
    return {
        "width": float(width),
        "height": float(height),
        "bytes": float(path.stat().st_size),
        "jpeg_tables": float(len(tables)),
        "jpeg_luma_q_mean": float(np.mean(luma)) if luma else 0.0,
        "jpeg_chroma_q_mean": float(np.mean(chroma)) if chroma else 0.0,
    }


@dataclass(frozen=True)
class MetadataTable:
    features: pd.DataFrame  # METADATA_FEATURES of the rows whose raw file was read
    labels: np.ndarray
    unreadable: list[str]  # "<raw_path>: reason" for rows left out


def metadata_table(frame: pd.DataFrame, root: Path = Path(".")) -> MetadataTable:
    rows, labels, unreadable = [], [], []
    for raw_path, label in zip(frame["raw_path"], frame["label"]):
        try:
            rows.append(raw_metadata(root / raw_path))
            labels.append(1 if label == "fake" else 0)
        except (OSError, UnidentifiedImageError, ValueError) as e:
            unreadable.append(f"{raw_path or '(empty raw_path)'}: {type(e).__name__}: {e}")
    return MetadataTable(pd.DataFrame(rows, columns=list(METADATA_FEATURES)), np.asarray(labels), unreadable)


def shortcut_audit(
    train: pd.DataFrame, test: pd.DataFrame, model_roc_auc: float | None, root: Path = Path(".")
) -> dict[str, Any]:
    """Metadata-only logistic regression (fit on train, scored on test) beside the model's ROC-AUC."""
    tr, te = metadata_table(train, root), metadata_table(test, root)
    out: dict[str, Any] = {
        "features": list(METADATA_FEATURES),
        "model_roc_auc": model_roc_auc,
        "n_train": len(tr.labels),
        "n_test": len(te.labels),
        "unreadable_raw": len(tr.unreadable) + len(te.unreadable),
        "unreadable_examples": (tr.unreadable + te.unreadable)[:5],
    }
    if len(set(tr.labels.tolist())) < 2 or len(set(te.labels.tolist())) < 2:
        return {
            **out,
            "metadata_roc_auc": None,
            "metadata_accuracy": None,
            "skipped": "raw metadata of both classes is needed in train and test",
        }
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(tr.features.to_numpy(), tr.labels)
    proba = clf.predict_proba(te.features.to_numpy())[:, 1]
    coefs = clf[-1].coef_[0]
    return {
        **out,
        "metadata_roc_auc": float(roc_auc_score(te.labels, proba)),
        "metadata_accuracy": float(accuracy_score(te.labels, proba >= 0.5)),
        "coefficients": {f: float(c) for f, c in zip(METADATA_FEATURES, coefs)},
        "skipped": "",
    }


def worst_misclassified(y: np.ndarray, p: np.ndarray, threshold: float, k: int) -> np.ndarray:
    """Indices of up to ``k`` misclassified images, most confidently wrong first."""
    y = np.asarray(y)
    wrong = np.flatnonzero((p >= threshold) != (y > 0.5))
    confidence = np.abs(p[wrong] - threshold)
    return wrong[np.argsort(-confidence, kind="stable")][:k]
