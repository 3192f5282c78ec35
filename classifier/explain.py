"""Grad-CAM heatmaps of the classifier's decision (captum's ``LayerGradCam``), overlaid on the face crop.

The attribution is taken for the predicted class: the logit itself when the face is called fake, its
negation when it is called real, so the warm regions are always the evidence for what was decided.
Used by ``predict --explain``, ``evaluate``'s grid of misclassified faces and the app.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps
from PIL import Image
from torch import nn

from classifier.data import to_unit
from classifier.infer import prepare_input

OVERLAY_ALPHA = 0.45  # heatmap weight in the overlay: the face stays recognisable underneath


def target_layer(model: nn.Module) -> nn.Module:
    """The last spatial block of the backbone: ``features[-1]`` (SmallCNN, MobileNetV2, EfficientNet) or
    ``layer4`` (ResNet); else the last convolution. For a deep ensemble, the first member's (the gradient
    of the ensemble's logit through that member)."""
    members = getattr(model, "members", None)
    if isinstance(members, nn.ModuleList) and len(members) > 0:
        model = members[0]
    backbone = getattr(model, "backbone", model)
    features = getattr(backbone, "features", None)
    if isinstance(features, nn.Sequential) and len(features) > 0:
        return features[-1]
    layer4 = getattr(backbone, "layer4", None)
    if isinstance(layer4, nn.Module):
        return layer4
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(backbone).__name__} has no convolution to take Grad-CAM from")
    return convs[-1]


class _Signed(nn.Module):
    """The logit for faces called fake, minus the logit for faces called real."""

    def __init__(self, model: nn.Module, sign: torch.Tensor) -> None:
        super().__init__()
        self.model, self.sign = model, sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.sign


def gradcam(
    model: nn.Module,
    pixels: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device,
    threshold_logit: float = 0.0,
) -> np.ndarray:
    """(N, S, S) heatmaps in [0, 1] for (N, 3, S, S) uint8 network inputs, upsampled to the input side.

    ``threshold_logit``: the logit at which the decision flips (the calibrated threshold mapped back);
    a face at or above it is explained as fake, below it as real.
    """
    model.eval()
    x = prepare_input(to_unit(torch.from_numpy(np.ascontiguousarray(pixels)).to(device)), mean, std, device)
    with torch.no_grad():
        logits = model(x)
    sign = torch.where(logits >= threshold_logit, 1.0, -1.0).to(x.dtype)
    cam = LayerGradCam(_Signed(model, sign), target_layer(model))
    with torch.enable_grad():
        attr = cam.attribute(x.requires_grad_(True), relu_attributions=True)
    maps = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp_min(0).cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)


def overlay(pixels: np.ndarray, heatmap: np.ndarray, side: int | None = None) -> Image.Image:
    """The (3, S, S) uint8 face with its (S, S) heatmap blended on top (``jet``), resized to ``side``."""
    face = pixels.transpose(1, 2, 0).astype(np.float32)
    heat = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1 - OVERLAY_ALPHA) * face + OVERLAY_ALPHA * heat
    image = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    return image if side is None else image.resize((side, side), Image.Resampling.BICUBIC)


def threshold_logit(threshold: float, temperature: float) -> float:
    """The raw logit whose calibrated probability sigmoid(z / T) equals ``threshold``."""
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    return float(np.log(t / (1 - t)) * temperature)
