"""faces.mtcnn: batched area resampling from an integral image gives facenet-pytorch's results exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from faces.detect import build_mtcnn, letterbox
from faces.mtcnn import BatchedMTCNN, area_resample, integral_image

CPU = torch.device("cpu")


@pytest.mark.parametrize("side", [40, 300])  # 300 x 300: sums past 2**24, the float64 integral
@pytest.mark.parametrize("out", [(24, 24), (7, 11), (48, 48)])  # shrink, uneven bins, and enlarge small boxes
def test_area_resample_equals_interpolate_area(side: int, out: tuple[int, int]) -> None:
    rng = np.random.default_rng(side)
    pixels = torch.as_tensor(rng.integers(0, 256, (3, side, side + 9, 3), dtype=np.uint8))
    as_facenet = pixels.permute(0, 3, 1, 2).type(torch.float32)  # what detect_face resamples
    windows = [(0, side, 0, side + 9), (1, 9, 3, 30), (side // 3, side - 1, 2, side // 2), (5, 6, 7, 8)]
    index = torch.tensor([k % 3 for k in range(len(windows))])
    columns = tuple(torch.tensor([w[i] for w in windows]) for i in range(4))
    got = area_resample(integral_image(pixels), index, columns, out)
    for k, (top, bottom, left, right) in enumerate(windows):
        want = F.interpolate(as_facenet[index[k] : index[k] + 1, :, top:bottom, left:right], size=out, mode="area")
        assert torch.equal(got[k : k + 1], want), (k, (got[k] - want[0]).abs().max())


def photos() -> np.ndarray:
    """A face photo, a cat, noise and a flat image, letterboxed as the faces stage does."""
    noise = np.random.default_rng(0).integers(0, 256, (180, 240, 3), dtype=np.uint8)
    images = [skdata.astronaut(), skdata.chelsea(), noise, np.full((90, 120, 3), 128, np.uint8)]
    return letterbox([Image.fromarray(a) for a in images], 256).canvas


def test_batched_mtcnn_returns_what_facenet_mtcnn_returns() -> None:
    batched = build_mtcnn(20, CPU)
    assert isinstance(batched, BatchedMTCNN)
    canvas = photos()
    boxes, probs = batched.detect(canvas)
    want_boxes, want_probs = batched.mtcnn.detect(canvas)
    assert len(boxes) == len(want_boxes) == len(canvas)
    for got, want, got_p, want_p in zip(boxes, want_boxes, probs, want_probs):
        if want is None:
            assert got is None and list(got_p) == [None]
            continue
        assert np.array_equal(got, want)
        assert np.array_equal(np.asarray(got_p, dtype=float), np.asarray(want_p, dtype=float))
    assert boxes[0] is not None and float(np.max(probs[0])) > 0.99  # the astronaut's face
    assert boxes[3] is None  # nothing in a flat image


def test_an_image_smaller_than_the_smallest_face_has_no_boxes() -> None:
    batched: Any = build_mtcnn(20, CPU)
    boxes, probs = batched.detect(np.zeros((2, 16, 16, 3), np.uint8))
    assert boxes == [None, None] and probs == [[None], [None]]
