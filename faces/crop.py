"""The one crop → resize → encode path of the ``faces`` stage, for any RGB image.

``FaceCropper(params).crop(images)`` is what the stage, ``evaluate``'s counterfactual probes and the
``predict`` CLI call: detection (faces.detect), then

* the most probable face wins; below ``min_prob`` it is a miss (``on_miss``: drop | center);
  ``crop_every`` instead keeps every face at or above ``min_prob`` (most probable first), each cropped
  by the same ``finish`` (predict's and the app's every-face mode; the faces stage keeps one per photo);
* the crop is a square around the box centre, side ``max(w, h) * (1 + margin)``, shifted so it
  lies inside the full-resolution image and shrunk (around the face) when the image is too small
  for it; the margin it actually gives the face is recorded. Nothing is ever filled in: padding
  with a constant made a label wherever one class's faces sat closer to the photo's edge.

Every image, real or fake, goes through the same decode → crop → resize → encode path, so the
file format carries no label.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.device import pick_device
from core.images import decode_rgb, encode, extension
from core.params import FacesParams
from faces.detect import Box, Detection, all_detections, best_detection, build_mtcnn, letterbox

CROP_FILTER = Image.Resampling.LANCZOS  # the one filter every crop is resized with
Region = tuple[int, int, int, int]  # left, top, right, bottom in full-resolution pixels


@dataclass(frozen=True)
class FaceResult:
    """Outcome for one image: the crop (``crop_size`` x ``crop_size`` RGB) unless dropped."""

    image: Image.Image | None
    detection: Detection | None  # the most probable face found at any probability, or None
    status: str  # ok | center | dropped
    reason: str
    region: Region | None = None  # the square cut from the image (inside it)
    margin_used: float | None = None  # the margin that square gives the face (None without a face)
    grayscale: bool = False  # the crop carries no colour

    @property
    def prob(self) -> float:
        return self.detection.prob if self.detection else 0.0


def face_square(box: Box, margin: float, width: int, height: int) -> Region:
    """Integer square around ``box`` with side ``max(w, h) * (1 + margin)``, inside a width x height image.

    Centred on the face where the image allows it, else shifted inward; shrunk to the image's
    shorter side when it is larger (then the face gets less margin than asked: see margin_of).
    """
    side = max(1, min(round(max(box.width, box.height) * (1.0 + margin)), width, height))
    left = round((box.x1 + box.x2) / 2 - side / 2)
    top = round((box.y1 + box.y2) / 2 - side / 2)
    left, top = min(max(left, 0), width - side), min(max(top, 0), height - side)
    return left, top, left + side, top + side


def margin_of(region: Region, box: Box) -> float:
    """The margin a square region gives a face box (negative: the square is inside the box)."""
    return (region[2] - region[0]) / max(box.width, box.height, 1e-6) - 1.0


def center_square(width: int, height: int) -> Region:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(image: Image.Image, region: Region, size: int) -> Image.Image:
    """Cut ``region`` (inside the image) and resize it to ``size`` x ``size``."""
    w, h = image.size
    if not (0 <= region[0] < region[2] <= w and 0 <= region[1] < region[3] <= h):
        raise ValueError(f"crop region {region} leaves the {w}x{h} image (it would need padding)")
    return image.convert("RGB").crop(region).resize((size, size), CROP_FILTER)


GRAY_SPREAD = 6  # channel spread (max - min of R, G, B, in levels) that JPEG chroma noise leaves in a grey photo


def is_grayscale(image: Image.Image) -> bool:
    """True when (nearly) every pixel has equal R, G and B: a grey photo, also when stored as RGB."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = a.max(axis=2) - a.min(axis=2)
    return bool(np.quantile(spread, 0.99) <= GRAY_SPREAD)


class FaceCropper:
    """Batched, downscaled MTCNN detection + full-resolution square crops, for any RGB images."""

    def __init__(self, params: FacesParams, device: torch.device | None = None, detector: Any | None = None) -> None:
        self.params = params
        self.device = device if device is not None else pick_device(params.device)
        self.detector = detector if detector is not None else build_mtcnn(params.min_face, self.device)

    def _raw(self, images: Sequence[Image.Image]) -> Iterator[tuple[Any, Any, tuple[float, float]]]:
        """MTCNN's boxes, probabilities and full-resolution scale of each image, batch by batch."""
        bs = self.params.batch_size
        for start in range(0, len(images), bs):
            boxed = letterbox(images[start : start + bs], self.params.detect_side)
            boxes, probs = self.detector.detect(boxed.canvas)
            yield from zip(boxes, probs, boxed.scales)

    def detect(self, images: Sequence[Image.Image]) -> list[Detection | None]:
        """The most probable face of each image (any probability), in full-resolution pixels."""
        return [best_detection(b, p, s) for b, p, s in self._raw(images)]

    def detect_all(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Every face of each image (any probability), most probable first, in full-resolution pixels."""
        return [all_detections(b, p, s) for b, p, s in self._raw(images)]

    def crop_every(self, images: Sequence[Image.Image]) -> list[list[FaceResult]]:
        """Per image, a crop of every face at or above ``min_prob`` (most probable first), each as ``finish``
        crops it; an image without one gets the one result ``crop`` gives it (a miss: dropped or centred)."""
        out: list[list[FaceResult]] = []
        for image, dets in zip(images, self.detect_all(images)):
            found = [d for d in dets if d.prob >= self.params.min_prob]
            out.append([self.finish(image, d) for d in found] or [self.finish(image, dets[0] if dets else None)])
        return out

    def crop(self, images: Sequence[Image.Image]) -> list[FaceResult]:
        detections = self.detect(images)
        return [self.finish(im, det) for im, det in zip(images, detections)]

    def finish(self, image: Image.Image, det: Detection | None) -> FaceResult:
        p = self.params
        if det is not None and det.prob >= p.min_prob:
            region = face_square(det.box, p.margin, *image.size)
            status, reason = "ok", ""
        else:
            reason = "no face detected" if det is None else f"best face prob {det.prob:.3f} < min_prob {p.min_prob:g}"
            if p.on_miss != "center":
                return FaceResult(None, det, "dropped", reason)
            region, status, reason = center_square(*image.size), "center", f"{reason}; centred crop"
        crop = crop_resize(image, region, p.crop_size)
        return FaceResult(
            crop, det, status, reason, region, margin_of(region, det.box) if det else None, is_grayscale(crop)
        )

    def encode(self, crop: Image.Image) -> bytes:
        return encode(crop, self.params.encoding, self.params.jpeg_quality)

    def as_stored(self, crop: Image.Image) -> Image.Image:
        """The pixels the stage stores for ``crop`` (encoded and decoded again, e.g. for predict)."""
        return decode_rgb(self.encode(crop)).image

    @property
    def extension(self) -> str:
        return extension(self.params.encoding)


def window_of(image: Image.Image, keep: float, rng: random.Random | None = None) -> Image.Image:
    """The part of ``image`` that a tighter frame keeps: ``keep`` of each side, centred, or placed at
    random with ``rng``. No pixel is resampled."""
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = ((w - cw) // 2, (h - ch) // 2) if rng is None else (rng.randint(0, w - cw), rng.randint(0, h - ch))
    return image.crop((left, top, left + cw, top + ch))
