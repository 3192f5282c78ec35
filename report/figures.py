"""The report's figures as PNG bytes: metrics across iterations, learning curves, ROC curves, montages."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator
from PIL import Image as PILImage
from sklearn.metrics import auc as area_under_curve

from core.plots import image_grid, new_figure
from report.iterations import Iteration, TrackData


def png_bytes(fig: MplFigure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def decode_png(raw: bytes) -> np.ndarray:
    with PILImage.open(io.BytesIO(raw)) as img:
        return np.asarray(img.convert("RGB"))


def metrics_figure(track: TrackData) -> bytes | None:
    names = [n for n in track.metric_names if any(it.metrics.get(n) is not None for it in track.iterations)]
    if not names:
        return None
    fig = new_figure(3.3 * len(names), 3.0)
    xs = [it.number for it in track.iterations]
    best = track.best_iteration
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        ys = [np.nan if (v := it.metrics.get(name)) is None else v for it in track.iterations]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.4, color="#1f5fa8")
        if best is not None and (best_value := best.metrics.get(name)) is not None:
            ax.scatter(
                [best.number],
                [best_value],
                marker="*",
                s=220,
                color="#f2b705",
                edgecolor="black",
                zorder=3,
                label=f"best (#{best.number})",
            )
            ax.legend(fontsize=7, loc="best")
        direction = "lower" if track.lower_better(name) else "higher"
        ax.set(title=f"{name} ({direction} is better)", xlabel="iteration")
        if len(xs) <= 20:
            ax.set_xticks(xs, [f"#{x}" for x in xs])
        ax.grid(alpha=0.3)
    return png_bytes(fig)


def _panel(key: str) -> str:
    return re.sub(r"^(train|val|valid|validation)[_./]", "", key)


def curves_figure(track: TrackData) -> bytes | None:
    latest, best = track.latest_iteration, track.best_iteration
    roles: list[tuple[Iteration, str, str]] = []
    if latest is not None and latest.number in track.curves:
        roles.append((latest, "latest = best" if best is latest else "latest", "-"))
    if best is not None and best is not latest and best.number in track.curves:
        roles.append((best, "best", "--"))
    keys = sorted({k for it, _, _ in roles for k in track.curves[it.number] if track.curves[it.number][k]})
    if not keys:
        return None
    panels: dict[str, list[str]] = {}
    for key in keys:
        panels.setdefault(_panel(key), []).append(key)
    fig = new_figure(3.6 * len(panels), 3.2)
    colours = ["#1f5fa8", "#d1495b", "#2e933c", "#8e44ad", "#e67e22", "#16a085"]
    for k, (panel, members) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for c, key in enumerate(members):
            for it, role, style in roles:
                points = track.curves[it.number].get(key) or []
                if points:
                    steps, values = zip(*points)
                    ax.plot(
                        steps,
                        values,
                        ls=style,
                        marker="o",
                        ms=3,
                        lw=1.4,
                        color=colours[c % len(colours)],
                        label=f"{key} #{it.number} ({role})",
                    )
        ax.set(title=panel, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
    return png_bytes(fig)


def roc_figure(track: TrackData) -> bytes | None:
    drawn = [(it, it.roc) for it in track.iterations if it.roc is not None and len(it.roc) > 1]
    if not drawn:
        return None
    fig = new_figure(5.2, 4.6)
    ax = fig.add_subplot()
    cmap = [tuple(c) for c in colormaps["viridis"](np.linspace(0.05, 0.9, len(drawn)))]
    best = track.best_iteration
    for colour, (it, roc) in zip(cmap, drawn):
        fpr, tpr = roc["fpr"].to_numpy(), roc["tpr"].to_numpy()
        is_best = it is best
        ax.plot(
            fpr,
            tpr,
            lw=2.6 if is_best else 1.3,
            color="#d1495b" if is_best else colour,
            label=f"#{it.number} AUC {area_under_curve(fpr, tpr):.3f}" + (" (best)" if is_best else ""),
            zorder=3 if is_best else 2,
        )
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.set(
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake caught)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC on the test split",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return png_bytes(fig)


def montage(items: Sequence[tuple[str, bytes]], title: str, ncols: int = 4) -> bytes | None:
    images, captions = [], []
    for caption, raw in items:
        try:
            images.append(decode_png(raw))
            captions.append(caption)
        except (OSError, ValueError):
            continue
    if not images:
        return None
    return png_bytes(image_grid(images, captions, ncols=min(ncols, len(images)), title=title, cell=2.8), dpi=100)
