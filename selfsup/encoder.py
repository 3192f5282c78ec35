"""results/pretrain/encoder.pt: the pretrained backbone, its architecture and input normalisation.

Plain tensors, dicts, lists, str, int and float only, so it loads with ``torch.load(weights_only=True)``.
``load_into`` puts it into a classifier, refusing a missing file or another architecture with one line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import InputError, MissingInputError
from core.io import atomic_write_bytes
from core.params import PretrainParams
from models.classifier import ArchSpec, DeepfakeClassifier

FORMAT = "selfsup-encoder/1"
ENCODER_PATH = Path("results/pretrain/encoder.pt")
REMAKE = (
    "rerun the pretrain stage (dvc repro pretrain) with pretrain.arch = classifier.arch, "
    "or use classifier.init: imagenet | none"
)


def encoder_spec(p: PretrainParams) -> ArchSpec:
    """The classifier architecture the encoder is the backbone of (dropout belongs to the head: 0 here)."""
    return ArchSpec(p.arch, 0.0, p.cnn_depth, p.cnn_width, p.cnn_block)


def feature_width(model: DeepfakeClassifier) -> int:
    """Width of the backbone's pooled features (the input of the classifier's linear head)."""
    linear = model.head[1]
    assert isinstance(linear, nn.Linear)
    return linear.in_features


def arch_key(spec: ArchSpec) -> dict[str, Any]:
    """What must match for a backbone's weights to fit: the arch, and the CNN's shape for arch cnn."""
    key: dict[str, Any] = {"arch": spec.arch}
    if spec.arch == "cnn":
        key.update(cnn_depth=spec.cnn_depth, cnn_width=spec.cnn_width, cnn_block=spec.cnn_block)
    return key


@dataclass(frozen=True)
class EncoderFile:
    state_dict: dict[str, torch.Tensor]
    arch: dict[str, Any]
    mean: list[float]
    std: list[float]
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        payload = {
            "format": FORMAT,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict.items()},
            "arch": dict(self.arch),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "image_size": int(self.image_size),
            "info": dict(self.info),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> EncoderFile:
        if not path.exists():
            raise MissingInputError(
                f"classifier.init is 'ssl' but {path} is not there", "run the pretrain stage first (dvc repro pretrain)"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for non-checkpoints and unsafe pickles
            raise InputError(f"{path}: not a loadable encoder file ({type(e).__name__}: {e})", REMAKE) from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError(f"{path}: not a {FORMAT} file", REMAKE)
        return cls(**{k: payload[k] for k in ("state_dict", "arch", "mean", "std", "image_size", "info")})


def load_into(model: DeepfakeClassifier, spec: ArchSpec, path: Path = ENCODER_PATH) -> EncoderFile:
    """Copy the encoder's weights into ``model``'s backbone; a clear error when its architecture or input
    normalisation is not ``spec``'s."""
    enc = EncoderFile.load(path)
    if enc.arch != arch_key(spec):
        raise InputError(f"{path} was pretrained as {enc.arch}, but the classifier is {arch_key(spec)}", REMAKE)
    mean, std = spec.normalisation
    if [round(v, 6) for v in enc.mean + enc.std] != [round(v, 6) for v in (*mean, *std)]:
        raise InputError(f"{path}: input normalisation {enc.mean}/{enc.std} is not the classifier's", REMAKE)
    try:
        model.backbone.load_state_dict(enc.state_dict, strict=True)
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit the {spec.arch} backbone ({str(e)[:200]})", REMAKE) from None
    return enc
