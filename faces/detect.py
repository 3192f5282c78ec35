"""Face detection: MTCNN on batches of downscaled, letterboxed copies, boxes mapped back to full resolution.

* detection runs on a copy of each image scaled so its longer side is ``detect_side`` and
  letterboxed (top-left) into one ``detect_side`` x ``detect_side`` canvas, so ``batch_size``
  images go through MTCNN in one call; boxes are mapped back to full-resolution pixels;
* the most probable face wins (``best_detection``); what counts as a miss is decided by the cropper
  (faces.crop). ``all_detections`` keeps every face (most probable first), for predict's and the
  app's every-face mode.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.io import sha1_file
from faces.mtcnn import BatchedMTCNN

DETECT_FILTER = Image.Resampling.BILINEAR  # scaling of the detection copy (antialiased when shrinking)
# Bump when the detect/crop code (faces.detect, faces.crop) changes outputs: invalidates the faces cache.
ALGO_VERSION = "letterbox-topleft/channels-last/lanczos/inside-image/v2"


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates (x1, y1) top-left, (x2, y2) bottom-right."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)

    def iou(self, other: Box) -> float:
        iw = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        ih = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = iw * ih
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Detection:
    box: Box  # full-resolution pixel coordinates
    prob: float


def facenet_weight_files() -> list[Path]:
    data = importlib.resources.files("facenet_pytorch") / "data"
    return [Path(str(data / f"{name}.pt")) for name in ("pnet", "rnet", "onet")]


def detector_version() -> str:
    """Identifies the detector: package version, MTCNN weight bytes, this module's algorithm."""
    weights = hashlib.sha1()
    for path in facenet_weight_files():
        weights.update(sha1_file(path).encode())
    return (
        f"facenet-pytorch=={importlib.metadata.version('facenet-pytorch')};"
        f"weights={weights.hexdigest()[:12]};{ALGO_VERSION}"
    )


def build_mtcnn(min_face: int, device: torch.device) -> BatchedMTCNN:
    """MTCNN returning every face with its probability (we pick the most probable ourselves)."""
    from facenet_pytorch import MTCNN

    model = MTCNN(min_face_size=min_face, keep_all=True, select_largest=False, post_process=False, device=device)
    # channels-last conv weights make the CPU max-pool/conv kernels ~1.3-1.5x faster here (the
    # input canvas is NHWC already); boxes/probs agree with the default layout to ~1e-4.
    return BatchedMTCNN(model.to(memory_format=torch.channels_last).eval())


@dataclass(frozen=True)
class Letterboxed:
    canvas: np.ndarray  # (N, side, side, 3) uint8
    scales: list[tuple[float, float]]  # per image: full-res pixels per detection-copy pixel (x, y)


def letterbox(images: Sequence[Image.Image], side: int) -> Letterboxed:
    """Scale each image so its longer side is ``side`` and paste it top-left on a black canvas."""
    canvas = np.zeros((len(images), side, side, 3), dtype=np.uint8)
    scales = []
    for i, im in enumerate(images):
        w, h = im.size
        s = side / max(w, h)
        nw, nh = min(side, max(1, round(w * s))), min(side, max(1, round(h * s)))
        small = im if (nw, nh) == (w, h) else im.resize((nw, nh), DETECT_FILTER)
        canvas[i, :nh, :nw] = np.asarray(small if small.mode == "RGB" else small.convert("RGB"))
        scales.append((w / nw, h / nh))
    return Letterboxed(canvas, scales)


def best_detection(boxes: Any, probs: Any, scale: tuple[float, float]) -> Detection | None:
    """The most probable of one image's MTCNN boxes, mapped back to full resolution."""
    if boxes is None:
        return None
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray([np.nan if v is None else v for v in np.ravel(probs)], dtype=np.float64)
    if len(b) == 0 or len(p) != len(b) or np.all(np.isnan(p)):
        return None
    i = int(np.nanargmax(p))
    return Detection(Box(*map(float, b[i])).scaled(*scale), float(p[i]))


def all_detections(boxes: Any, probs: Any, scale: tuple[float, float]) -> list[Detection]:
    """Every one of an image's MTCNN boxes (those with a probability), most probable first, at full resolution."""
    if boxes is None:
        return []
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray([np.nan if v is None else v for v in np.ravel(probs)], dtype=np.float64)
    if len(p) != len(b):
        return []
    order = sorted((i for i in range(len(b)) if not np.isnan(p[i])), key=lambda i: (-p[i], i))
    return [Detection(Box(*map(float, b[i])).scaled(*scale), float(p[i])) for i in order]
