"""Counterfactual probes: does the classifier still work when a non-content cue changes?

Each probe changes every raw test image in a way that keeps the face but would break a shortcut,
then sends it through the WHOLE crop path again (detection, face square, resize, the stored
encoding, the grayscale policy's choice for that row, the network input size) and scores it with
the checkpoint's temperature and validation threshold:

* ``tighter_framing``: the central 60-80% of each side of the raw photo (drawn per image), before
  detection: the face fills more of the frame, no pixel is resampled;
* ``grayscale``: the photo's luma only;
* ``stretch``: the photo resized to ``stretch`` times its width (faces look wider, as DFF's
  inpainting fakes do);
* ``jpeg_q75``: the photo re-saved as JPEG at quality 75 (DFF's fakes were saved that way).

The probe's ROC-AUC, TPR and TNR are compared with the clean crops' on the same rows (a row whose
face is no longer found under a probe is left out of both and counted); a probe is flagged when
its ROC-AUC drops by more than ``max_auc_drop`` or its TPR or TNR by more than ``max_rate_drop``.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from core.images import ImageDecodeError, decode_rgb, square_pixels
from faces.crop import FaceCropper
from faces.grayscale import gray_copy

Change = Callable[[Image.Image, random.Random], Image.Image]
Scorer = Callable[[np.ndarray], np.ndarray]  # (N, 3, S, S) uint8 -> calibrated probability of fake
FRAMING = (0.6, 0.8)
JPEG_QUALITY = 75


@dataclass(frozen=True)
class Probe:
    name: str
    description: str
    change: Change


def tighter_framing(image: Image.Image, rng: random.Random) -> Image.Image:
    keep = rng.uniform(*FRAMING)
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def grayscale(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.convert("L").convert("RGB")


def stretcher(factor: float) -> Change:
    def stretch(image: Image.Image, rng: random.Random) -> Image.Image:
        w, h = image.size
        return image.resize((max(1, round(w * factor)), h), Image.Resampling.BICUBIC)

    return stretch


def jpeg75(image: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return decode_rgb(buf.getvalue()).image


def probes(stretch: float) -> list[Probe]:
    return [
        Probe(
            "tighter_framing",
            f"central {FRAMING[0]:.0%}-{FRAMING[1]:.0%} of each side of the raw photo",
            tighter_framing,
        ),
        Probe("grayscale", "the raw photo's luma only", grayscale),
        Probe("stretch", f"the raw photo stretched to {stretch:g}x its width", stretcher(stretch)),
        Probe("jpeg_q75", f"the raw photo re-saved as JPEG quality {JPEG_QUALITY}", jpeg75),
    ]


@dataclass(frozen=True)
class ProbeInput:
    """What a probe needs of the test split: raw files, labels, and the grayscale policy's choice."""

    raw_paths: list[Path]
    labels: np.ndarray  # 1 = fake
    ids: list[str]
    matched_gray: np.ndarray  # True where the faces stage made the clean crop grey (faces.grayscale: match)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, labels: np.ndarray, root: Path = Path(".")) -> ProbeInput:
        gray = (
            frame["grayscale"].astype(str).eq("matched").to_numpy()
            if "grayscale" in frame
            else np.zeros(len(frame), bool)
        )
        return cls([root / p for p in frame["raw_path"]], np.asarray(labels), frame["id"].astype(str).tolist(), gray)


def probe_crops(
    inputs: ProbeInput, probe: Probe, cropper: FaceCropper, image_size: int, seed: int, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of the rows whose face was found, their row indices) under one probe."""
    pixels: list[np.ndarray] = []
    found: list[int] = []
    p = cropper.params
    for start in tqdm(
        range(0, len(inputs.raw_paths), batch), desc=probe.name, unit="batch", leave=False, mininterval=1.0
    ):
        rows, images = [], []
        for i in range(start, min(start + batch, len(inputs.raw_paths))):
            try:
                image = decode_rgb(inputs.raw_paths[i]).image
            except (ImageDecodeError, OSError):
                continue
            rows.append(i)
            images.append(probe.change(image, random.Random(f"{seed}/{probe.name}/{inputs.ids[i]}")))
        for i, result in zip(rows, cropper.crop(images)):
            if result.image is None:
                continue
            stored = cropper.encode(result.image)
            if inputs.matched_gray[i]:
                stored = gray_copy(stored, p.encoding, p.jpeg_quality)
            pixels.append(square_pixels(decode_rgb(stored).image, image_size))
            found.append(i)
    empty = np.empty((0, 3, image_size, image_size), np.uint8)
    return (np.stack(pixels) if pixels else empty), np.asarray(found, dtype=int)


def _rates(y: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float | None]:
    pred = prob >= threshold
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, prob)) if both else None,
        "tpr": float(pred[y == 1].mean()) if (y == 1).any() else None,
        "tnr": float((~pred[y == 0]).mean()) if (y == 0).any() else None,
    }


def _drop(clean: float | None, probe: float | None) -> float | None:
    return None if clean is None or probe is None else clean - probe


def probe_metrics(
    y: np.ndarray, clean: np.ndarray, changed: np.ndarray, threshold: float, max_auc_drop: float, max_rate_drop: float
) -> dict[str, Any]:
    """Probe vs clean rates on the same rows, and whether the probe breaks the model."""
    c, q = _rates(y, clean, threshold), _rates(y, changed, threshold)
    drops = {k: _drop(c[k], q[k]) for k in ("roc_auc", "tpr", "tnr")}
    flag = (drops["roc_auc"] or 0.0) > max_auc_drop or max(drops["tpr"] or 0.0, drops["tnr"] or 0.0) > max_rate_drop
    return {
        **q,
        **{f"clean_{k}": v for k, v in c.items()},
        "auc_drop": drops["roc_auc"],
        "tpr_drop": drops["tpr"],
        "tnr_drop": drops["tnr"],
        "flag": bool(flag),
    }


@dataclass(frozen=True)
class ProbeSettings:
    stretch: float
    max_auc_drop: float
    max_rate_drop: float
    seed: int


def run_probes(
    inputs: ProbeInput,
    clean_prob: np.ndarray,
    score: Scorer,
    cropper: FaceCropper,
    image_size: int,
    threshold: float,
    settings: ProbeSettings,
    keep_examples: Sequence[int] = (),
    on_scored: Callable[[str, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[dict[str, Any], dict[str, dict[int, np.ndarray]]]:
    """Every probe's metrics (the ``counterfactual`` block of results/eval/metrics.json) and, for the
    rows in ``keep_examples``, the probe's crops (for a figure). ``on_scored(probe, pixels, rows)`` sees each
    probe's crops and their test rows (the uncertainty evaluation scores them too)."""
    out: dict[str, Any] = {}
    examples: dict[str, dict[int, np.ndarray]] = {}
    for probe in probes(settings.stretch):
        pixels, rows = probe_crops(inputs, probe, cropper, image_size, settings.seed)
        n = len(inputs.labels)
        entry: dict[str, Any] = {
            "description": probe.description,
            "n": n,
            "n_scored": int(len(rows)),
            "n_no_face": int(n - len(rows)),
        }
        if len(rows):
            entry.update(
                probe_metrics(
                    inputs.labels[rows],
                    clean_prob[rows],
                    score(pixels),
                    threshold,
                    settings.max_auc_drop,
                    settings.max_rate_drop,
                )
            )
        else:
            entry.update(flag=True, roc_auc=None)
        out[probe.name] = entry
        if on_scored is not None and len(rows):
            on_scored(probe.name, pixels, rows)
        where = {int(r): k for k, r in enumerate(rows)}
        examples[probe.name] = {i: pixels[where[i]] for i in keep_examples if i in where}
    flagged = [k for k, v in out.items() if v["flag"]]
    drops = [v["auc_drop"] for v in out.values() if v.get("auc_drop") is not None]
    return (
        {
            "threshold": threshold,
            "max_auc_drop": settings.max_auc_drop,
            "max_rate_drop": settings.max_rate_drop,
            "probes": out,
            "flagged": flagged,
            "max_auc_drop_seen": max(drops) if drops else None,
        },
        examples,
    )
