"""Figures and DVC plot tables of the uncertainty evaluation (results/eval/{figures,plots}/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from classifier.metrics import reliability_table
from core.io import write_csv
from core.plots import new_figure, reliability_figure, save_figure
from uncertainty.predictive import Predictive
from uncertainty.selective import risk_coverage


def risk_coverage_figure(curves: dict[str, pd.DataFrame], aurcs: dict[str, float | None]) -> Figure:
    fig = new_figure()
    ax = fig.add_subplot()
    for name, t in curves.items():
        a = aurcs.get(name)
        ax.plot(t["coverage"], t["risk"], label=f"{name} (AURC {'n/a' if a is None else f'{a:.3f}'})")
    ax.set(xlabel="coverage (share of test images answered)", ylabel="risk (error rate of the answered)")
    ax.set(title="Risk–coverage (test)", xlim=(0, 1), ylim=(0, None))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def coverage_figure(per_generator: dict[str, Any], target: float, unseen: list[str]) -> Figure:
    names = [g for g, m in per_generator.items() if m.get("coverage") is not None]
    fig = new_figure(1.1 * len(names) + 3.0, 3.8)
    ax = fig.add_subplot()
    cov = [per_generator[g]["coverage"] for g in names]
    colours = ["#c0392b" if g in unseen else "#1f5fa8" for g in names]
    bars = ax.bar(np.arange(len(names)), cov, color=colours)
    ax.bar_label(bars, labels=[f"{c:.2f}" for c in cov], fontsize=7)
    ax.axhline(target, ls="--", color="grey", lw=1, label=f"target 1 - alpha = {target:.2f}")
    labels = [f"{g}\n(unseen)" if g in unseen else g for g in names]
    ax.set_xticks(np.arange(len(names)), labels, rotation=20, ha="right")
    ax.set(ylabel="coverage of the conformal sets", ylim=(0, 1.05), title="Conformal coverage per generator (test)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def right_wrong_figure(pred: Predictive, wrong: np.ndarray, auc: float | None) -> Figure:
    fig = new_figure()
    ax = fig.add_subplot()
    bins = [k / 20 for k in range(21)]
    for name, rows in (("right", ~wrong), ("wrong", wrong)):
        if rows.any():  # a density of no images is undefined
            ax.hist(pred.total[rows], bins=bins, alpha=0.6, density=True, label=f"{name} (n={int(rows.sum())})")
    shown = "n/a" if auc is None else f"{auc:.3f}"
    title = f"Uncertainty of right vs wrong predictions (error-detection ROC-AUC {shown})"
    ax.set(xlabel="uncertainty (predictive entropy, bits)", ylabel="density", title=title)
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    return fig


def write_uncertainty_outputs(
    out: Path, preds: dict[str, Predictive], y: np.ndarray, report: dict[str, Any], threshold: float, bins: int
) -> None:
    """plots/{risk_coverage,coverage_per_generator}.csv and figures/uncertainty_*.png into ``out``."""
    y = np.asarray(y).astype(int)
    curves, aurcs = {}, {}
    for name, pred in preds.items():
        wrong = (pred.prob >= threshold) != (y == 1)
        curves[name] = risk_coverage(pred.total, wrong)
        aurcs[name] = report["methods"][name]["aurc"]
    primary = report["method"]
    write_csv(out / "plots/risk_coverage.csv", curves[primary][["coverage", "risk"]])
    unseen = report["exchangeability"]["unseen_generators"]
    per_gen = report["per_generator"]
    table = pd.DataFrame(
        [
            {"generator": g, "coverage": m.get("coverage"), "n": m["n"], "unseen": g in unseen}
            for g, m in per_gen.items()
        ],
        columns=["generator", "coverage", "n", "unseen"],
    )
    write_csv(out / "plots/coverage_per_generator.csv", table)
    figs = out / "figures"
    save_figure(risk_coverage_figure(curves, aurcs), figs / "uncertainty_risk_coverage.png")
    rel = {
        f"{name} (ECE {report['methods'][name]['ece']:.3f})": reliability_table(y, pred.prob, bins)
        for name, pred in preds.items()
    }
    rel_fig = reliability_figure(rel, "Reliability per uncertainty method (test)")
    save_figure(rel_fig, figs / "uncertainty_reliability.png")
    if "coverage" in report:
        save_figure(coverage_figure(per_gen, report["target_coverage"], unseen), figs / "uncertainty_coverage.png")
    wrong = (preds[primary].prob >= threshold) != (y == 1)
    save_figure(
        right_wrong_figure(preds[primary], wrong, report["error_detection_auc"]), figs / "uncertainty_right_wrong.png"
    )
