"""Binary real(0)/fake(1) metrics on probabilities of fake, built on sklearn.metrics.

Also: equal error rate, expected calibration error and its reliability table, the decision
threshold chosen on validation, temperature scaling, and per-generator breakdowns.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

from stages.common.schema import REAL_GENERATOR

THRESHOLD_RULES = ("youden", "f1", "eer")


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


def calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probability of fake after temperature scaling."""
    return sigmoid(np.asarray(logits, dtype=np.float64) / temperature)


def _both_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def equal_error_rate(y: np.ndarray, p: np.ndarray) -> float:
    """The rate where false-positive and false-negative rates meet (linear interpolation on the ROC)."""
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    diff = fpr - (1.0 - tpr)  # non-decreasing from -1 to 1
    i = int(np.argmax(diff >= 0))
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Per equal-width probability bin: mean predicted probability of fake, fraction fake, count."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        frac = np.where(count > 0, sum_y / count, np.nan)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "mean_predicted": mean_p,
                         "fraction_fake": frac, "count": count})


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    table = reliability_table(y, p, bins)
    used = table[table["count"] > 0]
    gaps = (used["mean_predicted"] - used["fraction_fake"]).abs()
    return float((gaps * used["count"]).sum() / max(1, int(used["count"].sum())))


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str = "youden") -> float:
    """Threshold on p (fake when p >= threshold) that optimises ``rule`` on these (validation) scores.

    youden: max TPR - FPR (= max balanced accuracy); f1: max F1 of the fake class; eer: where FPR
    and FNR meet. The threshold sits halfway between the chosen score and the next lower one.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r}; allowed: {', '.join(THRESHOLD_RULES)}")
    y = np.asarray(y)
    if not _both_classes(y):
        raise ValueError("choosing a threshold needs both real and fake images in the validation split")
    fpr, tpr, thr = skm.roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop the "nothing is fake" point (threshold inf)
    n_pos, n_neg = float((y == 1).sum()), float((y == 0).sum())
    if rule == "youden":
        score = tpr - fpr
    elif rule == "f1":
        tp, fp = tpr * n_pos, fpr * n_neg
        score = 2 * tp / (2 * tp + fp + (n_pos - tp))
    else:
        score = -np.abs(fpr - (1.0 - tpr))
    i = int(np.argmax(score))
    if i + 1 < len(thr):
        return float((thr[i] + thr[i + 1]) / 2)
    return float(thr[i])


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # mean binary cross-entropy computed stably from logits
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    return _nll(np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64), temperature)


def fit_temperature(logits: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """Temperature T minimising the NLL of sigmoid(logits / T) on these (validation) labels."""
    z, t = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not _both_classes(t):
        raise ValueError("temperature scaling needs both real and fake images in the validation split")
    res = minimize_scalar(lambda log_t: _nll(z, t, float(np.exp(log_t))), bounds=(np.log(lo), np.log(hi)),
                          method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def _or_none(fn: Callable[[], float], needs_both: bool, y: np.ndarray) -> float | None:
    if needs_both and not _both_classes(y):
        return None
    return float(fn())


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float, bins: int = 15) -> dict[str, Any]:
    """Every scalar metric of one score vector at one threshold (None where a class is missing)."""
    y = np.asarray(y).astype(int)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    pred = (p >= threshold).astype(int)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "n_fake": int(y.sum()),
        "n_real": int((1 - y).sum()),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": _or_none(lambda: skm.balanced_accuracy_score(y, pred), True, y),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "roc_auc": _or_none(lambda: skm.roc_auc_score(y, p), True, y),
        "average_precision": _or_none(lambda: skm.average_precision_score(y, p), True, y),
        "eer": _or_none(lambda: equal_error_rate(y, p), True, y),
        "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "brier": float(skm.brier_score_loss(y, p, pos_label=1)),
        "ece": expected_calibration_error(y, p, bins),
    }
    return out


def per_generator_metrics(y: np.ndarray, p: np.ndarray, generators: np.ndarray, threshold: float,
                          bins: int = 15) -> dict[str, dict[str, Any]]:
    """For each fake generator: its fakes against all real images of the same split."""
    generators = np.asarray(generators, dtype=str)
    is_real = generators == REAL_GENERATOR
    out: dict[str, dict[str, Any]] = {}
    for g in sorted(set(generators.tolist()) - {REAL_GENERATOR}):
        mask = is_real | (generators == g)
        out[g] = binary_metrics(np.asarray(y)[mask], np.asarray(p)[mask], threshold, bins)
    return out


def roc_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """ROC curve points (no rows when a class is missing: the curve is undefined)."""
    if not _both_classes(np.asarray(y)):
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"], dtype=float)
    fpr, tpr, thr = skm.roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def pr_points(y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """Precision-recall points (no rows when a class is missing)."""
    if not _both_classes(np.asarray(y)):
        return pd.DataFrame(columns=["recall", "precision", "threshold"], dtype=float)
    precision, recall, thr = skm.precision_recall_curve(y, p)
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, 1.0)})
