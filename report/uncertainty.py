"""The classifier track's "Uncertainty" part of the report: how sure is the model, and is it right to be?

One row per iteration that has an evaluation run, from the run's MLflow metrics as stages.evaluate logs
them (``uncertainty.<key>``, ``uncertainty.per_generator.<generator>.coverage``) and the params of its
runs (``classifier.ensemble``, ``evaluate.mc_dropout_passes``, ``evaluate.alpha``): conformal coverage
against its target 1 - alpha, mean set size and abstain rate, AURC and the error-detection ROC-AUC of
the uncertainty score, and the calibration figures of the same probabilities. The note of the latest
iteration says where exchangeability (the coverage guarantee) does not hold. Missing values show as "—".
"""

from __future__ import annotations

from typing import Any

from report.document import MISSING, Block, Cell, Heading, Para, Table
from report.iterations import Iteration, TrackData

PREFIX = "uncertainty."
COLUMNS = {
    "coverage": "coverage",
    "mean_set_size": "mean set size",
    "abstain_rate": "abstain",
    "aurc": "AURC ↓",
    "accuracy_at_80": "acc @80%",
    "error_detection_auc": "error-detection ROC-AUC",
    "ece": "ECE ↓",
    "nll": "NLL ↓",
    "brier": "Brier ↓",
}
PER_GENERATOR = PREFIX + "per_generator."


def _num(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else MISSING


def _param(it: Iteration, key: str) -> str:
    for run in (it.eval, it.train):
        if run is not None and key in run.params:
            return str(run.params[key])
    return MISSING


def method_cell(it: Iteration) -> Cell:
    return Cell.of(
        f"N={_param(it, 'classifier.ensemble')}, T={_param(it, 'evaluate.mc_dropout_passes')}, "
        f"alpha={_param(it, 'evaluate.alpha')}"
    )


def coverage_cell(metrics: dict[str, float], alpha: str) -> Cell:
    value = metrics.get(PREFIX + "coverage")
    try:
        target = 1.0 - float(alpha)
    except ValueError:
        return Cell.of(_num(value))
    if value is None:
        return Cell.of(MISSING, "muted")
    return Cell.of(f"{value:.3f} (target {target:.2f})", "good" if abs(value - target) <= 0.05 else "bad")


def per_generator_cell(metrics: dict[str, float]) -> Cell:
    cov = {
        k[len(PER_GENERATOR) : -len(".coverage")]: v
        for k, v in metrics.items()
        if k.startswith(PER_GENERATOR) and k.endswith(".coverage")
    }
    return Cell.of(", ".join(f"{g} {v:.2f}" for g, v in sorted(cov.items())) or MISSING)


def iteration_row(it: Iteration) -> list[Cell]:
    metrics = it.eval.metrics if it.eval is not None else {}
    cells = [Cell.of(f"#{it.number}"), method_cell(it), coverage_cell(metrics, _param(it, "evaluate.alpha"))]
    cells += [Cell.of(_num(metrics.get(PREFIX + k))) for k in list(COLUMNS)[1:]]
    return [*cells, per_generator_cell(metrics)]


def uncertainty_blocks(track: TrackData) -> list[Block]:
    """Heading, one comparison table over the iterations, and the latest iteration's exchangeability note."""
    evaluated = [it for it in track.iterations if it.eval is not None]
    if not evaluated:
        return []
    has_any = any(k.startswith(PREFIX) for it in evaluated for k in (it.eval.metrics if it.eval else {}))
    out: list[Block] = [Heading(3, "Uncertainty")]
    if not has_any:
        return out + [Para("No evaluation run recorded uncertainty metrics (they came with issue 12).")]
    out.append(
        Para(
            "Deep ensemble (N members) and MC dropout (T passes) on the test split; conformal prediction sets "
            "calibrated on the calibration split at level alpha (coverage within 0.05 of 1 - alpha shows green). "
            "AURC: area under the risk–coverage curve of the uncertainty score (lower is better); error-detection "
            "ROC-AUC: how well the uncertainty score tells wrong predictions from right ones (0.5 = not at all)."
        )
    )
    header = ["iteration", "method", *COLUMNS.values(), "coverage per generator"]
    out.append(Table("Uncertainty per iteration (test split)", header, [iteration_row(it) for it in evaluated]))
    note = evaluated[-1].eval.tags.get("uncertainty_exchangeability", "") if evaluated[-1].eval else ""
    if note:
        out.append(Para(f"Latest iteration: {note}."))
    return out
