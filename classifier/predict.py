"""Score arbitrary image files with the trained classifier, the way training saw its faces.

Each file is decoded with ``decode_rgb``, its face found and cropped by ``FaceCropper`` with the
faces params recorded in the checkpoint at training time, encoded and decoded as the faces stage
stored crops (png or jpeg), resized like the training cache, then scored with the checkpoint's
temperature and validation threshold. Every file gets a status:

- ``ok``: a face was found and scored;
- ``no_face``: no face at faces.min_prob (scored on a centred crop only when training used
  ``faces.on_miss: center``, as its crops then included such crops too);
- ``too_small``: shorter side below the ``data.min_side`` the training data was filtered with (recorded in
  the checkpoint; the params default for checkpoints that lack it): the pipeline skips such images too;
- ``unreadable``: the file is missing, not an image, or corrupt (the reason says which).

With an ``UncertaintyScorer`` (uncertainty.score) each scored face also gets ``uncertainty`` (predictive
entropy in bits of the ensemble / MC dropout samples; higher = less certain) and ``prediction_set`` (the
conformal set evaluate calibrated: real, fake, real|fake = abstain, or empty). ``Predictor.images`` does
the same for images already in memory.

``every_face=True`` (``predict --every-face``, the app) scores every face found at faces.min_prob
instead of the most probable one only: one Prediction per face, ``face`` its index in the photo
(0 = the most probable), each with its own box, crop (``pixels``, for Grad-CAM), calibrated
probability, uncertainty and prediction set. A photo without a face keeps its one row (``face`` empty).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from classifier.checkpoint import ClassifierCheckpoint
from classifier.explain import gradcam, overlay, threshold_logit
from classifier.infer import infer_logits
from classifier.metrics import calibrated
from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.params import DataParams, FacesParams, load_block, parse_block
from core.pixels import chunks
from core.schema import IMAGE_EXTENSIONS
from faces.crop import FaceCropper
from uncertainty.score import UncertaintyScorer

T = TypeVar("T")
IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the files predict scans a folder for: the ones download reads
COLUMNS = [
    "file",
    "status",
    "reason",
    "prob_fake",
    "predicted",
    "threshold",
    "uncertainty",
    "prediction_set",
    "face_prob",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
]
FACE_COLUMNS = ["file", "face", *COLUMNS[1:]]  # the columns in every-face mode: which face of the photo


@dataclass
class Prediction:
    file: str
    status: str  # ok | no_face | too_small | unreadable
    reason: str = ""
    prob_fake: float | None = None
    predicted: str = ""  # real | fake | "" (not scored)
    threshold: float | None = None
    uncertainty: float | None = None
    prediction_set: str = ""  # real | fake | real|fake (abstain) | "" (empty or not calibrated)
    face_prob: float | None = None
    box: tuple[float, float, float, float] | None = None
    face: int | None = None  # every-face mode: the face's index in its photo, 0 = the most probable
    pixels: np.ndarray | None = field(default=None, repr=False)  # the scored network input, (3, S, S) uint8

    def row(self) -> dict[str, Any]:
        box = self.box or ("", "", "", "")
        return {
            "file": self.file,
            "face": "" if self.face is None else self.face,
            "status": self.status,
            "reason": self.reason,
            "prob_fake": "" if self.prob_fake is None else round(self.prob_fake, 6),
            "predicted": self.predicted,
            "threshold": "" if self.threshold is None else round(self.threshold, 6),
            "uncertainty": "" if self.uncertainty is None else round(self.uncertainty, 6),
            "prediction_set": self.prediction_set,
            "face_prob": "" if self.face_prob is None else round(self.face_prob, 6),
            "box_x1": box[0],
            "box_y1": box[1],
            "box_x2": box[2],
            "box_y2": box[3],
        }


def collect_files(paths: Iterable[Path]) -> tuple[list[Path], int]:
    """Named files as given; folders searched recursively for image suffixes. Returns (files, ignored)."""
    files: list[Path] = []
    ignored = 0
    for path in paths:
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."):
                    files.append(f)
                else:
                    ignored += 1
        else:
            files.append(path)  # a missing path is reported as unreadable
    return list(dict.fromkeys(files)), ignored  # each file once, in order


def faces_params_for(ckpt: ClassifierCheckpoint, params_file: Path = Path("params.yaml")) -> tuple[FacesParams, str]:
    """The faces params training used (from the checkpoint); params.yaml only for older checkpoints."""
    if ckpt.faces:
        known = {f.name for f in dataclasses.fields(FacesParams)}
        return parse_block("faces", FacesParams, {k: v for k, v in ckpt.faces.items() if k in known}), "checkpoint"
    return load_block("faces", FacesParams, params_file), str(params_file)


def min_side_for(ckpt: ClassifierCheckpoint) -> tuple[int, str]:
    """The data.min_side training data was filtered with (checkpoint), else the params default; and where from."""
    recorded = ckpt.info.get("min_side")
    if recorded is not None:
        return int(recorded), "checkpoint"
    return DataParams().min_side, "params default"


@dataclass
class Predictor:
    """A checkpoint ready to score photos the way training saw its faces (model, its faces path, options)."""

    model: nn.Module  # a classifier or a deep ensemble (models.ensemble)
    ckpt: ClassifierCheckpoint
    cropper: FaceCropper
    device: torch.device
    batch_size: int = 16
    scorer: UncertaintyScorer | None = None
    every_face: bool = False  # every face found at faces.min_prob, else the most probable one

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def files(self, files: list[Path]) -> list[Prediction]:
        """One Prediction per file, in order (with ``every_face``, one per face: see ``file_groups``)."""
        return [p for group in self.file_groups(files) for p in group]

    def file_groups(self, files: list[Path]) -> list[list[Prediction]]:
        """Per file, in order, its Predictions: one per face found (``every_face``; else the most probable face
        only), or the one row of a file without a face, too small or unreadable."""
        min_side, _ = min_side_for(self.ckpt)
        out: list[list[Prediction]] = []
        for chunk in tqdm(list(chunks(files, self.batch_size)), desc="predict", unit="batch", mininterval=1.0):
            preds = [Prediction(str(f), "unreadable") for f in chunk]
            decoded: list[tuple[int, Any]] = []
            for i, f in enumerate(chunk):
                if not f.exists():
                    preds[i].reason = "no such file"
                    continue
                try:
                    image = decode_rgb(f).image
                except ImageDecodeError as e:
                    preds[i].reason = str(e)
                except OSError as e:
                    preds[i].reason = f"cannot read ({e.strerror or e})"
                else:
                    if min(image.size) < min_side:  # the download stage skips these: never score them
                        preds[i].status = "too_small"
                        preds[i].reason = f"too small ({image.width}x{image.height}; data.min_side is {min_side})"
                    else:
                        decoded.append((i, image))
            groups: list[list[Prediction]] = [[p] for p in preds]
            scored = self.image_groups([im for _, im in decoded])
            for (i, _), group in zip(decoded, scored):
                groups[i] = [dataclasses.replace(pred, file=preds[i].file) for pred in group]
            out.extend(groups)
        return out

    def images(self, images: list[Any]) -> list[Prediction]:
        """One Prediction per decoded RGB PIL image (status ok or no_face; ``file`` left empty): the face found
        and cropped as in training, its calibrated probability of fake and, with ``scorer``, its uncertainty
        and conformal prediction set. With ``every_face``, one Prediction per face (``face`` = 0, 1, ...: most
        probable first), and still one for an image without a face."""
        return [p for group in self.image_groups(images) for p in group]

    def image_groups(self, images: list[Any]) -> list[list[Prediction]]:
        """``images``, grouped by image: per image its faces' Predictions (or its one no_face row)."""
        if not images:
            return []
        every = self.every_face
        found = self.cropper.crop_every(images) if every else [[res] for res in self.cropper.crop(images)]
        groups = [
            [Prediction("", "no_face", face=k if every and r.status == "ok" else None) for k, r in enumerate(rs)]
            for rs in found
        ]
        preds = [p for group in groups for p in group]
        results = [res for group in found for res in group]
        pixels, scored = [], []
        for i, res in enumerate(results):
            det = res.detection
            preds[i].face_prob = det.prob if det else 0.0
            preds[i].box = tuple(round(v, 1) for v in det.box.as_list()) if det else None  # type: ignore[assignment]
            if res.status == "ok":
                preds[i].status = "ok"
            else:
                preds[i].reason = res.reason
            if res.image is not None:
                stored = decode_rgb(self.cropper.encode(res.image)).image  # as the faces stage stored it
                preds[i].pixels = face = square_pixels(stored, self.ckpt.image_size)
                pixels.append(face)
                scored.append(i)
        if pixels:
            self._score(np.stack(pixels), [preds[i] for i in scored])
        return groups

    def _score(self, batch: np.ndarray, preds: list[Prediction]) -> None:
        ckpt = self.ckpt
        mean, std = tuple(ckpt.mean), tuple(ckpt.std)
        logits = infer_logits(self.model, batch, self.batch_size, self.device, mean, std, desc="score")
        for pred, prob in zip(preds, calibrated(logits, ckpt.temperature)):
            pred.prob_fake = float(prob)
            pred.threshold = ckpt.threshold
            pred.predicted = "fake" if prob >= ckpt.threshold else "real"
        if self.scorer is not None:
            extra = self.scorer.score(batch)
            for k, pred in enumerate(preds):
                pred.uncertainty = float(extra.uncertainty[k])
                pred.prediction_set = extra.prediction_set[k]

    def explain(self, preds: list[Prediction], side: int = 256) -> list[tuple[Prediction, Image.Image]]:
        """A Grad-CAM overlay (``side`` px) of every scored face, explaining the decision at the threshold."""
        ckpt = self.ckpt
        scored = [p for p in preds if p.pixels is not None]
        flip = threshold_logit(ckpt.threshold, ckpt.temperature)
        out: list[tuple[Prediction, Image.Image]] = []
        for chunk in chunks(scored, self.batch_size):
            batch = np.stack([p.pixels for p in chunk if p.pixels is not None])
            maps = gradcam(self.model, batch, tuple(ckpt.mean), tuple(ckpt.std), self.device, flip)
            out.extend((p, overlay(px, m, side)) for p, px, m in zip(chunk, batch, maps))
        return out
