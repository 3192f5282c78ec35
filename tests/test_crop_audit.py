"""The crop-level shortcut audit: per-image features, train-fitted directions, warnings, missing columns,
and its wiring into the evaluate stage (metrics.json, figure, MLflow tag and metrics, printed warnings)."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from core.params import EvaluateParams
from shortcuts import audit as ca

SIDE = 32
Crop = Callable[[np.random.Generator, bool, int], np.ndarray]


def photo(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A smooth random colour texture with sensor-like noise: no flat border, no label cue."""
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, (side, side, 3)), (2, 2, 0)) * 160 + rng.uniform(70, 180, 3)
    return (smooth + rng.normal(0, 6, smooth.shape)).clip(0, 255).astype(np.uint8)


def plain(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
    return photo(rng)


def black_border(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
    img = photo(rng)
    if fake:  # the face square left the photo: black padding on one or two sides
        band = int(rng.integers(5, 10))
        img[:, :band] = 0
        if i % 2:
            img[:band] = 0
    return img


def some_reals_grey(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
    img = photo(rng)
    if not fake and i % 20 < 2:  # 10% of the reals are grayscale photos
        img[:] = img.mean(axis=2, keepdims=True).astype(np.uint8)
    return img


def split_frame(
    root: Path,
    name: str,
    n: int,
    crop: Crop,
    seed: int,
    generators: tuple[str, ...] = ("g1", "g2"),
    jpeg_raw: bool = True,
    paired: bool = False,
) -> pd.DataFrame:
    """``n`` rows, half real; crops in root/<name>/, raw files (the crop scaled x2) beside them.

    ``paired``: rows 2k (real) and 2k + 1 (fake) draw their crop from the same random state, so the
    pair's pictures match unless ``crop`` treats real and fake differently.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        fake = i % 2 == 1
        pixels = crop(np.random.default_rng([seed, i // 2]) if paired else rng, fake, i // 2)
        crop_path, raw_path = f"{name}/{i}.png", f"{name}/{i}_raw" + (".jpg" if jpeg_raw else ".png")
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / crop_path)
        Image.fromarray(pixels).resize((2 * SIDE, 2 * SIDE)).save(root / raw_path, quality=90)
        x1, y1, s = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(30, 40)
        rows.append(
            {
                "id": f"{name}{i}",
                "path": crop_path,
                "label": "fake" if fake else "real",
                "generator": generators[(i // 2) % len(generators)] if fake else "real",
                "raw_path": raw_path,
                "raw_width": 2 * SIDE,
                "raw_height": 2 * SIDE,
                "box_x1": x1,
                "box_y1": y1,
                "box_x2": x1 + s,
                "box_y2": y1 + s * rng.uniform(1.0, 1.3),
                "prob": 0.99,
                "crop_x1": 0,
                "crop_y1": 0,
                "crop_x2": 2 * SIDE,
                "crop_y2": 2 * SIDE,
                "margin_used": rng.uniform(0.2, 0.3),
                "grayscale": "no",
                "status": "ok",
                "reason": "",
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- per-image features


def test_border_feature_scores_padding_high_and_a_photo_border_low() -> None:
    rng = np.random.default_rng(0)
    img = photo(rng, 64)
    padded = img.copy()
    padded[:6], padded[-6:], padded[:, :6], padded[:, -6:] = 0, 0, 0, 0
    flat = img.copy()
    flat[:, :8] = (200, 180, 160)
    replicated = np.pad(img[6:-6, 6:-6], ((6, 6), (6, 6), (0, 0)), mode="edge")
    assert ca.border_constant(padded) == pytest.approx(1.0)
    assert ca.border_constant(replicated) == pytest.approx(1.0)
    assert 0.25 <= ca.border_constant(flat) <= 0.35  # one side of four (+ the corners of two others)
    assert ca.border_constant(img) < 0.1
    assert np.isnan(ca.border_constant(np.zeros((5, 5, 3), np.uint8)))


def test_jpeg_quality_inverts_the_ijg_scaling_and_blockiness_sees_compression(tmp_path: Path) -> None:
    img = photo(np.random.default_rng(1), 128)
    for q in (10, 35, 50, 75, 90, 95, 100):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q)
        with Image.open(buf) as im:
            assert ca.jpeg_quality(im.quantization[0]) == q
    Image.fromarray(img).save(tmp_path / "low.jpg", quality=15)
    Image.fromarray(img).save(tmp_path / "raw.png")
    low, png = ca.raw_features(tmp_path / "low.jpg", (3.5, 5, 120, 110)), ca.raw_features(tmp_path / "raw.png", None)
    assert low["jpeg_blockiness"] > 1.3 and png["jpeg_blockiness"] < 1.15
    assert (low["jpeg_quality"], png["jpeg_quality"]) == (15, 0)
    assert (png["decoded_width"], png["decoded_height"]) == (128, 128)
    luma = np.asarray(Image.open(tmp_path / "low.jpg").convert("L"))
    shifted = ca.blockiness(luma[:, 3:], x0=3)  # the grid stays anchored to the image, not to the region
    assert shifted == pytest.approx(ca.blockiness(luma[:, 3:], x0=0, phase=(5, 0)))
    assert shifted > 1.3 and ca.blockiness(luma[:, 3:], x0=0) < shifted
    assert ca.grid_phase(1, 100, 60) == (0, 0) and ca.grid_phase(3, 100, 60) == (4, 4)
    assert ca.grid_phase(6, 100, 60) == (4, 0) and ca.grid_phase(8, 100, 60) == (0, 4)


# ---------------------------------------------------------------- the audit


def test_black_border_on_fakes_is_found_and_warned(tmp_path: Path) -> None:
    audit = ca.crop_feature_audit(
        split_frame(tmp_path, "tr", 120, black_border, 0),
        split_frame(tmp_path, "te", 120, black_border, 1),
        root=tmp_path,
    )
    border = audit["features"]["border_constant"]
    assert border["test_auc"] >= 0.95 and border["direction"] == "higher = fake" and border["kind"] == "crop"
    assert set(border["per_generator"]) == {"g1", "g2"}
    assert all(g["test_auc"] >= 0.95 for g in border["per_generator"].values())
    assert any(w.startswith("border_constant (crop feature)") and "overall" in w for w in audit["warnings"])
    assert audit["n_warnings"] == len(audit["warnings"]) and audit["combined"]["test_auc"] >= 0.9
    assert audit["unreadable"] == 0 and audit["skipped"] == {}
    assert list(audit["features"]) == list(ca.FEATURES)  # every feature computed, in the documented order
    json.dumps(audit, allow_nan=False)  # JSON-ready: no NaN


def test_a_tenth_of_reals_grayscale_shows_in_the_grayscale_feature(tmp_path: Path) -> None:
    # real and fake of a pair share the photo, so the grey 10 % is the only difference
    audit = ca.crop_feature_audit(
        split_frame(tmp_path, "tr", 400, some_reals_grey, 2, paired=True),
        split_frame(tmp_path, "te", 400, some_reals_grey, 3, paired=True),
        root=tmp_path,
    )
    spread = audit["features"]["channel_spread"]
    # 0.5 + 0.10 / 2 when the other 90 % look alike: a weak but real cue, fitted the right way round
    assert spread["direction"] == "higher = fake" and 0.53 <= spread["test_auc"] <= 0.6
    assert audit["features"]["saturation"]["test_auc"] >= 0.53


def test_no_cue_no_warning(tmp_path: Path) -> None:
    audit = ca.crop_feature_audit(
        split_frame(tmp_path, "tr", 300, plain, 4), split_frame(tmp_path, "te", 300, plain, 5), root=tmp_path
    )
    assert audit["warnings"] == [] and audit["n_warnings"] == 0
    for name, f in audit["features"].items():
        if f["test_auc"] is not None:
            assert abs(f["test_auc"] - 0.5) < 0.12, name
    assert abs(audit["combined"]["test_auc"] - 0.5) < 0.12


def test_direction_is_fitted_on_train_and_applied_to_test(tmp_path: Path) -> None:
    def darker_fakes(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
        return (photo(rng) * (0.6 if fake else 1.0)).astype(np.uint8)

    def brighter_fakes(rng: np.random.Generator, fake: bool, i: int) -> np.ndarray:
        return (photo(rng) * (1.0 if fake else 0.6)).astype(np.uint8)

    train = split_frame(tmp_path, "tr", 80, darker_fakes, 6)
    same = ca.crop_feature_audit(train, split_frame(tmp_path, "te", 80, darker_fakes, 7), root=tmp_path)
    bright = same["features"]["brightness"]
    assert bright["direction"] == "lower = fake" and bright["train_auc"] > 0.9 and bright["test_auc"] > 0.9
    # the test split's own direction is never used: a cue that flips scores below 0.5 (and warns)
    flipped = ca.crop_feature_audit(train, split_frame(tmp_path, "te2", 80, brighter_fakes, 8), root=tmp_path)
    assert flipped["features"]["brightness"]["test_auc"] < 0.1
    assert any(w.startswith("brightness") and "flipped" in w for w in flipped["warnings"])


def test_missing_columns_and_unreadable_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    old = [
        "raw_width",
        "raw_height",
        "box_x1",
        "box_y1",
        "box_x2",
        "box_y2",
        "crop_x1",
        "crop_y1",
        "crop_x2",
        "crop_y2",
        "margin_used",
        "grayscale",
    ]
    train = split_frame(tmp_path, "tr", 40, plain, 9).drop(columns=old)
    test = split_frame(tmp_path, "te", 40, plain, 10, jpeg_raw=False).drop(columns=old)
    test.loc[0, "path"] = "te/missing.png"
    audit = ca.crop_feature_audit(train, test, root=tmp_path)
    assert set(audit["skipped"]) == {"face_rel_size", "face_side_px", "box_aspect", "margin_used"}
    assert "margin_used" in audit["skipped"]["margin_used"] and "box_x1" in audit["skipped"]["box_aspect"]
    assert any("whole raw image" in note for note in audit["notes"])
    assert audit["features"]["raw_short_side"]["imputed"] == {"train": 0, "test": 0}  # from the decoded files
    assert audit["unreadable"] == 1 and "missing.png" in audit["unreadable_examples"][0]
    assert audit["features"]["border_constant"]["imputed"]["test"] == 1
    # columns present but empty (an older split written with the new header) and no raw_path at all
    empty = split_frame(tmp_path, "tr", 40, plain, 11).assign(margin_used="")
    audit = ca.crop_feature_audit(empty.drop(columns=["raw_path"]), empty.drop(columns=["raw_path"]), root=tmp_path)
    assert "no value" in audit["skipped"]["margin_used"]
    assert {"jpeg_blockiness", "jpeg_quality"} <= set(audit["skipped"])
    json.dumps(audit, allow_nan=False)


# ---------------------------------------------------------------- the evaluate stage


def test_evaluate_writes_the_crop_audit_figure_tag_and_warnings(
    in_tmp_project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.classifier_fixtures import make_splits
    from tests.helpers import set_params
    from tests.test_evaluate import write_untrained_checkpoint

    make_splits(in_tmp_project, {"train": 24, "val": 8, "test": 24})
    write_untrained_checkpoint(in_tmp_project / "results/classifier/model.pt", threshold=0.5)
    extra = (
        {"counterfactual": False} if "counterfactual" in {f.name for f in dataclasses.fields(EvaluateParams)} else {}
    )
    set_params(in_tmp_project / "params.yaml", "evaluate", threads=1, audit_warn_auc=0.8, **extra)
    from stages import evaluate

    evaluate.main()
    metrics = json.loads((in_tmp_project / "results/eval/metrics.json").read_text())
    crop = metrics["shortcut_audit"]["crop_features"]
    assert metrics["shortcut_audit"]["metadata_roc_auc"] is not None  # the metadata audit is kept
    assert crop["warn_auc"] == 0.8 and crop["n_test"] == 24
    assert "margin_used" in crop["skipped"]  # the fixture's split has the column, but empty
    assert crop["warnings"], "the fixture's fakes are JPEG q75 and its reals q90: jpeg_quality must warn"
    assert (in_tmp_project / "results/eval/figures/shortcut_audit.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert all(f"evaluate: WARNING shortcut: {w}" in out for w in crop["warnings"])

    import mlflow

    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"])
    run = runs[runs["tags.stage"] == "evaluate"].iloc[0]
    assert run["tags.shortcut_warning"] == "; ".join(crop["warnings"])
    quality = crop["features"]["jpeg_quality"]["test_auc"]
    assert run["metrics.shortcut_audit.crop.jpeg_quality"] == pytest.approx(quality)
    assert run["metrics.shortcut_audit.n_warnings"] == len(crop["warnings"])
