"""Temperature scaling that cannot collapse, and a threshold that is not degenerate on separable validation.

On hardfakevsreal the validation logits were separable: the NLL kept falling towards T -> 0, the fit
stopped at the bound 0.05, every probability became 0 or 1 (test Brier 1e-32) and the threshold was
0.4999999999994 (the midpoint of 1e-30 and 1 - 1e-30).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from classifier.metrics import (
    TEMPERATURE_BOUNDS,
    calibrated,
    choose_threshold,
    choose_threshold_from_logits,
    fit_temperature,
    fit_temperature_with_reason,
    negative_log_likelihood,
    separable,
    sigmoid,
)


def separable_validation(rng: np.random.Generator, n: int = 67) -> tuple[np.ndarray, np.ndarray]:
    """Like hardfakevsreal's 134 validation faces: reals around -6, fakes around +9, no overlap."""
    y = np.r_[np.zeros(n), np.ones(n)]
    z = np.r_[rng.normal(-6.0, 1.5, n).clip(max=-1.0), rng.normal(9.0, 2.0, n).clip(min=2.0)]
    return z, y


def test_separable_validation_falls_back_to_one_and_says_so() -> None:
    z, y = separable_validation(np.random.default_rng(0))
    assert separable(z, y)
    # what the old unconstrained fit did: the NLL is lowest at the lower bound
    assert negative_log_likelihood(z, y, TEMPERATURE_BOUNDS[0]) < negative_log_likelihood(z, y, 1.0)
    fit = fit_temperature_with_reason(z, y)
    assert fit.temperature >= 1.0
    assert "separable" in fit.reason and not fit.fitted
    assert fit_temperature(z, y) == fit.temperature
    p = calibrated(z, fit.temperature)
    assert not np.all((p == 0) | (p == 1))
    assert 1e-6 < p.min() and p.max() < 1 - 1e-6  # no probability saturated


def test_separable_validation_threshold_sits_between_the_classes_with_margin() -> None:
    z, y = separable_validation(np.random.default_rng(1))
    fit = fit_temperature_with_reason(z, y)
    p = calibrated(z, fit.temperature)
    lowest_fake, highest_real = p[y == 1].min(), p[y == 0].max()
    for rule in ("youden", "f1", "eer"):
        thr = choose_threshold_from_logits(y, z, fit.temperature, rule)
        assert highest_real < thr < lowest_fake, rule
        # the logit midpoint: as far (in logits) from the highest real as from the lowest fake
        zt = np.log(thr) - np.log1p(-thr)
        gap_real = zt - z[y == 0].max() / fit.temperature
        gap_fake = z[y == 1].min() / fit.temperature - zt
        assert gap_real == pytest.approx(gap_fake, rel=1e-6) and gap_real > 0.5
        assert thr != pytest.approx(0.5, abs=1e-3)  # not the degenerate midpoint of 0 and 1
        # the probability version picks the same cut, midpoint in logit space too
        assert choose_threshold(y, p, rule) == pytest.approx(thr, abs=1e-9)


def test_logit_midpoint_is_meaningful_even_when_probabilities_saturate() -> None:
    """Logits far apart at T = 0.05 (the old collapse): the old probability midpoint was 0.5000000..."""
    y = np.array([0, 0, 0, 1, 1, 1])
    z = np.array([-4.0, -3.0, -2.0, 6.0, 8.0, 9.0])
    thr = choose_threshold_from_logits(y, z, 0.05, "youden")
    assert thr == pytest.approx(float(sigmoid((6.0 - 2.0) / 2 / 0.05)))
    assert thr > 0.999  # the midpoint logit (2 / 0.05 = 40) maps back near 1, not to 0.5


@pytest.mark.parametrize("t_true", [2.0, 0.5])
def test_overlapping_validation_recovers_a_known_temperature(t_true: float) -> None:
    rng = np.random.default_rng(int(t_true * 10))
    n = 40_000
    z = rng.normal(0.0, 3.0, n)
    y = (rng.random(n) < sigmoid(z / t_true)).astype(float)
    assert not separable(z, y)
    fit = fit_temperature_with_reason(z, y)
    assert fit.reason == "fitted"
    assert fit.temperature == pytest.approx(t_true, rel=0.10)


def test_prior_keeps_a_near_separable_fit_away_from_the_bound() -> None:
    """One overlapping pair among well separated logits: the fit is finite and says 'fitted' or falls back."""
    z, y = separable_validation(np.random.default_rng(2))
    z = np.r_[z, 3.0, -3.0]
    y = np.r_[y, 0.0, 1.0]  # a real scored +3 and a fake scored -3
    assert not separable(z, y)
    fit = fit_temperature_with_reason(z, y)
    assert fit.temperature > TEMPERATURE_BOUNDS[0] * 1.5
    assert fit.fitted or fit.temperature == 1.0


def test_unlike_labels_needed() -> None:
    with pytest.raises(ValueError, match="both real and fake"):
        fit_temperature_with_reason(np.array([1.0, 2.0]), np.array([1, 1]))


def test_train_classifier_records_the_temperature_reason(in_tmp_project, one_torch_thread) -> None:
    import json

    import mlflow

    from classifier.checkpoint import load_checkpoint
    from stages import train_classifier
    from tests.classifier_fixtures import make_splits, tiny_classifier_params
    from tests.helpers import set_params

    make_splits(in_tmp_project, {"train": 32, "val": 16, "test": 8})
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=1))
    train_classifier.main()
    out = in_tmp_project / "results/classifier"
    summary = json.loads((out / "metrics.json").read_text())
    reason = summary["temperature_reason"]
    assert reason == "fitted" or "fell back to 1.0" in reason or "upper bound" in reason
    assert 0.0 < summary["threshold"] < 1.0
    assert load_checkpoint(out / "model.pt").info["temperature_reason"] == reason
    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"])
    assert list(runs["tags.classifier.temperature_reason"]) == [reason]


@pytest.mark.parametrize("bins", [5, 15, 40])
@pytest.mark.parametrize("case", ["calibrated", "overconfident", "skewed"])
def test_expected_calibration_error_matches_torchmetrics(bins: int, case: str) -> None:
    """classifier.metrics keeps its own ECE (it is the reliability table's, the one evaluate plots) because it
    equals torchmetrics' binary L1 calibration error: equal-width bins of the probability of fake, each bin's
    |mean probability - fraction fake| weighted by its share of the images. (One difference at the edge: a
    probability of exactly 1.0 falls in the last bin here, in a bin of its own in torchmetrics.)"""
    from torchmetrics.functional.classification import binary_calibration_error

    from classifier.metrics import expected_calibration_error

    rng = np.random.default_rng(bins)
    p = {"calibrated": rng.uniform(0, 1, 500), "overconfident": rng.beta(0.3, 0.3, 500), "skewed": rng.beta(5, 1, 500)}[
        case
    ].clip(1e-9, 1 - 1e-9)
    y = (rng.uniform(0, 1, 500) < (p if case == "calibrated" else np.sqrt(p))).astype(np.float64)
    ours = expected_calibration_error(y, p, bins)
    reference = float(binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y).long(), n_bins=bins, norm="l1"))
    assert ours == pytest.approx(reference, abs=1e-9)
