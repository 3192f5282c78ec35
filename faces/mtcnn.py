"""MTCNN with every resampling of a batch read from one integral image instead of one call per box.

facenet-pytorch's ``detect_face`` shrinks the batch once per pyramid scale, then cuts each candidate box out
of its image and shrinks it for the second (24 px) and third (48 px) network with its own
``interpolate(mode="area")`` call: thousands of tiny calls per batch, a third of the detector's CPU time.
Area resampling is the mean of each output cell's input bin ``[floor(i * L / O), ceil((i + 1) * L / O))``,
so four look-ups in an integral image give it for every scale and every box at once; pixel values are
integers, so the sums are exact and the means are the ones ``interpolate`` computes.
Every other step uses facenet-pytorch's own networks and helpers in its order, so ``BatchedMTCNN.detect``
returns what ``MTCNN.detect`` returns (tests/test_faces.py compares them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    generateBoundingBox,
    pad,
    rerec,
)
from torchvision.ops.boxes import batched_nms

Detected = tuple[list[np.ndarray | None], list[Any]]  # MTCNN.detect's (boxes, probs) for a batch


def integral_image(images: torch.Tensor) -> torch.Tensor:
    """(N, H + 1, W + 1, C) running sums of (N, H, W, C) uint8 pixels, zero first row and column.

    float32 holds every sum exactly while it stays below 2**24 (255 * H * W < 2**24: up to 256 x 256 pixels);
    larger images get float64.
    """
    n, h, w, c = images.shape
    dtype = torch.float32 if 255 * h * w < 2**24 else torch.float64
    out = torch.zeros((n, h + 1, w + 1, c), dtype=dtype, device=images.device)
    out[:, 1:, 1:] = images.to(dtype).cumsum(1).cumsum(2)
    return out


def area_bins(lengths: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per length L (K,), the (K, out) start and end of each output cell's input bin, as area resampling takes."""
    i = torch.arange(out, device=lengths.device)[None, :]
    length = lengths[:, None]
    return (i * length) // out, -((-(i + 1) * length) // out)


def area_resample(
    integral: torch.Tensor, index: torch.Tensor, window: tuple[torch.Tensor, ...], out: tuple[int, int]
) -> torch.Tensor:
    """(K, C, out_h, out_w) float32: rows top..bottom-1, columns left..right-1 of image ``index[k]``,
    resampled as ``interpolate(mode="area")`` does. ``window`` = (top, bottom, left, right), each (K,)."""
    top, bottom, left, right = window
    _, h1, w1, c = integral.shape
    row0, row1 = area_bins(bottom - top, out[0])
    col0, col1 = area_bins(right - left, out[1])
    base = index[:, None, None] * h1
    flat = integral.reshape(-1, c)

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:  # (K, out_h, out_w, C)
        where = (base + (top[:, None] + rows)[:, :, None]) * w1 + (left[:, None] + cols)[:, None, :]
        return flat.index_select(0, where.reshape(-1)).view(*where.shape, c)

    sums = (at(row1, col1) - at(row0, col1) - at(row1, col0) + at(row0, col0)).to(torch.float32)
    heights = (row1 - row0)[:, :, None, None].to(torch.float32)
    widths = (col1 - col0)[:, None, :, None].to(torch.float32)
    return (sums / heights / widths).permute(0, 3, 1, 2)


def resample_boxes(integral: torch.Tensor, index: torch.Tensor, box: tuple[np.ndarray, ...], out: int) -> torch.Tensor:
    """(K, C, out, out): rows y-1..ey-1, columns x-1..ex-1 (facenet-pytorch's ``pad`` output) of image ``index[k]``."""
    y, ey, x, ex = (torch.as_tensor(v, dtype=torch.int64, device=integral.device) for v in box)
    return area_resample(integral, index, (y - 1, ey, x - 1, ex), (out, out))


def _non_empty(box: tuple[np.ndarray, ...]) -> np.ndarray:
    y, ey, x, ex = box
    return (ey > y - 1) & (ex > x - 1)


class BatchedMTCNN:
    """facenet-pytorch's MTCNN (its weights, thresholds, pyramid factor) with batched box resampling."""

    def __init__(self, mtcnn: Any) -> None:
        self.mtcnn = mtcnn

    @torch.no_grad()
    def detect(self, canvas: np.ndarray) -> Detected:
        """Boxes (k, 4) and probabilities (k,) per image of an (N, H, W, 3) uint8 batch, as MTCNN.detect."""
        m = self.mtcnn
        pixels = torch.as_tensor(canvas, device=m.device)
        hw = pixels.shape[1:3]
        integral = integral_image(pixels)
        boxes, index = self._proposals(integral, hw)
        if len(boxes):
            boxes, index = self._refine(integral, boxes, index, hw)
        if len(boxes):
            boxes, index = self._output(integral, boxes, index, hw)
        found = boxes.cpu().numpy()
        index_np = index.cpu().numpy()
        out_boxes: list[np.ndarray | None] = []
        out_probs: list[Any] = []
        for i in range(len(canvas)):
            mine = found[index_np == i]
            out_boxes.append(mine[:, :4] if len(mine) else None)
            out_probs.append(mine[:, 4] if len(mine) else [None])
        return out_boxes, out_probs

    def _proposals(self, integral: torch.Tensor, hw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """First network over the image pyramid: candidate squares and their image index."""
        m = self.mtcnn
        h, w = int(hw[0]), int(hw[1])
        n, device = integral.shape[0], integral.device
        zero = torch.zeros(n, dtype=torch.int64, device=device)
        whole = (zero, torch.full((n,), h, device=device), zero, torch.full((n,), w, device=device))
        every = torch.arange(n, device=device)
        scale = 12.0 / m.min_face_size
        side = min(h, w) * scale
        found, indices, picks, offset = [], [], [], 0
        while side >= 12:
            small = area_resample(integral, every, whole, (int(h * scale + 1), int(w * scale + 1)))
            reg, probs = m.pnet((small - 127.5) * 0.0078125)
            boxes, index = generateBoundingBox(reg, probs[:, 1], scale, m.thresholds[0])
            picks.append(batched_nms(boxes[:, :4], boxes[:, 4], index, 0.5) + offset)
            found.append(boxes)
            indices.append(index)
            offset += boxes.shape[0]
            scale, side = scale * m.factor, side * m.factor
        if not found:  # the image is smaller than the smallest face looked for
            return torch.zeros((0, 5), device=device), torch.zeros(0, dtype=torch.int64, device=device)
        boxes = torch.cat(found)[torch.cat(picks)]
        index = torch.cat(indices)[torch.cat(picks)]
        keep = batched_nms(boxes[:, :4], boxes[:, 4], index, 0.7)
        boxes, index = boxes[keep], index[keep]
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        moved = torch.stack(
            [
                boxes[:, 0] + boxes[:, 5] * bw,
                boxes[:, 1] + boxes[:, 6] * bh,
                boxes[:, 2] + boxes[:, 7] * bw,
                boxes[:, 3] + boxes[:, 8] * bh,
                boxes[:, 4],
            ],
            dim=1,
        )
        return rerec(moved), index

    def _crops(
        self, integral: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, hw: Any, out: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes with pixels inside the image, their index, and their crops (normalised as the networks expect)."""
        y, ey, x, ex = pad(boxes, int(hw[1]), int(hw[0]))
        keep = _non_empty((y, ey, x, ex))
        box = tuple(v[keep] for v in (y, ey, x, ex))
        mask = torch.as_tensor(keep, device=boxes.device)
        crops = resample_boxes(integral, index[mask], box, out)
        return boxes[mask], index[mask], (crops - 127.5) * 0.0078125

    def _scored(
        self, integral: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, hw: Any, out: int, net: Any, at: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One refining network on ``out``-px crops: the boxes scoring above ``at`` (score as 5th column), their
        index and their box regressions."""
        boxes, index, crops = self._crops(integral, boxes, index, hw, out)
        outputs = fixed_batch_process(crops, net)  # (regression, [landmarks,] class probabilities)
        reg, score = outputs[0], outputs[-1][:, 1]
        ok = score > at
        return torch.cat((boxes[ok, :4], score[ok].unsqueeze(1)), dim=1), index[ok], reg[ok]

    def _refine(
        self, integral: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, hw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Second network (24 px): drop weak candidates, regress, merge."""
        boxes, index, reg = self._scored(integral, boxes, index, hw, 24, self.mtcnn.rnet, self.mtcnn.thresholds[1])
        keep = batched_nms(boxes[:, :4], boxes[:, 4], index, 0.7)
        return rerec(bbreg(boxes[keep], reg[keep])), index[keep]

    def _output(
        self, integral: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, hw: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Third network (48 px): final scores and boxes, merged by the "Min" overlap."""
        boxes, index, reg = self._scored(integral, boxes, index, hw, 48, self.mtcnn.onet, self.mtcnn.thresholds[2])
        boxes = bbreg(boxes, reg)
        keep = batched_nms_numpy(boxes[:, :4], boxes[:, 4], index, 0.7, "Min")
        return boxes[keep], index[keep]
