"""Conformal prediction sets (crepes): {real}, {fake}, {real, fake} (abstain) or {} per image.

Non-conformity of a label = 1 - the model's probability of it (crepes' ``hinge``). The calibration scores
come from the calibration split (data/splits/calib.csv), which takes no part in training, early stopping,
the temperature or the threshold. A label is in an image's set when its (non-smoothed) conformal p-value
is >= alpha; with exchangeable calibration and test images the set holds the true label with probability
>= 1 - alpha. ``mondrian`` (the default) calibrates each true class on its own calibration images, so the
guarantee holds for real and for fake images separately; ``marginal`` pools them.

Exchangeability is the whole guarantee: images from a generator the calibration split never saw
(split.protocol: leave_one_generator_out) are not exchangeable with it, and their coverage can fall
below 1 - alpha (results/eval/uncertainty.json reports it per generator).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from crepes import ConformalClassifier
from crepes.extras import hinge

CLASSES = np.array([0, 1])  # 0 = real, 1 = fake (core.schema.LABELS order)
SET_NAMES = {(False, False): "", (True, False): "real", (False, True): "fake", (True, True): "real|fake"}


def two_class_probs(prob_fake: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prob_fake, dtype=np.float64), 0.0, 1.0)
    return np.stack([1.0 - p, p], axis=1)


@dataclass(frozen=True)
class ConformalSets:
    """A fitted conformal classifier over calibration scores; rebuilt from ``to_dict`` for predict."""

    scores: np.ndarray  # calibration non-conformity scores, 1 - p(true label)
    labels: np.ndarray  # calibration true labels (0/1)
    mode: str  # mondrian | marginal

    @classmethod
    def fit(cls, prob_fake: np.ndarray, labels: np.ndarray, mode: str = "mondrian") -> ConformalSets:
        y = np.asarray(labels).astype(int)
        if mode not in ("mondrian", "marginal"):
            raise ValueError(f"conformal mode {mode!r}; allowed: 'mondrian', 'marginal'")
        if len(y) == 0 or (mode == "mondrian" and len(np.unique(y)) < 2):
            raise ValueError("conformal calibration needs calibration images (of both labels for mondrian)")
        return cls(hinge(two_class_probs(prob_fake), CLASSES, y), y, mode)

    def _classifier(self) -> ConformalClassifier:
        cc = ConformalClassifier()
        cc.fit(self.scores, bins=self.labels if self.mode == "mondrian" else None)
        return cc

    def p_values(self, prob_fake: np.ndarray) -> np.ndarray:
        """(n, 2) non-smoothed conformal p-values of real and fake."""
        alphas = hinge(two_class_probs(prob_fake))
        cc = self._classifier()
        if self.mode == "marginal":
            return np.asarray(cc.predict_p(alphas, smoothing=False))
        n = len(alphas)  # Mondrian by class: the p-value of label c is computed against class c's scores
        return np.stack([cc.predict_p(alphas, np.full(n, c), smoothing=False)[:, c] for c in CLASSES], axis=1).astype(
            np.float64
        )

    def predict(self, prob_fake: np.ndarray, alpha: float) -> np.ndarray:
        """(n, 2) bool: real / fake in each image's set at level ``alpha`` (alpha = 0: every label)."""
        return self.p_values(prob_fake) >= alpha

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scores": self.scores.tolist(), "labels": self.labels.tolist()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ConformalSets:
        return cls(np.asarray(raw["scores"], dtype=np.float64), np.asarray(raw["labels"], dtype=int), raw["mode"])


def set_names(sets: np.ndarray) -> list[str]:
    """'real', 'fake', 'real|fake' (abstain) or '' (empty) per row of a (n, 2) bool array."""
    return [SET_NAMES[(bool(r), bool(f))] for r, f in np.asarray(sets, dtype=bool)]


def set_metrics(sets: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Coverage (true label in the set), mean set size, abstain (both labels) and empty rates."""
    s = np.asarray(sets, dtype=bool)
    y = np.asarray(labels).astype(int)
    n = len(y)
    if n == 0:
        return {"n": 0}
    size = s.sum(1)
    return {
        "n": n,
        "coverage": float(s[np.arange(n), y].mean()),
        "mean_set_size": float(size.mean()),
        "abstain_rate": float((size == 2).mean()),
        "empty_rate": float((size == 0).mean()),
        "singleton_rate": float((size == 1).mean()),
    }
