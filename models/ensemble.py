"""A deep ensemble of classifiers seen as one network: its logit is the members' mean probability.

``forward`` returns ``T * logit(mean_m sigmoid(z_m / T))`` for the members' logits ``z_m`` and the
ensemble's temperature ``T``, so that ``sigmoid(logit / T)`` (classifier.metrics.calibrated) is the mean of
the members' temperature-scaled probabilities: evaluate, predict and the counterfactual probes score an
ensemble exactly as one model. With one member it is that member's logit.
"""

from __future__ import annotations

import torch
from torch import nn

from models.classifier import DeepfakeClassifier

EPS = 1e-7  # keeps logit(p) finite when every member is certain


def mean_probability_logit(member_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(M, B) member logits -> (B,) logit whose sigmoid at ``temperature`` is the members' mean probability."""
    p = torch.sigmoid(member_logits.float() / temperature).mean(0).clamp(EPS, 1 - EPS)
    return temperature * torch.logit(p)


class DeepfakeEnsemble(nn.Module):
    def __init__(self, members: list[DeepfakeClassifier], temperature: float) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_probability_logit(torch.stack([m(x) for m in self.members]), self.temperature)


def members_of(model: nn.Module) -> list[DeepfakeClassifier]:
    """The classifiers inside ``model``: an ensemble's members, or the model itself."""
    if isinstance(model, DeepfakeEnsemble):
        return [m for m in model.members if isinstance(m, DeepfakeClassifier)]
    if isinstance(model, DeepfakeClassifier):
        return [model]
    raise TypeError(f"not a deepfake classifier: {type(model).__name__}")
