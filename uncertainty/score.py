"""Per-image uncertainty and conformal prediction set for predict (and the app): pixels -> scores.

The conformal calibration is the one evaluate wrote (results/eval/conformal.json: the calibration
split's non-conformity scores, the method's MC dropout passes and seed, and the sha1 of the checkpoint
it was computed with). It is used only with that same checkpoint: for another one the prediction sets
stay empty and the note says why (the uncertainty score is still given).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import InputError
from core.io import sha1_file
from core.params import EvaluateParams
from uncertainty.conformal import ConformalSets, set_names
from uncertainty.evaluation import Scoring

CONFORMAL = Path("results/eval/conformal.json")


@dataclass(frozen=True)
class ImageScores:
    prob_fake: np.ndarray  # (n,) mean predictive probability of fake (the method's)
    uncertainty: np.ndarray  # (n,) predictive entropy in bits, higher = less certain
    epistemic: np.ndarray  # (n,) the members' / passes' disagreement (mutual information)
    prediction_set: list[str]  # real | fake | real|fake (abstain) | "" (empty, or no calibration)


@dataclass(frozen=True)
class UncertaintyScorer:
    scoring: Scoring
    passes: int
    conformal: ConformalSets | None
    alpha: float
    note: str  # where the calibration came from, or why there is none

    def score(self, pixels: np.ndarray) -> ImageScores:
        """(n, 3, S, S) uint8 crops (as the classifier's image cache holds them) -> per-image scores."""
        pred = self.scoring.predictive(pixels, self.passes)
        sets = set_names(self.conformal.predict(pred.prob, self.alpha)) if self.conformal else [""] * len(pixels)
        return ImageScores(pred.prob, pred.total, pred.epistemic, sets)


def load_scorer(
    model: torch.nn.Module,
    ckpt: Any,
    checkpoint: Path,
    device: torch.device,
    batch_size: int,
    conformal_path: Path | None = CONFORMAL,
    alpha: float | None = None,
) -> UncertaintyScorer:
    """The scorer of ``model``: MC passes, seed and calibration from ``conformal_path`` when it was made for
    ``checkpoint``; otherwise the evaluate defaults and no prediction sets."""
    defaults = EvaluateParams()
    raw: dict[str, Any] | None = None
    note = "no conformal calibration (run evaluate)"
    if conformal_path is not None and conformal_path.exists():
        try:
            raw = json.loads(conformal_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(
                f"{conformal_path}: not readable JSON ({e})", "rerun evaluate or give --conformal"
            ) from None
        if raw.get("checkpoint_sha1") != sha1_file(checkpoint):
            note = f"{conformal_path} was calibrated for another checkpoint: no prediction sets (rerun evaluate)"
            raw = None
        elif not raw.get("calibration"):
            note = f"{conformal_path} holds no calibration (split.calib was 0)"
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha: got {alpha}; expected 0 <= alpha <= 1", "see python -m stages.predict --help")
    passes = int(raw["mc_dropout_passes"]) if raw else defaults.mc_dropout_passes
    seed = int(raw["seed"]) if raw else defaults.seed
    conformal = ConformalSets.from_dict(raw["calibration"]) if raw and raw.get("calibration") else None
    level = alpha if alpha is not None else float(raw["alpha"]) if raw else defaults.alpha
    if conformal is not None:
        note = f"conformal sets at alpha {level:g} ({conformal.mode}, {len(conformal.labels)} calibration images)"
    scoring = Scoring(model, ckpt.temperature, tuple(ckpt.mean), tuple(ckpt.std), device, batch_size, seed)
    return UncertaintyScorer(scoring, passes, conformal, level, note)
