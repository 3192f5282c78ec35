"""Self-supervised pretraining in the report: the pretrain runs' curves (NT-Xent loss, kNN val ROC-AUC per
epoch) and the label-efficiency study (test ROC-AUC against classifier.label_fraction, one line per
classifier.init and linear probe / fine-tuning, one panel per data set) from the classifier iterations."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.plots import new_figure
from report.document import Block, Cell, Figure, Heading, Para, Table, fmt
from report.figures import png_bytes
from report.iterations import Iteration, TrackData, upstream_runs
from report.runs import Artifacts, RunInfo

MAX_PRETRAIN_RUNS = 6
STUDY_KEYS = ("classifier.init", "classifier.label_fraction", "classifier.linear_probe")


@dataclass
class PretrainCurve:
    label: str  # data set and run
    history: pd.DataFrame  # epoch, loss, knn_val_roc_auc, ...
    metrics: dict[str, float]


def data_set(params: dict[str, str], exp_name: str) -> str:
    """Which data a run used: the sha1 of its training list, named by data.source when the run is a DVC
    experiment (its download run is then matched by experiment name, not just the latest one before it)."""
    sha = params.get("input of train_classifier (sha1)") or params.get("input of pretrain (sha1)", "")
    source = params.get("data.source", "") if exp_name else ""
    name = source.removeprefix("folder:").rstrip("/").rsplit("/", 1)[-1]
    return f"{name} ({sha})" if name and sha else (name or f"train.csv {sha}" if sha else "unknown data")


def pretrain_curves(runs: Sequence[RunInfo], art: Artifacts) -> list[PretrainCurve]:
    """The latest pretrain runs' history.csv artifacts."""
    out = []
    for run in [r for r in runs if r.stage == "pretrain"][-MAX_PRETRAIN_RUNS:]:
        raw = art.read(run.run_id, "history.csv") if "history.csv" in art.paths(run.run_id) else None
        if raw is None:
            continue
        params = {k: v for up in upstream_runs(runs, run.start, run.exp_name) for k, v in up.params.items()}
        sha = run.tags.get("data_manifest_sha1", "")[:10]
        label = f"{data_set({**params, 'input of pretrain (sha1)': sha}, run.exp_name)} run {run.run_id[:6]}"
        out.append(PretrainCurve(label, pd.read_csv(io.BytesIO(raw)), run.metrics))
    return out


def pretrain_figure(curves: Sequence[PretrainCurve]) -> bytes:
    fig = new_figure(8.0, 3.2)
    panels = (("loss", "NT-Xent loss"), ("knn_val_roc_auc", "kNN val ROC-AUC (frozen features)"))
    for k, (column, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        for curve in curves:
            if column in curve.history:
                ax.plot(curve.history["epoch"], curve.history[column], marker="o", ms=3, label=curve.label)
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    return png_bytes(fig)


def study_frame(track: TrackData, metric: str) -> pd.DataFrame:
    """One row per (data set, init, mode, label fraction): the latest iteration with a test metric."""
    rows = []
    for it in track.iterations:
        value = it.metrics.get(metric)
        if value is None or any(k not in it.params for k in STUDY_KEYS):
            continue
        rows.append(_row(it, value))
    frame = pd.DataFrame(rows, columns=["data", "init", "mode", "label_fraction", "value", "iteration"])
    return frame.drop_duplicates(["data", "init", "mode", "label_fraction"], keep="last").reset_index(drop=True)


def _row(it: Iteration, value: float) -> dict[str, object]:
    probe = it.params["classifier.linear_probe"].lower() == "true"
    return {
        "data": data_set(it.params, it.exp_name),
        "init": it.params["classifier.init"],
        "mode": "linear probe" if probe else "fine-tune",
        "label_fraction": float(it.params["classifier.label_fraction"]),
        "value": value,
        "iteration": it.number,
    }


def study_figure(frame: pd.DataFrame, metric: str) -> bytes:
    sets = sorted(frame["data"].unique())
    fig = new_figure(4.2 * len(sets), 3.4)
    for k, name in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), k + 1)
        part = frame[frame["data"] == name]
        for (init, mode), line in part.groupby(["init", "mode"]):
            line = line.sort_values("label_fraction")
            style = "--" if mode == "linear probe" else "-"
            ax.plot(line["label_fraction"], line[metric], style, marker="o", ms=4, label=f"{init}, {mode}")
        ax.set(title=name, xlabel="label fraction", ylabel=f"test {metric}", xscale="log")
        ax.set_xticks(
            sorted(part["label_fraction"].unique()), [f"{v:g}" for v in sorted(part["label_fraction"].unique())]
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def study_blocks(track: TrackData, curves: Sequence[PretrainCurve], number: int) -> list[Block]:
    """The section, or nothing when there are no pretrain runs and no label-efficiency iterations."""
    metric = track.primary
    frame = study_frame(track, metric).rename(columns={"value": metric})
    varied = not frame.empty and (frame["label_fraction"].nunique() > 1 or frame["init"].nunique() > 1)
    if not curves and not varied:
        return []
    out: list[Block] = [Heading(2, f"{number} Self-supervised pretraining and label efficiency", "selfsup")]
    if curves:
        out.append(
            Figure(
                "pretrain_curves.png",
                pretrain_figure(curves),
                "Pretrain runs: SimCLR loss and kNN ROC-AUC on the validation split from frozen features, per epoch.",
            )
        )
    if varied:
        out.append(
            Figure(
                "label_efficiency.png",
                study_figure(frame, metric),
                f"Test {metric} against the share of train labels used, per backbone start (init) and "
                "training mode (dashed: linear probe).",
            )
        )
        pivot = frame.pivot_table(
            index=["data", "init", "mode"], columns="label_fraction", values=metric, aggfunc="last"
        )
        header = ["data", "init", "mode", *[f"{c:g} of labels" for c in pivot.columns]]
        rows = [
            [Cell.of(str(v)) for v in key] + [Cell.of(fmt(None if np.isnan(x) else float(x))) for x in values]
            for key, values in zip(pivot.index, pivot.to_numpy())
        ]
        out.append(Table(f"Label efficiency: test {metric} (latest iteration of each setting).", header, rows))
    else:
        out.append(Para("No label-efficiency iterations yet (`make study`)."))
    return out
