"""Selective prediction: answer only the most certain images and measure the risk of what is answered.

Images are sorted by the uncertainty score, most certain first; at coverage c the model answers the
first ceil(c * n) and abstains on the rest. The risk–coverage curve is the error rate of the answered
images at every coverage, AURC its area (lower is better: 0 when every error is less certain than every
right answer, the error rate itself when the score says nothing). Error detection asks the same
question directly: the ROC-AUC of the uncertainty score for telling wrong predictions from right ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

COVERAGES = (0.8, 0.9)


def risk_coverage(uncertainty: np.ndarray, wrong: np.ndarray) -> pd.DataFrame:
    """coverage, risk (error rate of the answered images) and the uncertainty cut, one row per answered count."""
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")
    errors = np.cumsum(np.asarray(wrong, dtype=np.float64)[order])
    answered = np.arange(1, len(order) + 1)
    return pd.DataFrame(
        {
            "coverage": answered / max(len(order), 1),
            "risk": errors / answered,
            "uncertainty": np.asarray(uncertainty, dtype=np.float64)[order],
        }
    )


def aurc(uncertainty: np.ndarray, wrong: np.ndarray) -> float | None:
    """Area under the risk–coverage curve (the mean risk over answered counts 1..n)."""
    if len(wrong) == 0:
        return None
    return float(risk_coverage(uncertainty, wrong)["risk"].mean())


def accuracy_at_coverage(uncertainty: np.ndarray, wrong: np.ndarray, coverage: float) -> float | None:
    """Accuracy of the ceil(coverage * n) most certain images."""
    if len(wrong) == 0:
        return None
    k = max(1, int(np.ceil(coverage * len(wrong))))
    order = np.argsort(np.asarray(uncertainty, dtype=np.float64), kind="stable")[:k]
    return float(1.0 - np.asarray(wrong, dtype=np.float64)[order].mean())


def error_detection_auc(uncertainty: np.ndarray, wrong: np.ndarray) -> float | None:
    """ROC-AUC of the uncertainty score for detecting wrong predictions (None without both right and wrong)."""
    w = np.asarray(wrong, dtype=bool)
    if w.all() or not w.any():
        return None
    return float(roc_auc_score(w, uncertainty))


def selective_metrics(uncertainty: np.ndarray, wrong: np.ndarray) -> dict[str, float | None]:
    return {
        "aurc": aurc(uncertainty, wrong),
        "error_detection_auc": error_detection_auc(uncertainty, wrong),
        **{f"accuracy_at_{round(c * 100)}": accuracy_at_coverage(uncertainty, wrong, c) for c in COVERAGES},
    }
