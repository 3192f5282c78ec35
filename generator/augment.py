"""DiffAugment (Zhao et al., 2020): differentiable augmentations applied to real AND fake D inputs.

Every op draws from the ``torch.Generator`` it is given, so a resumed run draws the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def augment(x: torch.Tensor, ops: Sequence[str], rng: torch.Generator) -> torch.Tensor:
    """Apply the named differentiable augmentations in AUGMENTATIONS' order; gradients flow to ``x``."""
    for op, apply in AUGMENTATIONS.items():
        if op in ops:
            x = apply(x, rng)
    return x


def _uniform(shape: Sequence[int], rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=rng).to(device=like.device, dtype=like.dtype)


def aug_color(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)) and contrast (x U(0.5, 1.5)) per image."""
    b = x.shape[0]
    x = x + (_uniform((b, 1, 1, 1), rng, x) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform((b, 1, 1, 1), rng, x) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform((b, 1, 1, 1), rng, x) + 0.5) + mean


def aug_translation(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by whole pixels, up to ``ratio`` of its side, filling with zeros."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (b, 1, 1), generator=rng).to(x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (b, 1, 1), generator=rng).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - dy  # source row for each output row
    cols = torch.arange(w, device=x.device).view(1, 1, w) - dx
    valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
    idx = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    shifted = x.flatten(2).gather(2, idx).view_as(x)
    return shifted * valid.to(x.dtype)


def aug_cutout(x: torch.Tensor, rng: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of side ``ratio`` x image side per image (it may overlap the border)."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=rng).to(x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=rng).to(x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


# every generator.augment op (core.params.DIFFAUGMENT_OPS), in the order they are applied
AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "color": aug_color,
    "translation": aug_translation,
    "cutout": aug_cutout,
}
