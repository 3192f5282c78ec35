"""Crop-level shortcut audit: can one simple property of a face crop, or of where it came from, tell
real from fake on its own?

A detector that learns a shortcut (black padding, grayscale, image size, JPEG tables, framing) scores
near 1.0 and is worthless. The metadata audit (``classifier.evaluation.shortcut_audit``) reads raw-file
headers only; this one measures what the model sees. One value per split row:

crop — the stored face crop (``path``), i.e. the pixels the classifier is fed:
  border_constant  the outer frame's share of padding-like pixels. For every position along each of
                   the 4 sides, walk a BAND-px strip inward from the outermost pixel; r = how many
                   strip pixels in a row (the outermost included) stay within FLAT_TOL of the outermost
                   pixel in every channel (0..255). The value is the mean of (r - 1) / (BAND - 1): black
                   or flat-colour padding and replicated edges repeat the outer pixel inward (-> 1); a
                   photo's own border changes within a pixel or two (-> near 0; flat areas such as a
                   blown-out sky or a studio backdrop also score high).
  channel_spread   mean over pixels of max(R,G,B) - min(R,G,B), in 0..1 (0 = grayscale crop).
  saturation       mean HSV saturation (max - min) / max.
  brightness       mean luma (BT.601), 0..1.
  sharpness        variance of the Laplacian of luma (0..255 scale).
  jpeg_blockiness  measured on the RAW decoded image inside the cut square (``crop_*``; the whole raw
                   image when those columns are absent), since the stored crop is resized: mean squared
                   luma step across 8x8 block boundaries over that across the other neighbouring pixels
                   (both directions, +1 in numerator and denominator so flat areas give ~1). ~1 without
                   block artefacts, > 1 with. The grid follows the file's EXIF orientation.
source — the faces manifest and the raw file:
  face_rel_size    face box side (the larger of its width and height) / the raw image's shorter side.
  face_side_px     face box side in raw pixels.
  box_aspect       box height / width.
  margin_used      margin the cut square gives the face (faces manifest).
  raw_short_side   the raw image's shorter side (``raw_width``/``raw_height``, else the decoded file).
  raw_aspect       raw width / height.
  jpeg_quality     IJG quality 1..100 whose scaled standard luma table best matches the raw file's
                   (sorted values, so table order does not matter); 0 when the raw file is not JPEG.

Scoring (``crop_feature_audit``): each feature's single-feature ROC-AUC on the test split, with the
direction (higher or lower = fake) fitted on train, overall and per fake generator (its fakes vs all
reals; the generator's own train direction when train has it); plus a standardised logistic
regression on all features (fit on train, scored on test). Missing values are imputed with the train
median and counted. A test AUC >= warn_auc or <= 1 - warn_auc is a warning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.images import ImageDecodeError, decode_rgb
from core.schema import REAL_GENERATOR

BAND, FLAT_TOL, BLOCK = 4, 3, 8
MIN_PER_CLASS = 5  # fewer images of a class in a scope: no AUC
CROP, SOURCE = "crop", "source"
FEATURES: dict[str, str] = {  # name -> kind, in report order
    "border_constant": CROP,
    "channel_spread": CROP,
    "saturation": CROP,
    "brightness": CROP,
    "sharpness": CROP,
    "jpeg_blockiness": CROP,
    "face_rel_size": SOURCE,
    "face_side_px": SOURCE,
    "box_aspect": SOURCE,
    "margin_used": SOURCE,
    "raw_short_side": SOURCE,
    "raw_aspect": SOURCE,
    "jpeg_quality": SOURCE,
}
BOX, CUT = ["box_x1", "box_y1", "box_x2", "box_y2"], ["crop_x1", "crop_y1", "crop_x2", "crop_y2"]
N_WARNINGS_METRIC = "shortcut_audit.n_warnings"
# the IJG (libjpeg) standard luminance table; quality q scales it by 5000/q (q < 50) or 200 - 2q
# fmt: off
_LUMA = np.array([
     16,  11,  10,  16,  24,  40,  51,  61,
     12,  12,  14,  19,  26,  58,  60,  55,
     14,  13,  16,  24,  40,  57,  69,  56,
     14,  17,  22,  29,  51,  87,  80,  62,
     18,  22,  37,  56,  68, 109, 103,  77,
     24,  35,  55,  64,  81, 104, 113,  92,
     49,  64,  78,  87, 103, 121, 120, 101,
     72,  92,  95,  98, 112, 100, 103,  99,
], dtype=np.int64)
# fmt: on
_Q = np.arange(1, 101)
_IJG_SORTED = np.sort(
    np.clip((_LUMA[None] * np.where(_Q < 50, 5000 // _Q, 200 - 2 * _Q)[:, None] + 50) // 100, 1, 255), axis=1
)


# ---------------------------------------------------------------- per-image features


def border_constant(rgb: np.ndarray, band: int = BAND, tol: int = FLAT_TOL) -> float:
    """Padding-like share of the crop's outer ``band`` px (see the module docstring); NaN if too small."""
    h, w = rgb.shape[:2]
    if h < 2 * band or w < 2 * band:
        return math.nan
    a = rgb.astype(np.int16)
    sides = [a[:band], a[::-1][:band], a[:, :band].transpose(1, 0, 2), a[:, ::-1][:, :band].transpose(1, 0, 2)]
    strips = np.concatenate(sides, axis=1)  # (depth, position, channel), depth 0 = outermost
    same = np.abs(strips - strips[:1]).max(axis=2) <= tol
    run = np.cumprod(same, axis=0).sum(axis=0)  # 1..band
    return float(((run - 1) / (band - 1)).mean())


def pixel_features(rgb: np.ndarray) -> dict[str, float]:
    """The crop features of one (H, W, 3) uint8 crop, except jpeg_blockiness (raw file)."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))  # planes: reducing a 3-wide axis is slow
    hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    saturation = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return {
        "border_constant": border_constant(rgb),
        "channel_spread": float((hi - lo).mean() / 255),
        "saturation": float(saturation.mean()),
        "brightness": float(luma.mean() / 255),
        "sharpness": float(ndimage.laplace(luma).var()),
    }


def grid_phase(orientation: int, width: int, height: int) -> tuple[int, int]:
    """(x, y) offset of the JPEG 8x8 grid in the EXIF-transposed image (``decode_rgb``'s frame) of that size."""
    return (width % BLOCK if orientation in (2, 3, 6, 7) else 0, height % BLOCK if orientation in (3, 4, 7, 8) else 0)


def blockiness(luma: np.ndarray, x0: int = 0, y0: int = 0, phase: tuple[int, int] = (0, 0)) -> float:
    """Block-boundary / in-block mean squared luma step of a region whose top-left is (x0, y0) in the image."""
    h, w = luma.shape
    if h < 2 * BLOCK or w < 2 * BLOCK:
        return math.nan
    y = luma.astype(np.float32)
    dx, dy = np.diff(y, axis=1) ** 2, np.diff(y, axis=0) ** 2  # step into column / row index + 1
    on_x = (x0 + 1 + np.arange(w - 1) - phase[0]) % BLOCK == 0
    on_y = (y0 + 1 + np.arange(h - 1) - phase[1]) % BLOCK == 0
    on = np.concatenate([dx[:, on_x].ravel(), dy[on_y].ravel()])
    off = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y].ravel()])
    return float((on.mean() + 1.0) / (off.mean() + 1.0))


def jpeg_quality(table: Sequence[int]) -> float:
    """IJG quality whose scaled standard luma table is closest to ``table`` (64 values, any order)."""
    values = np.sort(np.asarray(table, dtype=np.int64))
    if values.size != 64:
        return math.nan
    return float(_Q[int(np.argmin(np.abs(_IJG_SORTED - values).sum(axis=1)))])


def raw_features(path: Path, cut: tuple[float, float, float, float] | None) -> dict[str, float]:
    """jpeg_blockiness inside ``cut`` (raw pixels; None = whole image), jpeg_quality and the decoded size."""
    with Image.open(path) as im:
        tables = (getattr(im, "quantization", None) or {}) if im.format == "JPEG" else None
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    image = decode_rgb(path).image
    w, h = image.size
    x1, y1, x2, y2 = (
        (0, 0, w, h)
        if cut is None
        else (
            max(0, math.floor(cut[0])),
            max(0, math.floor(cut[1])),
            min(w, math.ceil(cut[2])),
            min(h, math.ceil(cut[3])),
        )
    )
    region = np.asarray(image.crop((x1, y1, x2, y2)).convert("L")) if x2 > x1 and y2 > y1 else np.zeros((0, 0))
    quality = 0.0 if tables is None else (jpeg_quality(tables[0]) if 0 in tables else math.nan)
    return {
        "jpeg_blockiness": blockiness(region, x1, y1, grid_phase(orientation, w, h)),
        "jpeg_quality": quality,
        "decoded_width": float(w),
        "decoded_height": float(h),
    }


# ---------------------------------------------------------------- per-split table


@dataclass
class FeatureTable:
    values: pd.DataFrame  # one column per computed feature, NaN where unknown
    labels: np.ndarray  # 1 = fake
    generators: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)  # feature -> why it is not computed
    unreadable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _numeric(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame | None:
    if any(c not in frame.columns for c in columns):
        return None
    return frame[list(columns)].apply(pd.to_numeric, errors="coerce").astype(float)


def _row(
    root: Path, path: str, raw_path: str, cut: tuple[float, float, float, float] | None
) -> tuple[dict[str, float], list[str]]:
    values: dict[str, float] = {}
    errors: list[str] = []
    try:
        values.update(pixel_features(np.asarray(decode_rgb(root / path).image)))
    except (ImageDecodeError, OSError, Image.DecompressionBombError) as e:
        errors.append(f"crop {path or '(empty path)'}: {e}")
    if raw_path:
        try:
            values.update(raw_features(root / raw_path, cut))
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # ImageDecodeError is a ValueError
            errors.append(f"raw {raw_path}: {type(e).__name__}: {e}")
    return values, errors


def feature_table(frame: pd.DataFrame, root: Path = Path("."), workers: int | None = None) -> FeatureTable:
    """Every feature of every row of a split frame (decoding in a few threads: PIL releases the GIL)."""
    frame = frame.reset_index(drop=True)
    cuts = _numeric(frame, CUT)
    notes = [] if cuts is not None else ["no crop_* columns: jpeg_blockiness is measured on the whole raw image"]
    raw_paths = frame["raw_path"].astype(str).tolist() if "raw_path" in frame.columns else [""] * len(frame)
    boxes = np.full((len(frame), 4), np.nan) if cuts is None else cuts.to_numpy()
    jobs = [
        (str(p), r, None if np.isnan(box).any() else (box[0], box[1], box[2], box[3]))
        for p, r, box in zip(frame["path"], raw_paths, boxes)
    ]
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        results = list(pool.map(lambda job: _row(root, *job), jobs))
    pixels = pd.DataFrame([values for values, _ in results], index=frame.index, dtype=float)
    table = FeatureTable(
        pd.DataFrame(index=frame.index),
        (frame["label"] == "fake").to_numpy().astype(int),
        frame["generator"].astype(str).to_numpy(),
        notes=notes,
        unreadable=[e for _, errors in results for e in errors],
    )
    for name, kind in FEATURES.items():
        if kind == CROP:
            table.values[name] = pixels.get(name, pd.Series(math.nan, index=frame.index))
    if "raw_path" not in frame.columns:
        table.skipped["jpeg_blockiness"] = table.skipped["jpeg_quality"] = "no raw_path column"
    _source_features(frame, pixels, table)
    return table


def _source_features(frame: pd.DataFrame, pixels: pd.DataFrame, table: FeatureTable) -> None:
    nan = pd.Series(math.nan, index=frame.index)
    size = _numeric(frame, ["raw_width", "raw_height"])
    rw = (size["raw_width"] if size is not None else nan).fillna(pixels.get("decoded_width", nan))
    rh = (size["raw_height"] if size is not None else nan).fillna(pixels.get("decoded_height", nan))
    short = np.minimum(rw, rh).where(lambda s: s > 0)
    box = _numeric(frame, BOX)
    if box is None:
        for name in ("face_rel_size", "face_side_px", "box_aspect"):
            table.skipped[name] = "no box_x1..box_y2 columns"
    else:
        bw = (box["box_x2"] - box["box_x1"]).where(lambda s: s > 0)
        bh = (box["box_y2"] - box["box_y1"]).where(lambda s: s > 0)
        side = np.maximum(bw, bh)
        table.values["face_rel_size"], table.values["face_side_px"], table.values["box_aspect"] = (
            side / short,
            side,
            bh / bw,
        )
    margin = _numeric(frame, ["margin_used"])
    if margin is None:
        table.skipped["margin_used"] = "no margin_used column (split made before the crop-policy columns)"
    else:
        table.values["margin_used"] = margin["margin_used"]
    table.values["raw_short_side"], table.values["raw_aspect"] = short, rw / rh.where(rh > 0)
    table.values["jpeg_quality"] = pixels.get("jpeg_quality", nan)
    table.values = table.values[[f for f in FEATURES if f in table.values.columns and f not in table.skipped]]


# ---------------------------------------------------------------- scoring


def _auc(y: np.ndarray, x: np.ndarray) -> float | None:
    if min(int((y == 1).sum()), int((y == 0).sum())) < MIN_PER_CLASS:
        return None
    return float(roc_auc_score(y, x))


def _direction(auc: float | None) -> int:
    return -1 if auc is not None and auc < 0.5 else 1


def _generators(y: np.ndarray, gens: np.ndarray) -> list[str]:
    return sorted(set(gens[y == 1].tolist()) - {REAL_GENERATOR})


def score_feature(x_tr: np.ndarray, tr: FeatureTable, x_te: np.ndarray, te: FeatureTable) -> dict[str, Any]:
    """Train-fitted direction, test AUC overall and per generator (strongest generator named)."""
    a_tr = _auc(tr.labels, x_tr)
    sign = _direction(a_tr)
    out: dict[str, Any] = {
        "train_auc": None if a_tr is None else max(a_tr, 1 - a_tr),
        "direction": "higher = fake" if sign > 0 else "lower = fake",
        "test_auc": _auc(te.labels, sign * x_te),
        "per_generator": {},
    }
    for g in _generators(te.labels, te.generators):
        mtr, mte = (tr.labels == 0) | (tr.generators == g), (te.labels == 0) | (te.generators == g)
        g_tr = _auc(tr.labels[mtr], x_tr[mtr]) if (tr.generators == g).any() else None
        s = sign if g_tr is None else _direction(g_tr)
        out["per_generator"][g] = {
            "test_auc": _auc(te.labels[mte], s * x_te[mte]),
            "direction_from": ("generator" if g_tr is not None else "overall"),
            "n_fake": int((te.generators[mte] == g).sum()),
        }
    scored = [(g, v["test_auc"]) for g, v in out["per_generator"].items() if v["test_auc"] is not None]
    strongest = max(scored, key=lambda gv: abs(gv[1] - 0.5), default=None)
    out["strongest_generator"] = None if strongest is None else {"name": strongest[0], "test_auc": strongest[1]}
    return out


def _combined(x_tr: np.ndarray, tr: FeatureTable, x_te: np.ndarray, te: FeatureTable) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "StandardScaler + LogisticRegression on every computed feature",
        "test_auc": None,
        "per_generator": {},
    }
    if x_tr.shape[1] == 0 or len(set(tr.labels.tolist())) < 2:
        return {**out, "skipped": "needs features and both classes in train"}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, tr.labels)
    p_tr, p_te = clf.predict_proba(x_tr)[:, 1], clf.predict_proba(x_te)[:, 1]
    out.update(train_auc=_auc(tr.labels, p_tr), test_auc=_auc(te.labels, p_te), skipped="")
    for g in _generators(te.labels, te.generators):
        m = (te.labels == 0) | (te.generators == g)
        out["per_generator"][g] = {"test_auc": _auc(te.labels[m], p_te[m])}
    return out


def _flagged(auc: float | None, warn_auc: float) -> bool:
    return auc is not None and (auc >= warn_auc or auc <= 1 - warn_auc)


def warning_lines(features: dict[str, dict[str, Any]], combined: dict[str, Any], warn_auc: float) -> list[str]:
    """One readable line per (feature, scope) whose test AUC is beyond the warning bounds."""
    lines = []
    named = [(f"{name} ({f['kind']} feature) alone", f) for name, f in features.items()]
    for what, f in [*named, ("all features together (logistic regression)", combined)]:
        scopes = [("overall", f.get("test_auc"))] + [
            (f"for {g} vs real", v.get("test_auc")) for g, v in f.get("per_generator", {}).items()
        ]
        for scope, auc in scopes:
            if auc is not None and _flagged(auc, warn_auc):
                flip = " (direction flipped between train and test)" if auc < 0.5 else ""
                lines.append(f"{what} separates real from fake: test ROC-AUC {auc:.3f} {scope}{flip}")
    return lines


def crop_feature_audit(
    train_frame: pd.DataFrame, test_frame: pd.DataFrame, root: Path = Path("."), warn_auc: float = 0.75
) -> dict[str, Any]:
    """The audit as a JSON-ready dict (``metrics["shortcut_audit"]["crop_features"]``)."""
    tr, te = feature_table(train_frame, root), feature_table(test_frame, root)
    skipped = {**tr.skipped, **te.skipped}
    for name in tr.values.columns:
        for split, t in (("train", tr), ("test", te)):
            if name not in skipped and (name not in t.values or t.values[name].isna().all()):
                skipped[name] = f"no value in any {split} row (column empty or files unreadable)"
    used = [f for f in FEATURES if f in tr.values.columns and f in te.values.columns and f not in skipped]
    medians = tr.values[used].median()
    x_tr, x_te = tr.values[used].fillna(medians).to_numpy(), te.values[used].fillna(medians).to_numpy()
    features: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(used):
        features[name] = {
            "kind": FEATURES[name],
            **score_feature(x_tr[:, k], tr, x_te[:, k], te),
            "imputed": {"train": int(tr.values[name].isna().sum()), "test": int(te.values[name].isna().sum())},
            "imputed_with": float(medians[name]),
        }
    combined = {**_combined(x_tr, tr, x_te, te), "features": used}
    warnings = warning_lines(features, combined, warn_auc)
    unreadable = tr.unreadable + te.unreadable
    return {
        "warn_auc": warn_auc,
        "n_train": len(tr.labels),
        "n_test": len(te.labels),
        "features": features,
        "skipped": {f: skipped[f] for f in FEATURES if f in skipped},
        "combined": combined,
        "warnings": warnings,
        "n_warnings": len(warnings),
        "unreadable": len(unreadable),
        "unreadable_examples": unreadable[:5],
        "notes": tr.notes + [n for n in te.notes if n not in tr.notes],
    }


def audit_metrics(audit: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: ``shortcut_audit.crop.<feature>`` = test AUC overall, the combined model, the warning count."""
    out = {
        f"shortcut_audit.crop.{name}": f["test_auc"]
        for name, f in audit["features"].items()
        if f["test_auc"] is not None
    }
    if audit["combined"].get("test_auc") is not None:
        out["shortcut_audit.crop.all_features"] = audit["combined"]["test_auc"]
    return {**out, N_WARNINGS_METRIC: float(audit["n_warnings"])}
