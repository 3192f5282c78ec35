"""Real-vs-fake face classifiers: one logit per image (> 0 means fake).

Two families, chosen by ``classifier.arch``:
- ``cnn``: a small from-scratch CNN (BatchNorm; residual or plain blocks; depth and width set in params);
- ``mobilenet_v2`` | ``resnet18`` | ``efficientnet_b0``: a torchvision backbone whose ImageNet head is
  replaced by dropout + one linear unit. ImageNet weights come from a local file (see
  ``core.pretrained``), never from the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.params import CLASSIFIER_ARCHS, ClassifierParams
from core.pretrained import IMAGENET_MEAN, IMAGENET_STD

HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild the network (stored in the checkpoint as a plain dict)."""

    arch: str
    dropout: float
    cnn_depth: int
    cnn_width: int
    cnn_block: str

    @classmethod
    def from_params(cls, p: ClassifierParams) -> ArchSpec:
        return cls(p.arch, p.dropout, p.cnn_depth, p.cnn_width, p.cnn_block)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArchSpec:
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(raw) - known), sorted(known - set(raw))
        if unknown or missing:
            raise ValueError(f"checkpoint arch has unknown keys {unknown} and lacks {missing}; known: {sorted(known)}")
        return cls(**raw)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Input mean/std: ImageNet statistics for torchvision backbones, 0.5/0.5 for the CNN."""
        return (HALF, HALF) if self.arch == "cnn" else (IMAGENET_MEAN, IMAGENET_STD)


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def linear_or_bn_weight(layer: nn.Module) -> torch.Tensor:
    assert isinstance(layer, nn.BatchNorm2d | nn.Linear), type(layer)
    return layer.weight


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        last = ConvBNAct(channels, channels, act=False)
        self.body = nn.Sequential(ConvBNAct(channels, channels), last)
        nn.init.zeros_(linear_or_bn_weight(last[1]))  # start as identity: the last BN's scale is zero
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class PlainBlock(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(ConvBNAct(channels, channels), ConvBNAct(channels, channels))


class SmallCNN(nn.Module):
    """Stem (stride 2), then ``depth`` stages; each stage but the first halves the resolution."""

    def __init__(self, depth: int, width: int, block: str) -> None:
        super().__init__()
        if block not in ("residual", "plain"):
            raise ValueError(f"cnn block {block!r}; allowed: 'residual', 'plain'")
        make_block = ResidualBlock if block == "residual" else PlainBlock
        layers: list[nn.Module] = [ConvBNAct(3, width, stride=2)]
        c_in = width
        for i in range(depth):
            c_out = min(width * 2**i, width * 8)
            layers += [ConvBNAct(c_in, c_out, stride=1 if i == 0 else 2), make_block(c_out)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class DeepfakeClassifier(nn.Module):
    """backbone -> pooled features -> head (dropout + linear) -> one logit per image."""

    def __init__(self, backbone: nn.Module, n_features: int, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        linear = nn.Linear(n_features, 1)
        self.head = nn.Sequential(nn.Dropout(dropout), linear)
        nn.init.zeros_(linear.weight)  # start at p = 0.5 for every image: no random overconfidence
        nn.init.zeros_(linear.bias)
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(1)

    def freeze_backbone(self, frozen: bool) -> None:
        """Frozen: backbone weights get no gradient and its BatchNorm statistics stay fixed."""
        self.backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> DeepfakeClassifier:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def _mobilenet_v2() -> tuple[nn.Module, Callable[[nn.Module], int]]:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None), _strip_sequential_head


def _efficientnet_b0() -> tuple[nn.Module, Callable[[nn.Module], int]]:
    from torchvision.models import efficientnet_b0

    return efficientnet_b0(weights=None), _strip_sequential_head


def _resnet18() -> tuple[nn.Module, Callable[[nn.Module], int]]:
    from torchvision.models import resnet18

    def strip(net: nn.Module) -> int:
        n = in_features(net.fc)
        net.fc = nn.Identity()
        return n

    return resnet18(weights=None), strip


def _strip_sequential_head(net: nn.Module) -> int:
    head = net.classifier
    assert isinstance(head, nn.Sequential), type(head)
    n = in_features(head[-1])
    net.classifier = nn.Identity()
    return n


def in_features(layer: object) -> int:
    assert isinstance(layer, nn.Linear), type(layer)
    return layer.in_features


TORCHVISION_ARCHS: dict[str, Callable[[], tuple[nn.Module, Callable[[nn.Module], int]]]] = {
    "mobilenet_v2": _mobilenet_v2,
    "resnet18": _resnet18,
    "efficientnet_b0": _efficientnet_b0,
}  # with "cnn": every classifier.arch (core.params.CLASSIFIER_ARCHS; tests/test_params_defaults.py)


def build_classifier(spec: ArchSpec, imagenet_weights: Path | None = None) -> DeepfakeClassifier:
    """A fresh network for ``spec``; torchvision backbones start from ``imagenet_weights`` when given."""
    if spec.arch == "cnn":
        if imagenet_weights is not None:
            raise ValueError("arch 'cnn' is trained from scratch; it takes no ImageNet weights")
        backbone = SmallCNN(spec.cnn_depth, spec.cnn_width, spec.cnn_block)
        return DeepfakeClassifier(backbone, backbone.out_features, spec.dropout)
    if spec.arch not in TORCHVISION_ARCHS:
        raise ValueError(f"unknown classifier arch {spec.arch!r}; allowed: {', '.join(CLASSIFIER_ARCHS)}")
    net, strip_head = TORCHVISION_ARCHS[spec.arch]()
    if imagenet_weights is not None:
        state = torch.load(imagenet_weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    n_features = strip_head(net)
    return DeepfakeClassifier(net, n_features, spec.dropout)
