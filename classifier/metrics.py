"""Binary real(0)/fake(1) metrics on probabilities of fake, built on sklearn.metrics.

Also: equal error rate, expected calibration error and its reliability table, the decision
threshold chosen on validation, temperature scaling that cannot collapse on separable validation
(``fit_temperature_with_reason``), and per-generator breakdowns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn import metrics as skm

from core.schema import REAL_GENERATOR

THRESHOLD_RULES = ("youden", "f1", "eer")


def sigmoid(z: np.ndarray | float) -> np.ndarray:
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
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "mean_predicted": mean_p,
            "fraction_fake": frac,
            "count": count,
        }
    )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    table = reliability_table(y, p, bins)
    used = table[table["count"] > 0]
    gaps = (used["mean_predicted"] - used["fraction_fake"]).abs()
    return float((gaps * used["count"]).sum() / max(1, int(used["count"].sum())))


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def _midpoint(hi: float, lo: float) -> float:
    """Halfway between two adjacent probabilities, taken in logit space.

    A probability midpoint of 1e-30 and 1 - 1e-30 is 0.5 whatever the model says; the logit midpoint
    mapped back through the sigmoid sits where the scores are equally far apart in the model's own
    units. Scores of exactly 0 or 1 (infinite logits) or outside [0, 1] get the plain midpoint.
    """
    if 0.0 < lo <= hi < 1.0:
        return float(sigmoid((_logit(hi) + _logit(lo)) / 2))
    return float((hi + lo) / 2)


def _best_cut(y: np.ndarray, scores: np.ndarray, rule: str) -> tuple[float, float | None]:
    """The score chosen by ``rule`` (fake when score >= it) and the next lower score (None: none lower)."""
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r}; allowed: {', '.join(THRESHOLD_RULES)}")
    y = np.asarray(y)
    if not _both_classes(y):
        raise ValueError("choosing a threshold needs both real and fake images in the validation split")
    fpr, tpr, thr = skm.roc_curve(y, scores, drop_intermediate=False)
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
    return float(thr[i]), (float(thr[i + 1]) if i + 1 < len(thr) else None)


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str = "youden") -> float:
    """Threshold on p (fake when p >= threshold) that optimises ``rule`` on these (validation) scores.

    youden: max TPR - FPR (= max balanced accuracy); f1: max F1 of the fake class; eer: where FPR
    and FNR meet. The threshold sits halfway, in logit space, between the chosen score and the next
    lower one (see ``choose_threshold_from_logits`` when the probabilities may be saturated).
    """
    hi, lo = _best_cut(y, np.asarray(p, dtype=np.float64), rule)
    return hi if lo is None else _midpoint(hi, lo)


def choose_threshold_from_logits(y: np.ndarray, logits: np.ndarray, temperature: float, rule: str = "youden") -> float:
    """``choose_threshold`` on the calibrated probabilities sigmoid(logits / T), computed on the logits.

    The same choice (the sigmoid keeps the order), but the midpoint is taken between the two
    logits themselves, so it stays meaningful where the probabilities round to 0 or 1: on separable
    validation it is sigmoid((lowest fake logit + highest real logit) / 2T).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    hi, lo = _best_cut(y, z, rule)
    return float(sigmoid(hi if lo is None else (hi + lo) / 2))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    # mean binary cross-entropy computed stably from logits
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def negative_log_likelihood(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    return _nll(np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64), temperature)


TEMPERATURE_BOUNDS = (0.05, 20.0)
# Gaussian prior on log T (centred on T = 1, sd 1: T in [0.14, 7.4] at two sd). Its weight is one
# image's worth of NLL, so it is negligible with a few hundred validation images unless the NLL is
# nearly flat or keeps falling towards T -> 0 (a near-separable split).
LOG_TEMPERATURE_PRIOR_SD = 1.0


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and why it has this value (``reason`` starts with "fitted" when the MAP fit stands)."""

    temperature: float
    reason: str

    @property
    def fitted(self) -> bool:
        return self.reason.startswith("fitted")


def separable(logits: np.ndarray, y: np.ndarray) -> bool:
    """Every fake logit above every real logit: the NLL keeps falling as T -> 0 and has no minimum."""
    z, t = np.asarray(logits, dtype=np.float64), np.asarray(y)
    return _both_classes(t) and float(z[t == 1].min()) > float(z[t == 0].max())


def fit_temperature_with_reason(
    logits: np.ndarray,
    y: np.ndarray,
    lo: float = TEMPERATURE_BOUNDS[0],
    hi: float = TEMPERATURE_BOUNDS[1],
    prior_sd: float = LOG_TEMPERATURE_PRIOR_SD,
) -> TemperatureFit:
    """Temperature T for sigmoid(logits / T), fitted on these (validation) labels, that cannot collapse.

    MAP estimate: mean NLL + (log T)^2 / (2 prior_sd^2 n), searched over [lo, hi]. It falls back to
    T = 1.0 (the model's own scale, never sharper) when
    - the validation logits are separable: the NLL is lowest at T -> 0, where every probability is
      0 or 1 (a test Brier of 1e-32 and a 0.5 threshold), which is overconfidence, not calibration;
    - the optimum sits at the lower bound ``lo`` (the same collapse, held off only by the bound).
    An optimum at the upper bound is kept (softer, not sharper) and says so.
    """
    z, t = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not _both_classes(t):
        raise ValueError("temperature scaling needs both real and fake images in the validation split")
    if separable(z, t):
        return TemperatureFit(1.0, "separable validation (every fake logit above every real logit): fell back to 1.0")
    weight = 1.0 / (2.0 * prior_sd**2 * len(t))
    res = minimize_scalar(
        lambda log_t: _nll(z, t, float(np.exp(log_t))) + weight * log_t**2,
        bounds=(np.log(lo), np.log(hi)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    temperature = float(np.exp(res.x))
    if temperature <= lo * 1.001:
        return TemperatureFit(1.0, f"NLL optimum at the lower bound {lo}: fell back to 1.0")
    if temperature >= hi * 0.999:
        return TemperatureFit(temperature, f"fitted, at the upper bound {hi} (logits carry little information)")
    return TemperatureFit(temperature, "fitted")


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, lo: float = TEMPERATURE_BOUNDS[0], hi: float = TEMPERATURE_BOUNDS[1]
) -> float:
    """The temperature of ``fit_temperature_with_reason`` alone."""
    return fit_temperature_with_reason(logits, y, lo, hi).temperature


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


def per_generator_metrics(
    y: np.ndarray, p: np.ndarray, generators: np.ndarray, threshold: float, bins: int = 15
) -> dict[str, dict[str, Any]]:
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
