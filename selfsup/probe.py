"""How good frozen features are for real vs fake: a kNN classifier (scikit-learn, cosine distance) whose
memory is the labelled train crops, scored by ROC-AUC on the validation crops."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from torch import nn
from torchvision.transforms import v2

from selfsup.data import LabelledCrops


@torch.no_grad()
def features(
    backbone: nn.Module,
    images: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    batch_size: int = 256,
) -> np.ndarray:
    """Pooled backbone features (N, D) of uint8 crops, the backbone in eval mode (restored after)."""
    was_training = backbone.training
    backbone.eval()
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    out = []
    for start in range(0, len(images), batch_size):
        x = normalise(torch.from_numpy(np.array(images[start : start + batch_size]))).to(device)
        out.append(backbone(x).float().cpu().numpy())
    backbone.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def knn_auc(bank: np.ndarray, bank_labels: np.ndarray, query: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """ROC-AUC of the distance-weighted share of fake neighbours among the ``k`` nearest bank features."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(bank)), metric="cosine", weights="distance")
    knn.fit(bank, bank_labels.astype(int))
    scores = knn.predict_proba(query)[:, list(knn.classes_).index(1)]
    return float(roc_auc_score(query_labels, scores))


def probe_auc(
    backbone: nn.Module,
    train: LabelledCrops,
    val: LabelledCrops,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    k: int,
) -> float:
    bank = features(backbone, train.images, mean, std, device)
    query = features(backbone, val.images, mean, std, device)
    return knn_auc(bank, train.labels, query, val.labels, k)
