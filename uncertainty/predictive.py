"""Predictive samples of the classifier and their uncertainty.

A *sample* is one probability of "fake" per image from one ensemble member and, with MC dropout, one
dropout mask. The mean over samples is the prediction; the spread between them and the entropy split
tell how sure it is:

- total uncertainty = H(mean p) (binary entropy, bits);
- aleatoric = mean H(p_k) (expected entropy: what every sample already finds ambiguous);
- epistemic = total - aleatoric (mutual information: where the members / passes disagree).

MC dropout: the classifier's only dropout is in its head (models.classifier: dropout + linear), so the
backbone runs once per image and the head ``passes`` times on the same features, each with its own
dropout mask drawn from a seeded generator (batched: one matrix product per batch of images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from classifier.data import gather, to_unit
from classifier.infer import prepare_input
from core.pixels import batch_indices
from models.classifier import DeepfakeClassifier
from models.ensemble import members_of

EPS = 1e-12


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), elementwise (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


@dataclass(frozen=True)
class Predictive:
    """Per image: the mean probability of fake, the samples' spread and the entropy decomposition."""

    samples: np.ndarray  # (K, n) probabilities of fake
    prob: np.ndarray  # (n,) mean over samples
    spread: np.ndarray  # (n,) standard deviation over samples
    total: np.ndarray  # (n,) H(mean p), bits: the ``uncertainty`` score (higher = less certain)
    aleatoric: np.ndarray  # (n,) mean H(p_k)
    epistemic: np.ndarray  # (n,) total - aleatoric (mutual information, >= 0)

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> Predictive:
        s = np.atleast_2d(np.asarray(samples, dtype=np.float64))
        prob = s.mean(0)
        total = binary_entropy(prob)
        aleatoric = binary_entropy(s).mean(0)
        return cls(s, prob, s.std(0), total, aleatoric, np.maximum(total - aleatoric, 0.0))

    def take(self, rows: np.ndarray) -> Predictive:
        return Predictive.from_samples(self.samples[:, rows])


def _head_parts(net: DeepfakeClassifier) -> tuple[float, nn.Linear]:
    dropout, linear = net.head[0], net.head[1]
    if not (isinstance(dropout, nn.Dropout) and isinstance(linear, nn.Linear)):
        raise TypeError("MC dropout expects the classifier head to be dropout + linear (models.classifier)")
    return float(dropout.p), linear


def head_samples(net: DeepfakeClassifier, features: torch.Tensor, passes: int, g: torch.Generator) -> torch.Tensor:
    """(passes, B) logits: the head on the same features under ``passes`` dropout masks (0 passes: dropout off,
    one row)."""
    rate, linear = _head_parts(net)
    if passes == 0 or rate == 0.0:
        return linear(features).squeeze(-1).unsqueeze(0).expand(max(passes, 1), -1)
    keep = torch.full((passes, *features.shape), 1.0 - rate, device=features.device)
    masks = torch.bernoulli(keep, generator=g) / (1.0 - rate)
    return linear(features.unsqueeze(0) * masks).squeeze(-1)


@torch.no_grad()
def method_samples(
    model: nn.Module,
    images: np.ndarray,
    temperature: float,
    passes: int,
    batch_size: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "uncertainty",
) -> dict[str, np.ndarray]:
    """Temperature-scaled probabilities of fake for (n, 3, S, S) uint8 images, per method, from one backbone
    pass per member: ``single`` (1, n: member 0, dropout off), ``ensemble`` (members, n; only with several
    members) and ``mc_dropout`` (members x passes, n; only with passes > 0 and dropout in the head). The
    last key is the richest method. The same seed gives the same dropout masks (generator on ``device``)."""
    nets = members_of(model)
    g = torch.Generator(device=device).manual_seed(seed)
    with_mc = passes > 0 and all(_head_parts(net)[0] > 0 for net in nets)
    det = np.empty((len(nets), len(images)), dtype=np.float64)
    mc = np.empty((len(nets) * passes if with_mc else 0, len(images)), dtype=np.float64)
    for net in nets:
        net.eval()
    for pos in tqdm(
        list(batch_indices(len(images), batch_size)), desc=desc, unit="batch", leave=False, disable=not progress
    ):
        batch = gather(images, pos)
        x = transform(batch).to(device) if transform is not None else to_unit(batch.to(device))
        x = prepare_input(x, mean, std, device)
        for m, net in enumerate(nets):
            features = net.backbone(x).float()
            det[m, pos] = torch.sigmoid(head_samples(net, features, 0, g)[0] / temperature).cpu().numpy()
            if with_mc:
                logits = head_samples(net, features, passes, g)
                mc[m * passes : (m + 1) * passes, pos] = torch.sigmoid(logits / temperature).cpu().numpy()
    out = {"single": det[:1]}
    if len(nets) > 1:
        out["ensemble"] = det
    if with_mc:
        out["mc_dropout"] = mc
    return out


def predictive_samples(
    model: nn.Module,
    images: np.ndarray,
    temperature: float,
    passes: int,
    batch_size: int,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The richest method's samples: members x passes MC dropout samples when the head has dropout and
    passes > 0, else one dropout-off sample per member."""
    samples = method_samples(
        model, images, temperature, passes, batch_size, device, mean, std, seed, transform, progress
    )
    return samples["mc_dropout"] if "mc_dropout" in samples else samples.get("ensemble", samples["single"])
