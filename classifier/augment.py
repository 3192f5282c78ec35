"""Training augmentations and the corruptions they share with the robustness evaluation.

Both work on whole batches of tensors: the corruptions (JPEG re-compression, blur, down-up scaling,
noise, greyscale) are plain functions; ``Augmenter`` draws which images get which, from one seeded
generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from classifier.data import to_unit
from core.params import ClassifierParams

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def jpeg_recompress(batch: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """Re-encode each uint8 (3, H, W) image of ``batch`` as JPEG at its quality and decode it."""
    from torchvision.io import decode_jpeg, encode_jpeg

    out = batch.clone()
    for i, q in enumerate(qualities):
        out[i] = decode_jpeg(encode_jpeg(batch[i].contiguous(), quality=int(q)))
    return out


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each float image with its own sigma: one separable grouped convolution for the batch."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * float(sigmas.max())))
    radius = min(radius, min(h, w) - 1)  # reflect padding needs pad < side
    pos = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigmas.to(x.device, x.dtype).clamp_min(1e-3).view(b, 1)
    kernel = torch.exp(-(pos.view(1, -1) ** 2) / (2 * s**2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, k)
    k = kernel.shape[1]
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, k), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, k, 1), groups=b * c)
    return flat.view(b, c, h, w)


def down_up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by ``factor`` (antialiased) and back up to the original size (bilinear)."""
    h, w = x.shape[-2:]
    small = F.interpolate(
        x,
        size=(max(1, round(h * factor)), max(1, round(w * factor))),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def add_noise(x: torch.Tensor, stds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x + noise * stds.to(x.device, x.dtype).view(-1, 1, 1, 1)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Back to uint8 pixels (what a saved image would hold)."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """Each float image's luma in all three channels."""
    grey = torch.einsum("bchw,c->bhw", x, torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype))
    return grey.unsqueeze(1).expand_as(x).contiguous()


# classifier params that switch every training augmentation off (federated.augment: false, tests)
NO_AUGMENTATION: dict[str, Any] = {
    "aug_flip": 0.0,
    "aug_color_jitter": 0.0,
    "aug_crop_scale": 1.0,
    "aug_jpeg_prob": 0.0,
    "aug_blur_prob": 0.0,
    "aug_noise_prob": 0.0,
    "aug_grayscale": 0.0,
}


@dataclass(frozen=True)
class AugmentConfig:
    """The ``classifier.aug_*`` params (``from_params``; their defaults are params.yaml's), or ``none()``."""

    flip: float
    color_jitter: float
    crop_scale: float
    jpeg_prob: float
    jpeg_quality: int
    blur_prob: float
    blur_sigma: float
    noise_prob: float
    noise_std: float
    grayscale: float

    @classmethod
    def from_params(cls, p: ClassifierParams) -> AugmentConfig:
        return cls(
            flip=p.aug_flip,
            color_jitter=p.aug_color_jitter,
            crop_scale=p.aug_crop_scale,
            jpeg_prob=p.aug_jpeg_prob,
            jpeg_quality=p.aug_jpeg_quality,
            blur_prob=p.aug_blur_prob,
            blur_sigma=p.aug_blur_sigma,
            noise_prob=p.aug_noise_prob,
            noise_std=p.aug_noise_std,
            grayscale=p.aug_grayscale,
        )

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(0.0, 0.0, 1.0, 0.0, 95, 0.0, 1.0, 0.0, 0.0, 0.0)


class Augmenter:
    """uint8 (B, 3, S, S) CPU batch -> augmented float batch in [0, 1] on ``device``.

    Order: JPEG re-compression (uint8) -> random resized crop + flip (one affine resampling) ->
    colour jitter -> greyscale -> Gaussian blur -> Gaussian noise. Random draws come from ``generator`` only.
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.g = generator
        self.device = torch.device(device)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _mask(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.g) < p

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, batch.shape[0]
        if cfg.jpeg_prob > 0:
            chosen = self._mask(n, cfg.jpeg_prob).nonzero().flatten()
            if len(chosen):
                lo, hi = min(cfg.jpeg_quality, 95), max(cfg.jpeg_quality, 95)
                qualities = torch.randint(lo, hi + 1, (len(chosen),), generator=self.g).tolist()
                batch = batch.clone()
                batch[chosen] = jpeg_recompress(batch[chosen], qualities)
        x = to_unit(batch.to(self.device, non_blocking=True))
        x = self._geometry(x)
        if cfg.color_jitter > 0:
            x = self._colour(x)
        if cfg.grayscale > 0:
            chosen = self._mask(n, cfg.grayscale).nonzero().flatten().to(self.device)
            if len(chosen):
                x[chosen] = to_grey(x[chosen])
        if cfg.blur_prob > 0:
            chosen = self._mask(n, cfg.blur_prob).nonzero().flatten().to(self.device)
            if len(chosen):
                x[chosen] = gaussian_blur(x[chosen], self._uniform(len(chosen), 0.1, cfg.blur_sigma))
        if cfg.noise_prob > 0 and cfg.noise_std > 0:
            chosen = self._mask(n, cfg.noise_prob).nonzero().flatten()
            if len(chosen):
                stds = self._uniform(len(chosen), 0.0, cfg.noise_std)
                x[chosen.to(self.device)] = add_noise(x[chosen.to(self.device)], stds, self.g)
        return x.clamp_(0.0, 1.0)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, x.shape[0]
        flips = self._mask(n, cfg.flip)
        if cfg.crop_scale >= 1.0:
            if flips.any():
                f = flips.to(x.device).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(-1), x)
            return x
        area = self._uniform(n, cfg.crop_scale, 1.0)
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3))
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=self.g) * 2 - 1) * (1 - w)
        ty = (torch.rand(n, generator=self.g) * 2 - 1) * (1 - h)
        sign = 1.0 - 2.0 * flips.float()
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = w * sign
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness b, contrast c (around the mean grey level), saturation s (around each pixel's grey),
        fused into one per-image affine map of the pixel and its grey value:
        out = s*b*c * x + (1-s)*b*c * grey(x) + b*(1-c) * mean_grey(x)."""
        j, n = self.cfg.color_jitter, x.shape[0]
        shape = (n, 1, 1, 1)
        b = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        c = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        s = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        grey = to_grey(x)[:, :1]
        offset = b * (1 - c) * grey.mean((2, 3), keepdim=True)
        base = torch.addcmul(offset, grey, (1 - s) * b * c)  # (n, 1, h, w), shared by the 3 channels
        return torch.addcmul(base, x, s * b * c).clamp_(0.0, 1.0)
