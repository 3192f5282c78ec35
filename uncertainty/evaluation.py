"""The uncertainty part of the evaluate stage: methods, conformal sets, selective prediction, shift.

Methods (each a set of predictive samples, uncertainty.predictive):

- ``single``: the first ensemble member, dropout off (what a plain classifier gives);
- ``ensemble``: every member, dropout off (only when classifier.ensemble > 1);
- ``mc_dropout``: every member x ``evaluate.mc_dropout_passes`` dropout masks (when passes > 0 and the
  model has dropout).

The last one present is the *primary* method: its conformal sets are calibrated on the calibration split
and its figures fill results/eval/uncertainty.json at the top level and per generator, on the robustness
distortions and on the counterfactual probes. Generators in the test split that neither the training nor
the calibration split holds (split.protocol: leave_one_generator_out) are listed as ``unseen``: conformal
coverage is only guaranteed for images exchangeable with the calibration split, which they are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from classifier.metrics import binary_metrics
from uncertainty.conformal import ConformalSets, set_metrics
from uncertainty.predictive import Predictive, method_samples
from uncertainty.selective import selective_metrics

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Scoring:
    """What every predictive sample needs: the model, its temperature and input normalisation, the device."""

    model: torch.nn.Module
    temperature: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    batch_size: int
    seed: int

    def methods(self, images: np.ndarray, passes: int, transform: Transform | None = None) -> dict[str, Predictive]:
        """Every method's predictive samples (uncertainty.predictive.method_samples); the last is the primary."""
        samples = method_samples(
            self.model,
            images,
            self.temperature,
            passes,
            self.batch_size,
            self.device,
            self.mean,
            self.std,
            self.seed,
            transform,
            progress=False,
        )
        return {name: Predictive.from_samples(v) for name, v in samples.items()}

    def predictive(self, images: np.ndarray, passes: int, transform: Transform | None = None) -> Predictive:
        """The primary (richest) method's samples."""
        return list(self.methods(images, passes, transform).values())[-1]


def group_metrics(
    pred: Predictive, y: np.ndarray, threshold: float, sets: np.ndarray | None, bins: int
) -> dict[str, Any]:
    """Calibration, selective-prediction and conformal figures of one group of images."""
    y = np.asarray(y).astype(int)
    if len(y) == 0:
        return {"n": 0}
    wrong = (pred.prob >= threshold) != (y == 1)
    bm = binary_metrics(y, pred.prob, threshold, bins)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": bm["accuracy"],
        "roc_auc": bm["roc_auc"],
        "ece": bm["ece"],
        "nll": bm["log_loss"],
        "brier": bm["brier"],
        "mean_uncertainty": float(pred.total.mean()),
        "mean_aleatoric": float(pred.aleatoric.mean()),
        "mean_epistemic": float(pred.epistemic.mean()),
        "mean_uncertainty_right": float(pred.total[~wrong].mean()) if (~wrong).any() else None,
        "mean_uncertainty_wrong": float(pred.total[wrong].mean()) if wrong.any() else None,
        **selective_metrics(pred.total, wrong),
    }
    if sets is not None:
        out.update({k: v for k, v in set_metrics(sets, y).items() if k != "n"})
    return out


@dataclass
class UncertaintyResult:
    report: dict[str, Any]  # results/eval/uncertainty.json
    predictive: dict[str, Predictive]  # per method, test split
    sets: np.ndarray | None  # primary method's conformal sets of the test images
    conformal: ConformalSets | None


@dataclass(frozen=True)
class Settings:
    alpha: float
    mode: str  # evaluate.conformal
    passes: int
    bins: int
    threshold: float


def calibrate(
    preds: dict[str, Predictive] | None, labels: np.ndarray | None, s: Settings
) -> tuple[dict[str, ConformalSets], str]:
    """Per method, the conformal classifier of the calibration images (none, and why, when there are none)."""
    if preds is None or labels is None:
        return {}, "no calibration split (split.calib is 0, or the splits predate it): no prediction sets"
    try:
        return {name: ConformalSets.fit(pred.prob, labels, s.mode) for name, pred in preds.items()}, ""
    except ValueError as e:
        return {}, f"conformal calibration skipped: {e}"


def evaluate_uncertainty(
    scoring: Scoring,
    test_images: np.ndarray,
    y: np.ndarray,
    generators: np.ndarray,
    calib: tuple[np.ndarray, np.ndarray] | None,
    unseen: list[str],
    s: Settings,
    n_members: int,
) -> UncertaintyResult:
    """Every method on the test split; conformal sets, per-generator figures and the primary method's report."""
    t0 = time.perf_counter()
    preds = scoring.methods(test_images, s.passes)
    test_seconds = time.perf_counter() - t0
    primary = list(preds)[-1]
    calib_preds = scoring.methods(calib[0], s.passes) if calib is not None else None
    conformal, skipped = calibrate(calib_preds, calib[1] if calib is not None else None, s)
    by_method = {
        name: group_metrics(pred, y, s.threshold, _sets(conformal.get(name), pred, s.alpha), s.bins)
        for name, pred in preds.items()
    }
    pred = preds[primary]
    sets = _sets(conformal.get(primary), pred, s.alpha)
    gens = np.asarray(generators, dtype=str)
    per_generator = {
        g: group_metrics(pred.take(gens == g), y[gens == g], s.threshold, _rows(sets, gens == g), s.bins)
        for g in sorted(set(gens.tolist()))
    }
    report: dict[str, Any] = {
        "method": primary,
        "ensemble": n_members,
        "mc_dropout_passes": s.passes if primary == "mc_dropout" else 0,
        "alpha": s.alpha,
        "target_coverage": 1.0 - s.alpha,
        "conformal": s.mode,
        "conformal_skipped": skipped,
        "n_calib": 0 if calib is None else int(len(calib[1])),
        "uncertainty_score": "total predictive entropy H(mean p) in bits (higher = less certain)",
        "test_seconds": test_seconds,  # every method's samples of the test split (one backbone pass per member)
        **by_method[primary],
        "per_generator": per_generator,
        "methods": by_method,
        "exchangeability": exchangeability(per_generator, unseen, s.alpha),
    }
    return UncertaintyResult(report, preds, sets, conformal.get(primary))


def shift_metrics(
    scoring: Scoring,
    conformal: ConformalSets | None,
    s: Settings,
    images: np.ndarray,
    y: np.ndarray,
    transform: Transform | None = None,
) -> dict[str, Any]:
    """The primary method's figures on changed images (a robustness distortion or a counterfactual probe)."""
    pred = scoring.predictive(images, s.passes, transform)
    return group_metrics(pred, y, s.threshold, _sets(conformal, pred, s.alpha), s.bins)


def exchangeability(per_generator: dict[str, Any], unseen: list[str], alpha: float) -> dict[str, Any]:
    """Where the coverage guarantee does not hold: generators neither training nor calibration saw."""
    if not unseen:
        return {
            "unseen_generators": [],
            "note": f"every test generator is also in the calibration split: coverage >= {1 - alpha:.2f} is "
            "guaranteed on average over exchangeable draws",
        }
    cov = {g: per_generator.get(g, {}).get("coverage") for g in unseen}
    return {
        "unseen_generators": unseen,
        "coverage_unseen": cov,
        "note": "exchangeability breaks for generators that neither training nor calibration saw: "
        f"the {1 - alpha:.2f} coverage guarantee does not hold for them; measured "
        + ", ".join(f"{g}: {'n/a' if c is None else f'{c:.3f}'}" for g, c in cov.items()),
    }


def _sets(conformal: ConformalSets | None, pred: Predictive, alpha: float) -> np.ndarray | None:
    return None if conformal is None else conformal.predict(pred.prob, alpha)


def _rows(sets: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if sets is None else sets[mask]
