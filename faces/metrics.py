"""Counts and rates of the faces stage (data/faces/metrics.json): overall, per label, per generator, and the views."""

from __future__ import annotations

from typing import Any

import pandas as pd

from core.schema import FACE_KEPT


def _rate(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def group_metrics(faces: pd.DataFrame, raw_skipped: int) -> dict[str, Any]:
    n = {s: int((faces["status"] == s).sum()) for s in ("ok", "center", "dropped", "error")}
    inputs = len(faces)
    kept = n["ok"] + n["center"]
    decoded = inputs - n["error"]
    probs = pd.to_numeric(faces.loc[faces["status"] != "error", "prob"], errors="coerce").fillna(0.0)
    detected = pd.to_numeric(faces.loc[faces["status"] == "ok", "prob"], errors="coerce")
    return {
        "raw_skipped": raw_skipped,
        "inputs": inputs,
        **n,
        "kept": kept,
        "drop_rate": _rate(inputs - kept, inputs),  # inputs not in the output
        "loss_rate_from_raw": _rate(inputs - kept + raw_skipped, inputs + raw_skipped),
        "detection_rate": _rate(n["ok"], decoded),  # decoded images with a face >= min_prob
        "mean_prob": round(float(probs.mean()), 6) if len(probs) else None,  # best face per image, 0 if none
        "mean_prob_detected": round(float(detected.mean()), 6) if len(detected) else None,
        # share of kept crops that are grey: in the photo itself, and after faces.grayscale
        "grayscale_raw_share": _rate(int((faces["grayscale"] == "raw").sum()), kept),
        "grayscale_share": _rate(int(faces["grayscale"].isin(["raw", "matched"]).sum()), kept),
        "margin_used_mean": _mean(faces.loc[faces["status"].isin(FACE_KEPT), "margin_used"]),
    }


def _mean(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return round(float(v.mean()), 6) if len(v) else None


def view_metrics(views: pd.DataFrame) -> dict[str, Any]:
    """How many training views exist and how many found their face."""
    kept = int(views["status"].isin(FACE_KEPT).sum())
    return {
        "views": len(views),
        "kept": kept,
        "kept_rate": _rate(kept, len(views)),
        "margin_used_mean": _mean(views.loc[views["status"].isin(FACE_KEPT), "margin_used"]),
    }


def face_metrics(raw: pd.DataFrame, faces: pd.DataFrame) -> dict[str, Any]:
    """Counts and rates overall, per label and per generator (raw skips counted as such)."""
    skipped = raw[raw["status"] == "skipped"]

    def by(column: str) -> dict[str, Any]:
        values = sorted(set(faces[column]) | set(skipped[column]))
        return {v: group_metrics(faces[faces[column] == v], int((skipped[column] == v).sum())) for v in values}

    return {"overall": group_metrics(faces, len(skipped)), "label": by("label"), "generator": by("generator")}
