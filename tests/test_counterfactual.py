"""Counterfactual probes: a model that leans on colour is flagged by the grayscale probe, one that reads
content is not; probes re-run the whole crop path; flags follow the documented drops."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.params import FacesParams
from faces.crop import FaceCropper
from shortcuts.counterfactual import (
    FRAMING,
    ProbeInput,
    ProbeSettings,
    probe_metrics,
    run_probes,
    stretcher,
    tighter_framing,
)

SETTINGS = ProbeSettings(stretch=1.3, max_auc_drop=0.05, max_rate_drop=0.10, seed=0)


class CentreDetector:
    """Finds one 'face': the middle half of the image content on the letterbox canvas (black elsewhere)."""

    def detect(self, batch: np.ndarray) -> tuple[list[np.ndarray], list[list[float]]]:
        boxes, probs = [], []
        for canvas in batch:
            ys, xs = np.nonzero(canvas.max(axis=2) > 0)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            w, h = x2 - x1, y2 - y1
            boxes.append(np.array([[x1 + w / 4, y1 + h / 4, x2 - w / 4, y2 - h / 4]], dtype=np.float32))
            probs.append([0.99])
        return boxes, probs


def photo(fake: bool, rng: np.random.Generator) -> Image.Image:
    """Fakes carry a coarse checkerboard in the middle (content) and a red tint (a colour shortcut)."""
    a = rng.integers(90, 160, (160, 200, 3)).astype(np.float32)
    a += rng.normal(0, 4, a.shape)
    if fake:
        yy, xx = np.mgrid[40:120, 50:150]
        a[40:120, 50:150] += ((((yy // 12) + (xx // 12)) % 2) * 80 - 40)[..., None]
        a[..., 0] += 40
    return Image.fromarray(a.clip(1, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def probe_set(tmp_path_factory: pytest.TempPathFactory) -> ProbeInput:
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    labels = np.array([i % 2 for i in range(24)])
    paths = []
    for i, y in enumerate(labels):
        path = root / f"{i}.png"
        photo(bool(y), rng).save(path)
        paths.append(path)
    return ProbeInput(paths, labels, [str(i) for i in range(len(labels))], np.zeros(len(labels), bool))


def cropper() -> FaceCropper:
    params = dataclasses.replace(FacesParams(device="cpu", crop_size=48, detect_side=64), margin=0.5)
    return FaceCropper(params, device=torch.device("cpu"), detector=CentreDetector())


def redness(pixels: np.ndarray) -> np.ndarray:
    x = pixels.astype(np.float64)
    return 1 / (1 + np.exp(-(x[:, 0] - x[:, 1]).mean(axis=(1, 2)) / 10))


def checker_energy(pixels: np.ndarray) -> np.ndarray:
    grey = pixels.astype(np.float64).mean(axis=1)
    energy = np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    return energy / (energy.max() + 1e-9)


def clean_scores(inputs: ProbeInput, score: object) -> np.ndarray:
    from shortcuts.counterfactual import Probe, probe_crops

    identity = Probe("clean", "", lambda image, rng: image)
    pixels, rows = probe_crops(inputs, identity, cropper(), 48, seed=0)
    assert list(rows) == list(range(len(inputs.labels)))
    return score(pixels)  # type: ignore[operator]


def test_a_colour_shortcut_is_flagged_by_the_grayscale_probe(probe_set: ProbeInput) -> None:
    clean = clean_scores(probe_set, redness)
    result, _ = run_probes(probe_set, clean, redness, cropper(), 48, 0.5, SETTINGS)
    gray = result["probes"]["grayscale"]
    assert gray["clean_roc_auc"] == 1.0 and gray["roc_auc"] <= 0.6
    assert gray["flag"] and "grayscale" in result["flagged"]
    assert gray["n_scored"] == gray["n"] == len(probe_set.labels)


def test_a_content_model_passes_every_probe(probe_set: ProbeInput) -> None:
    clean = clean_scores(probe_set, checker_energy)
    threshold = float(np.median(clean))
    result, examples = run_probes(
        probe_set, clean, checker_energy, cropper(), 48, threshold, SETTINGS, keep_examples=[0, 1]
    )
    for name in ("grayscale", "jpeg_q75", "tighter_framing"):
        assert result["probes"][name]["roc_auc"] >= 0.95, name
        assert not result["probes"][name]["flag"], name
    assert set(examples) == {"tighter_framing", "grayscale", "stretch", "jpeg_q75"}
    assert examples["grayscale"][1].shape == (3, 48, 48)
    assert np.ptp(examples["grayscale"][1].astype(int), axis=0).max() <= 1  # the probe's crop is grey


def test_rows_made_grey_by_the_faces_stage_stay_grey_under_every_probe(probe_set: ProbeInput) -> None:
    matched = dataclasses.replace(probe_set, matched_gray=np.ones(len(probe_set.labels), bool))
    _, examples = run_probes(
        matched, np.zeros(len(matched.labels)), redness, cropper(), 48, 0.5, SETTINGS, keep_examples=[1]
    )
    for crops in examples.values():
        assert np.ptp(crops[1].astype(int), axis=0).max() <= 1


def test_probes_change_the_photo_as_documented() -> None:
    image = Image.new("RGB", (200, 100))
    framed = tighter_framing(image, random.Random(0))
    assert FRAMING[0] * 200 - 1 <= framed.size[0] <= FRAMING[1] * 200 + 1
    assert framed.size[0] / 200 == pytest.approx(framed.size[1] / 100, abs=0.02)
    assert stretcher(1.5)(image, random.Random(0)).size == (300, 100)


def test_flags_follow_the_auc_and_rate_drops() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    clean = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    same = probe_metrics(y, clean, clean, 0.5, 0.05, 0.10)
    assert same["auc_drop"] == 0 and not same["flag"]
    # ranking intact (AUC 1.0) but every fake below the threshold: TPR 1 -> 0 is flagged
    shifted = probe_metrics(y, clean, clean - 0.45, 0.5, 0.05, 0.10)
    assert shifted["roc_auc"] == 1.0 and shifted["tpr"] == 0.0 and shifted["flag"]
    # a missing probe file is left out, not an error
    inputs = ProbeInput([Path("/nonexistent.png")], np.array([1]), ["x"], np.zeros(1, bool))
    result, _ = run_probes(inputs, np.array([0.9]), redness, cropper(), 48, 0.5, SETTINGS)
    assert result["probes"]["grayscale"]["n_no_face"] == 1 and result["probes"]["grayscale"]["flag"]
