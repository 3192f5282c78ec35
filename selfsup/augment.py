"""The two random views SimCLR compares, made with torchvision v2 transforms (one draw per image).

What the views may change is what the encoder learns to ignore. Crop, flip, colour and grey are safe here:
the pipeline already keeps framing and colour from being the real-vs-fake cue. Blur and JPEG are left out
by default (``pretrain.aug_blur_prob``/``aug_jpeg_prob`` = 0): they erase the high-frequency traces that
separate generated faces from photos, and an encoder taught to ignore them would discard the signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2

from core.params import PretrainParams


@dataclass(frozen=True)
class ViewMaker:
    """uint8 (B, 3, S, S) batch -> two normalised float views of it."""

    transform: v2.Compose
    normalise: v2.Compose

    @classmethod
    def from_params(cls, p: PretrainParams, mean: tuple[float, ...], std: tuple[float, ...]) -> ViewMaker:
        j = p.aug_color_jitter
        ops: list[torch.nn.Module] = [
            v2.RandomResizedCrop(p.image_size, scale=(p.aug_crop_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(p.aug_flip),
            v2.RandomApply([v2.ColorJitter(j, j, j, hue=j / 4)], p=p.aug_color_prob),
            v2.RandomGrayscale(p.aug_grayscale),
        ]
        if p.aug_blur_prob > 0:
            side = 2 * max(1, round(2 * p.aug_blur_sigma)) + 1
            ops.append(v2.RandomApply([v2.GaussianBlur(side, sigma=(0.1, p.aug_blur_sigma))], p=p.aug_blur_prob))
        if p.aug_jpeg_prob > 0:
            ops.append(v2.RandomApply([v2.JPEG((p.aug_jpeg_quality, 95))], p=p.aug_jpeg_prob))
        normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        return cls(v2.Compose(ops), normalise)

    def view(self, batch: torch.Tensor) -> torch.Tensor:
        """One independently drawn view of every image (torch's global RNG: seeded by the stage)."""
        return self.normalise(torch.stack([self.transform(image) for image in batch]))

    def pair(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(batch), self.view(batch)
