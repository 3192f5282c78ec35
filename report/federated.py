"""The "Federated" section of the report: the latest ``train_federated`` run's comparison on the test split.

From the run's artifacts as stages.train_federated logs them: ``comparison.csv`` (one row per model:
``model``, ``roc_auc``, ``roc_auc.<generator>``, ...) and ``history.csv`` (the global model's
validation ROC-AUC per round). Without a readable ``comparison.csv`` the overall test ROC-AUC comes
from the run's MLflow metrics (``<model>.test.roc_auc``) and the per-generator columns show "—". One
table: central training, the federated model (FedAvg / FedProx) and each client alone; test ROC-AUC
overall and per generator, the best of each column in bold. No train_federated run: no section.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from core.plots import new_figure
from report.document import MISSING, Block, Cell, Figure, Heading, Para, Table
from report.figures import png_bytes
from report.runs import Artifacts, RunInfo

STAGE = "train_federated"
GENERATOR_PREFIX = "roc_auc."
STRATEGY_NAMES = {"fedavg": "FedAvg", "fedprox": "FedProx"}


@dataclass
class FederatedResult:
    run: RunInfo
    comparison: pd.DataFrame  # model, roc_auc, roc_auc.<generator>, ...
    history: pd.DataFrame | None  # round, val_roc_auc, ...
    source: str  # "comparison.csv" | "MLflow metrics"


def _csv(art: Artifacts, run: RunInfo, name: str) -> pd.DataFrame | None:
    if name not in art.paths(run.run_id) or (raw := art.read(run.run_id, name)) is None:
        return None
    try:
        return pd.read_csv(io.BytesIO(raw))
    except (ValueError, pd.errors.ParserError) as err:
        art.remarks.append(f"{name} of run {run.run_id[:8]} is not a readable CSV: {err}")
        return None


def from_metrics(metrics: dict[str, float]) -> pd.DataFrame:
    """The overall column of the comparison from MLflow metrics ``<model>.test.roc_auc``."""
    suffix = ".test.roc_auc"
    rows = [{"model": k[: -len(suffix)], "roc_auc": v} for k, v in sorted(metrics.items()) if k.endswith(suffix)]
    return pd.DataFrame(rows, columns=["model", "roc_auc"])


def latest_federated(runs: Sequence[RunInfo], art: Artifacts) -> FederatedResult | None:
    """The latest finished train_federated run with its comparison (None when there is none)."""
    candidates = [r for r in runs if r.stage == STAGE]
    if not candidates:
        return None
    run = candidates[-1]
    table = _csv(art, run, "comparison.csv")
    source = "comparison.csv"
    if table is None or "model" not in table.columns or "roc_auc" not in table.columns:
        table, source = from_metrics(run.metrics), "MLflow metrics"
    return FederatedResult(run, table, _csv(art, run, "history.csv"), source)


def model_label(name: str) -> str:
    if name == "central":
        return "central (all train images pooled)"
    if name.startswith("federated_"):
        strategy = name.removeprefix("federated_")
        return f"federated ({STRATEGY_NAMES.get(strategy, strategy)})"
    if name.startswith("alone_"):
        return f"client {name.removeprefix('alone_')} alone"
    return name


def _order(name: str) -> tuple[int, str]:
    rank = 0 if name == "central" else 1 if name.startswith("federated_") else 2 if name.startswith("alone_") else 3
    return rank, name


def _value(v: object) -> float | None:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def comparison_table(frame: pd.DataFrame) -> Table:
    """Rows: central, federated, each client alone; columns: test ROC-AUC overall and per generator."""
    generators = sorted(c.removeprefix(GENERATOR_PREFIX) for c in frame.columns if c.startswith(GENERATOR_PREFIX))
    columns = ["roc_auc", *[GENERATOR_PREFIX + g for g in generators]]
    records = sorted(frame.to_dict("records"), key=lambda r: _order(str(r["model"])))
    values = [[_value(r.get(c)) for c in columns] for r in records]
    best = [max((v for row in values if (v := row[k]) is not None), default=None) for k in range(len(columns))]
    rows = []
    for record, row in zip(records, values):
        cells = [Cell.of(model_label(str(record["model"])))]
        for v, top in zip(row, best):
            cells.append(Cell.of(MISSING, "muted") if v is None else Cell.of(f"{v:.3f}", "strong" if v == top else ""))
        rows.append(cells)
    return Table(
        "Test ROC-AUC of each model on the same test split (best of each column in bold).",
        ["model", "ROC-AUC", *[f"ROC-AUC {g}" for g in generators]],
        rows,
    )


def history_figure(history: pd.DataFrame) -> bytes | None:
    if not {"round", "val_roc_auc"} <= set(history.columns) or len(history) < 2:
        return None
    fig = new_figure(5.2, 3.2)
    ax = fig.add_subplot()
    ax.plot(history["round"], history["val_roc_auc"], marker="o", ms=3, lw=1.4, color="#1f5fa8")
    best = history.loc[history["val_roc_auc"].idxmax()]
    ax.scatter([best["round"]], [best["val_roc_auc"]], marker="*", s=180, color="#f2b705", edgecolor="black", zorder=3)
    ax.set(title="Federated global model: validation ROC-AUC", xlabel="round (0 = initial model)", ylabel="ROC-AUC")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def federated_blocks(fed: FederatedResult | None, number: int) -> list[Block]:
    """The section, or nothing when no train_federated run finished."""
    if fed is None:
        return []
    params = fed.run.params
    out: list[Block] = [Heading(2, f"{number} Federated", "federated")]
    out.append(
        Para(
            f"Latest `train_federated` run `{fed.run.run_id}` ({fed.run.started}): "
            f"{params.get('federated.num_clients', MISSING)} clients partitioned "
            f"`{params.get('federated.partition', MISSING)}`, strategy `{params.get('federated.strategy', MISSING)}`, "
            f"{params.get('federated.rounds', MISSING)} rounds × {params.get('federated.local_epochs', MISSING)} "
            f"local epochs, DP `{params.get('federated.dp', MISSING)}`. The baselines train the same network with "
            "the same recipe for rounds × local epochs: on the whole train split (central) and on one client's "
            f"images alone. Source: {fed.source}."
        )
    )
    if fed.comparison.empty:
        out.append(Para("The run recorded no test ROC-AUC (neither `comparison.csv` nor `<model>.test.roc_auc`)."))
    else:
        out.append(comparison_table(fed.comparison))
        if not any(str(m).startswith(("central", "alone_")) for m in fed.comparison["model"]):
            out.append(Para("No baselines in this run (`federated.baselines: false`)."))
    if fed.history is not None and (png := history_figure(fed.history)) is not None:
        out.append(
            Figure(
                "federated_rounds.png",
                png,
                "The federated global model's validation ROC-AUC after each round; the star is the best round, "
                "the one kept and scored on the test split.",
            )
        )
    return out
