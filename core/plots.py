"""Matplotlib figures as PNG files: curves, confusion matrix, reliability, history, bars, image grids.

Uses matplotlib's object API (Figure + Agg canvas), so no pyplot state is shared between calls.
Every figure is written atomically with ``save_figure``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from core.io import atomic_write_bytes


def new_figure(width: float = 5.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def curve_figure(
    curves: Sequence[tuple[np.ndarray, np.ndarray, str]], xlabel: str, ylabel: str, title: str, diagonal: bool = False
) -> Figure:
    """Several (x, y, label) curves on one axis, in [0, 1] x [0, 1]."""
    fig = new_figure()
    ax = fig.add_subplot()
    for x, y, label in curves:
        ax.plot(x, y, label=label, lw=1.6)
    if diagonal:
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="chance")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def roc_figure(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, title: str = "ROC (test)") -> Figure:
    label = f"AUC {auc:.3f}" if auc is not None else "ROC"
    return curve_figure(
        [(fpr, tpr, label)],
        "false positive rate (real called fake)",
        "true positive rate (fake caught)",
        title,
        diagonal=True,
    )


def pr_figure(
    recall: np.ndarray, precision: np.ndarray, ap: float | None, title: str = "Precision-recall (test, fake = positive)"
) -> Figure:
    label = f"AP {ap:.3f}" if ap is not None else "PR"
    return curve_figure([(recall, precision, label)], "recall", "precision", title)


def confusion_figure(matrix: np.ndarray, labels: Sequence[str], title: str = "Confusion (test)") -> Figure:
    """``matrix[i, j]`` = count of actual ``labels[i]`` predicted ``labels[j]``."""
    fig = new_figure(4.2, 3.8)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title=title,
    )
    top = matrix.max() if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(
                j,
                i,
                str(int(matrix[i, j])),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > top / 2 else "black",
            )
    return fig


def reliability_figure(tables: dict[str, pd.DataFrame], title: str = "Reliability (test)") -> Figure:
    """Tables with columns mean_predicted, fraction_fake, count (see metrics.reliability_table)."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    for name, t in tables.items():
        used = t[t["count"] > 0]
        ax.plot(used["mean_predicted"], used["fraction_fake"], marker="o", ms=3, label=name)
    ax.set(xlabel="mean predicted probability of fake", ylabel="fraction fake", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def history_figure(
    history: pd.DataFrame, x: str, panels: Mapping[str, Sequence[str]], title: str = "Training history"
) -> Figure:
    """One panel per entry of ``panels`` (panel title -> columns of ``history`` plotted against ``x``)."""
    fig = new_figure(4.0 * len(panels), 3.4)
    fig.suptitle(title)
    for k, (name, columns) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for column in columns:
            if column in history:
                ax.plot(history[x], history[column], marker="o", ms=3, label=column)
        ax.set(xlabel=x, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def bar_figure(table: pd.DataFrame, ylabel: str, title: str, ylim: tuple[float, float] | None = (0, 1)) -> Figure:
    """Grouped bars: one group per row of ``table`` (its index), one bar per column."""
    fig = new_figure(1.4 * len(table) + 2.5, 3.8)
    ax = fig.add_subplot()
    n_cols = max(1, len(table.columns))
    width = 0.8 / n_cols
    xs = np.arange(len(table))
    for k, column in enumerate(table.columns):
        values = table[column].astype(float).to_numpy()
        bars = ax.bar(xs + (k - (n_cols - 1) / 2) * width, np.nan_to_num(values), width, label=str(column))
        ax.bar_label(bars, labels=[("n/a" if math.isnan(v) else f"{v:.2f}") for v in values], fontsize=7)
    ax.set_xticks(xs, [str(i) for i in table.index], rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def image_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[str] | None = None,
    ncols: int = 8,
    title: str = "",
    cell: float = 1.4,
) -> Figure:
    """Images (H, W, 3) or (3, H, W) uint8, or (H, W) greyscale, in a grid with optional captions."""
    n = len(images)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    fig = new_figure(max(4.5, cell * ncols), cell * nrows + (0.4 if title else 0) + (0.25 * nrows if captions else 0))
    if title:
        fig.suptitle(title, fontsize=10)
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.axis("off")
        if k >= n:
            continue
        img = np.asarray(images[k])
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = img.transpose(1, 2, 0)
        ax.imshow(img.squeeze(), cmap="gray" if img.ndim == 2 or img.shape[-1] == 1 else None)
        if captions is not None:
            ax.set_title(captions[k], fontsize=7)
    if n == 0:
        fig.axes[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    return fig


def auc_bars_figure(
    names: Sequence[str],
    aucs: Sequence[float | None],
    groups: Sequence[str],
    colours: dict[str, str],
    warn: float,
    title: str,
) -> Figure:
    """Horizontal bars of single-feature ROC-AUCs drawn from 0.5 (chance), a solid line at 0.5 and dashed
    lines at the warning bounds ``warn`` and ``1 - warn``; bar colour by group (e.g. crop / source)."""
    fig = new_figure(6.4, 0.3 * len(names) + 1.5)
    ax = fig.add_subplot()
    ys = np.arange(len(names))[::-1]
    values = np.array([math.nan if a is None else a for a in aucs], dtype=float)
    ax.barh(ys, np.nan_to_num(values, nan=0.5) - 0.5, left=0.5, color=[colours.get(g, "grey") for g in groups])
    for y, v in zip(ys, values):
        ax.text(
            0.5 if math.isnan(v) else v,
            y,
            " n/a" if math.isnan(v) else f" {v:.2f} ",
            va="center",
            fontsize=7,
            ha="left" if math.isnan(v) or v >= 0.5 else "right",
        )
    ax.axvline(0.5, color="black", lw=0.8)
    for bound in (warn, 1 - warn):
        ax.axvline(bound, color="#c62828", ls="--", lw=0.9)
    ax.set_yticks(ys, list(names), fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test ROC-AUC (direction fitted on train; 0.5 = no signal)", title=title)
    handles = [Patch(color=c, label=g) for g, c in colours.items() if g in set(groups)]
    ax.legend(
        handles=handles + [ax.lines[1]],
        labels=[h.get_label() for h in handles] + [f"warning bounds {warn:g}"],
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
    )
    ax.grid(axis="x", alpha=0.3)
    return fig
