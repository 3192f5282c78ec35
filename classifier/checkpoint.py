"""The classifier checkpoint: plain tensors, dicts, lists, str and float only.

So it loads with ``torch.load(..., weights_only=True)`` (no pickled classes). It carries everything
evaluate and predict need: the weights, the architecture, the input normalisation and size, the
temperature and the decision threshold (both fitted on validation), and the faces params of
training so predict crops faces the same way. A deep ensemble (classifier.ensemble > 1) keeps its first
member in ``state_dict`` and the others in ``members``; it loads as one models.ensemble.DeepfakeEnsemble.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import MissingInputError, PipelineError
from core.io import atomic_write_bytes
from models.classifier import ArchSpec, DeepfakeClassifier, build_classifier
from models.ensemble import DeepfakeEnsemble

FORMAT = "deepfake-classifier/1"
REQUIRED = (
    "format",
    "state_dict",
    "arch",
    "temperature",
    "threshold",
    "threshold_rule",
    "mean",
    "std",
    "image_size",
    "faces",
    "info",
)


class CheckpointError(PipelineError, ValueError):
    """A file that is not a usable classifier checkpoint."""

    hint = "use a model.pt written by train_classifier (dvc repro train_classifier)"


@dataclass(frozen=True)
class ClassifierCheckpoint:
    state_dict: dict[str, torch.Tensor]
    arch: dict[str, Any]
    temperature: float
    threshold: float
    threshold_rule: str
    mean: list[float]
    std: list[float]
    image_size: int
    faces: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)  # ensemble members after the first

    @property
    def n_members(self) -> int:
        return 1 + len(self.members)

    @property
    def spec(self) -> ArchSpec:
        return ArchSpec.from_dict(self.arch)

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict.items()},
            "arch": dict(self.arch),
            "temperature": float(self.temperature),
            "threshold": float(self.threshold),
            "threshold_rule": str(self.threshold_rule),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "image_size": int(self.image_size),
            "faces": dict(self.faces),
            "info": dict(self.info),
            "members": [{k: v.detach().cpu().clone() for k, v in m.items()} for m in self.members],
        }


def save_checkpoint(path: Path, ckpt: ClassifierCheckpoint) -> None:
    buf = io.BytesIO()
    torch.save(ckpt.to_payload(), buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> ClassifierCheckpoint:
    if not path.exists():
        raise MissingInputError(f"{path} not found", "train a classifier first (dvc repro train_classifier)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoints and unsafe pickles
        raise CheckpointError(f"{path}: not a loadable classifier checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    members = payload.get("members", [])  # older checkpoints: one model
    return ClassifierCheckpoint(**{k: payload[k] for k in REQUIRED if k != "format"}, members=list(members))


def load_model(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[DeepfakeClassifier | DeepfakeEnsemble, ClassifierCheckpoint]:
    """The trained network (an ensemble when it has several members) in eval mode on ``device``, plus its
    checkpoint metadata."""
    ckpt = load_checkpoint(path)
    nets = []
    for state in [ckpt.state_dict, *ckpt.members]:
        net = build_classifier(ckpt.spec)
        net.load_state_dict(state)
        nets.append(net)
    model = nets[0] if len(nets) == 1 else DeepfakeEnsemble(nets, ckpt.temperature)
    return model.to(device).eval(), ckpt
