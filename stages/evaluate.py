"""Stage evaluate: the trained classifier on the test split only.

Reads params block ``evaluate``, results/classifier/model.pt (temperature and threshold were fitted
on validation), data/splits/{train,calib,test}.csv (train only to fit the shortcut audits, calib only to
calibrate the conformal prediction sets), the face crops and the raw files. Writes
results/eval/{metrics.json, uncertainty.json, conformal.json, scores.csv, plots/*.csv, figures/*.png} and
logs metrics and figures to MLflow. Shortcut warnings (shortcuts.audit) are printed and tagged on the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from classifier.checkpoint import load_model
from classifier.data import load_split
from classifier.evaluation import robustness_transforms, shortcut_audit, worst_misclassified
from classifier.explain import gradcam, overlay, threshold_logit
from classifier.infer import infer_logits
from classifier.metrics import (
    binary_metrics,
    calibrated,
    per_generator_metrics,
    pr_points,
    reliability_table,
    roc_points,
)
from classifier.predict import faces_params_for
from core.device import pick_device, set_threads
from core.errors import require, run_stage
from core.io import atomic_output_dir, read_csv, sha1_file, write_csv, write_json
from core.params import EvaluateParams, load_block
from core.plots import (
    auc_bars_figure,
    bar_figure,
    confusion_figure,
    image_grid,
    pr_figure,
    reliability_figure,
    roc_figure,
    save_figure,
)
from core.tracking import flatten_numeric, stage_run
from faces.crop import FaceCropper
from shortcuts.audit import CROP, SOURCE, audit_metrics, crop_feature_audit
from shortcuts.counterfactual import ProbeInput, ProbeSettings, run_probes
from uncertainty.conformal import set_names
from uncertainty.evaluation import Scoring, Settings, evaluate_uncertainty, shift_metrics
from uncertainty.figures import write_uncertainty_outputs

CHECKPOINT = Path("results/classifier/model.pt")
SPLITS_DIR = Path("data/splits")
OUT_DIR = Path("results/eval")
LABELS = ("real", "fake")
ROBUST_COLUMNS = ("roc_auc", "balanced_accuracy", "accuracy")
AUDIT_COLOURS = {CROP: "#1f5fa8", SOURCE: "#e67e22", "all features": "#777777"}
MAX_TAG_CHARS = 4000


def label_names(y: np.ndarray) -> list[str]:
    return [LABELS[int(v)] for v in np.asarray(y) > 0.5]


def write_outputs(
    out: Path,
    test: Any,
    logits: np.ndarray,
    p_cal: np.ndarray,
    p_raw: np.ndarray,
    threshold: float,
    metrics: dict[str, Any],
    p: EvaluateParams,
) -> None:
    """scores.csv, DVC plot data (plots/*.csv) and PNG figures (figures/*.png) into ``out``."""
    y = test.labels
    pred = (p_cal >= threshold).astype(int)
    scores = test.frame[["id", "path", "label", "generator"]].copy()
    scores["logit"], scores["prob_fake"], scores["predicted"] = logits, p_cal, label_names(pred)
    write_csv(out / "scores.csv", scores)
    roc, pr = roc_points(y, p_cal), pr_points(y, p_cal)
    rel_after, rel_before = reliability_table(y, p_cal, p.ece_bins), reliability_table(y, p_raw, p.ece_bins)
    write_csv(out / "plots/roc.csv", roc)
    write_csv(out / "plots/pr.csv", pr)
    write_csv(out / "plots/confusion.csv", pd.DataFrame({"actual": label_names(y), "predicted": label_names(pred)}))
    write_csv(out / "plots/reliability.csv", rel_after.dropna())
    write_csv(out / "plots/reliability_before_temperature.csv", rel_before.dropna())

    figs = out / "figures"
    overall = metrics["test"]
    save_figure(roc_figure(roc["fpr"].to_numpy(), roc["tpr"].to_numpy(), overall["roc_auc"]), figs / "roc.png")
    save_figure(
        pr_figure(pr["recall"].to_numpy(), pr["precision"].to_numpy(), overall["average_precision"]), figs / "pr.png"
    )
    save_figure(
        confusion_figure(
            confusion_matrix(y.astype(int), pred, labels=[0, 1]),
            LABELS,
            f"Confusion (test, threshold {threshold:.3f} from validation)",
        ),
        figs / "confusion.png",
    )
    save_figure(
        reliability_figure(
            {
                f"temperature T={metrics['temperature']:.2f} (ECE {overall['ece']:.3f})": rel_after,
                f"no temperature (ECE {overall['ece_before_temperature']:.3f})": rel_before,
            }
        ),
        figs / "reliability.png",
    )
    robust = pd.DataFrame({name: {c: row[c] for c in ROBUST_COLUMNS} for name, row in metrics["robustness"].items()}).T
    save_figure(bar_figure(robust.astype(float), "score", "Robustness on the test split"), figs / "robustness.png")
    save_figure(audit_figure(metrics["shortcut_audit"]["crop_features"]), figs / "shortcut_audit.png")


def worst_figure(test: Any, p_cal: np.ndarray, model: Any, ckpt: Any, device: Any, k: int) -> Figure:
    """The most confidently misclassified test faces, each followed by the Grad-CAM of its (wrong) decision."""
    worst = worst_misclassified(test.labels, p_cal, ckpt.threshold, k)
    faces = np.stack([test.images[i] for i in worst]) if len(worst) else np.zeros((0, 3, 1, 1), np.uint8)
    flip = threshold_logit(ckpt.threshold, ckpt.temperature)
    maps = gradcam(model, faces, tuple(ckpt.mean), tuple(ckpt.std), device, flip) if len(worst) else faces[:, 0]
    images, captions = [], []
    for i, face, heat in zip(worst, faces, maps):
        images += [face, np.asarray(overlay(face, heat))]
        captions += [f"{test.frame['generator'].iloc[i]}\np(fake)={p_cal[i]:.2f}", "Grad-CAM"]
    title = f"Most confidently misclassified test faces ({len(worst)} shown), each with its Grad-CAM"
    return image_grid(images, captions, ncols=8, title=title)


def audit_figure(audit: dict[str, Any]) -> Figure:
    """Per-feature test ROC-AUC of the crop audit (and of all features together), crop vs source coloured."""
    feats = audit["features"]
    names = [*feats, "all features"]
    aucs = [f["test_auc"] for f in feats.values()] + [audit["combined"].get("test_auc")]
    return auc_bars_figure(
        names,
        aucs,
        [f["kind"] for f in feats.values()] + ["all features"],
        AUDIT_COLOURS,
        audit["warn_auc"],
        f"Shortcut audit: one feature alone (test, n={audit['n_test']})",
    )


def counterfactuals(
    model: Any, ckpt: Any, test: Any, p_cal: np.ndarray, p: EvaluateParams, device: Any, on_scored: Any = None
) -> tuple[dict[str, Any], dict[str, dict[int, np.ndarray]]]:
    """The counterfactual probes of the test split, re-cropped with the faces params of training."""
    faces, _ = faces_params_for(ckpt)
    cropper = FaceCropper(faces, device=device)
    mean, std = tuple(ckpt.mean), tuple(ckpt.std)

    def score(pixels: np.ndarray) -> np.ndarray:
        return calibrated(
            infer_logits(model, pixels, p.batch_size, device, mean, std, progress=False), ckpt.temperature
        )

    settings = ProbeSettings(
        p.counterfactual_stretch, p.counterfactual_max_auc_drop, p.counterfactual_max_rate_drop, p.seed
    )
    shown = example_rows(test.labels)
    return run_probes(
        ProbeInput.from_frame(test.frame, test.labels),
        p_cal,
        score,
        cropper,
        ckpt.image_size,
        ckpt.threshold,
        settings,
        keep_examples=shown,
        on_scored=on_scored,
    )


def example_rows(y: np.ndarray, per_label: int = 3) -> list[int]:
    """The first few real and fake test rows (the counterfactual example figure)."""
    return [int(i) for label in (0, 1) for i in np.flatnonzero(np.asarray(y) == label)[:per_label]]


def probe_examples_figure(test: Any, examples: dict[str, dict[int, np.ndarray]]) -> Figure:
    """Rows: a few test faces; columns: the clean crop, then each probe's crop of the same photo."""
    rows = sorted({i for crops in examples.values() for i in crops})
    images, captions = [], []
    for i in rows:
        images.append(test.images[i])
        captions.append(f"clean ({test.frame['label'].iloc[i]})")
        for name, crops in examples.items():
            images.append(crops.get(i, np.zeros_like(test.images[i])))
            captions.append(name if i in crops else f"{name}: no face")
    return image_grid(images, captions, ncols=len(examples) + 1, title="Counterfactual probes: what the model saw")


def calibration_split(image_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The calibration split's pixels and labels; None when split.calib is 0 (or the splits predate it)."""
    path = SPLITS_DIR / "calib.csv"
    if not path.exists() or read_csv(path).empty:
        return None
    calib = load_split(path, image_size)
    return calib.images, calib.labels


def unseen_generators(test: Any, train_frame: pd.DataFrame, calib_path: Path = SPLITS_DIR / "calib.csv") -> list[str]:
    """Test generators that neither the training nor the calibration split holds (leave_one_generator_out)."""
    seen = set(train_frame["generator"].astype(str))
    if calib_path.exists():
        seen |= set(read_csv(calib_path).get("generator", pd.Series(dtype=str)).astype(str))
    return sorted(set(test.generators.astype(str).tolist()) - seen)


def main() -> None:
    p = load_block("evaluate", EvaluateParams)
    set_threads(p.threads)
    device = pick_device(p.device)
    model, ckpt = load_model(CHECKPOINT, device)
    mean, std = tuple(ckpt.mean), tuple(ckpt.std)
    test = load_split(require(SPLITS_DIR / "test.csv", "split"), ckpt.image_size)
    y, threshold, temperature = test.labels, ckpt.threshold, ckpt.temperature

    train_frame = read_csv(SPLITS_DIR / "train.csv")
    with stage_run(stage="evaluate", block="evaluate", params=p, manifest=SPLITS_DIR / "test.csv"):
        logits = infer_logits(model, test.images, p.batch_size, device, mean, std, desc="test")
        p_cal, p_raw = calibrated(logits, temperature), calibrated(logits, 1.0)
        overall = binary_metrics(y, p_cal, threshold, p.ece_bins)
        before = binary_metrics(y, p_raw, threshold, p.ece_bins)
        overall.update(
            ece_before_temperature=before["ece"],
            log_loss_before_temperature=before["log_loss"],
            brier_before_temperature=before["brier"],
        )
        robustness = {"clean": overall}
        for name, transform in robustness_transforms(p).items():
            z = infer_logits(model, test.images, p.batch_size, device, mean, std, transform=transform, desc=name)
            robustness[name] = binary_metrics(y, calibrated(z, temperature), threshold, p.ece_bins)
        metrics: dict[str, Any] = {
            "threshold": threshold,
            "threshold_rule": ckpt.threshold_rule,
            "threshold_source": "validation",
            "temperature": temperature,
            "temperature_source": "validation",
            "test": overall,
            "per_generator": per_generator_metrics(y, p_cal, test.generators, threshold, p.ece_bins),
            "robustness": robustness,
            "shortcut_audit": shortcut_audit(train_frame, test.frame, overall["roc_auc"]),
        }
        crop = metrics["shortcut_audit"]["crop_features"] = crop_feature_audit(
            train_frame, test.frame, warn_auc=p.audit_warn_auc
        )
        scoring = Scoring(model, temperature, mean, std, device, p.batch_size, p.seed)
        unc_settings = Settings(p.alpha, p.conformal, p.mc_dropout_passes, p.ece_bins, threshold)
        unc = evaluate_uncertainty(
            scoring,
            test.images,
            y,
            test.generators,
            calibration_split(ckpt.image_size),
            unseen_generators(test, train_frame),
            unc_settings,
            ckpt.n_members,
        )
        shift: dict[str, Any] = {"robustness": {}, "counterfactual": {}}
        for name, transform in robustness_transforms(p).items():
            shift["robustness"][name] = shift_metrics(scoring, unc.conformal, unc_settings, test.images, y, transform)

        def probe_uncertainty(name: str, pixels: np.ndarray, rows: np.ndarray) -> None:
            shift["counterfactual"][name] = shift_metrics(scoring, unc.conformal, unc_settings, pixels, y[rows])

        examples: dict[str, dict[int, np.ndarray]] = {}
        if p.counterfactual:
            metrics["counterfactual"], examples = counterfactuals(
                model, ckpt, test, p_cal, p, device, probe_uncertainty
            )
        unc.report["shift"] = shift
        with atomic_output_dir(OUT_DIR) as tmp:
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "uncertainty.json", unc.report)
            write_json(
                tmp / "conformal.json",
                {
                    "checkpoint_sha1": sha1_file(CHECKPOINT),
                    "method": unc.report["method"],
                    "mc_dropout_passes": unc.report["mc_dropout_passes"],
                    "seed": p.seed,
                    "alpha": p.alpha,
                    "calibration": unc.conformal.to_dict() if unc.conformal else None,
                },
            )
            write_outputs(tmp, test, logits, p_cal, p_raw, threshold, metrics, p)
            primary = unc.predictive[unc.report["method"]]
            scores = read_csv(tmp / "scores.csv").assign(uncertainty=primary.total, epistemic=primary.epistemic)
            if unc.sets is not None:
                scores["prediction_set"] = set_names(unc.sets)
            write_csv(tmp / "scores.csv", scores)
            write_uncertainty_outputs(tmp, unc.predictive, y, unc.report, threshold, p.ece_bins)
            worst = worst_figure(test, p_cal, model, ckpt, device, p.worst_k)
            save_figure(worst, tmp / "figures" / "worst_misclassified.png")
            if examples:
                save_figure(probe_examples_figure(test, examples), tmp / "figures" / "counterfactual_examples.png")
        mlflow.log_metrics(flatten_numeric({k: metrics[k] for k in ("test", "per_generator", "robustness")}))
        audit = metrics["shortcut_audit"]
        mlflow.log_metrics(
            flatten_numeric({"shortcut_audit": {k: audit[k] for k in ("metadata_roc_auc", "model_roc_auc")}})
        )
        mlflow.log_metrics(audit_metrics(crop))
        mlflow.set_tag("shortcut_warning", "; ".join(crop["warnings"])[:MAX_TAG_CHARS] or "none")
        if "counterfactual" in metrics:
            cf = metrics["counterfactual"]
            mlflow.log_metrics(flatten_numeric({"counterfactual": cf["probes"]}))
            mlflow.log_metric("counterfactual.n_flagged", len(cf["flagged"]))
            mlflow.set_tag("counterfactual_flagged", ", ".join(cf["flagged"]) or "none")
        mlflow.log_artifacts(str(OUT_DIR / "figures"), artifact_path="figures")
        mlflow.log_artifacts(str(OUT_DIR / "plots"), artifact_path="plots")
        mlflow.log_artifact(str(OUT_DIR / "metrics.json"))
        mlflow.log_artifact(str(OUT_DIR / "uncertainty.json"))
        mlflow.log_metrics(
            flatten_numeric({"uncertainty": {k: v for k, v in unc.report.items() if k != "exchangeability"}})
        )
        mlflow.set_tag("uncertainty_exchangeability", unc.report["exchangeability"]["note"][:MAX_TAG_CHARS])

    auc = overall["roc_auc"]
    print(
        f"evaluate: test n={overall['n']} ROC-AUC {auc if auc is None else round(auc, 4)} "
        f"balanced acc {overall['balanced_accuracy']} at threshold {threshold:.4f} (validation); "
        f"metadata-only audit ROC-AUC {audit['metadata_roc_auc']}; crop audit: {crop['n_warnings']} warnings"
    )
    u = unc.report
    print(
        f"evaluate: uncertainty ({u['method']}, {u['ensemble']} member(s), {u['mc_dropout_passes']} MC passes): "
        f"coverage {_r(u.get('coverage'))} (target {u['target_coverage']:.2f}, {u['conformal']}, n_calib "
        f"{u['n_calib']}), mean set size {_r(u.get('mean_set_size'))}, abstain {_r(u.get('abstain_rate'))}, "
        f"AURC {_r(u['aurc'])}, error-detection ROC-AUC {_r(u['error_detection_auc'])}"
        + (f"; {u['conformal_skipped']}" if u["conformal_skipped"] else "")
    )
    if u["exchangeability"]["unseen_generators"]:
        print(f"evaluate: NOTE {u['exchangeability']['note']}")
    for line in crop["warnings"]:
        print(f"evaluate: WARNING shortcut: {line}")
    for name, probe in metrics.get("counterfactual", {}).get("probes", {}).items():
        print(
            f"evaluate: counterfactual {name}: ROC-AUC {_r(probe.get('clean_roc_auc'))} -> {_r(probe.get('roc_auc'))}, "
            f"TPR {_r(probe.get('clean_tpr'))} -> {_r(probe.get('tpr'))}, TNR {_r(probe.get('clean_tnr'))} -> "
            f"{_r(probe.get('tnr'))} ({probe['n_scored']}/{probe['n']} faces found)"
            + ("  <- FLAGGED: the model leans on a cue this change removes" if probe["flag"] else "")
        )


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    run_stage("evaluate", main, __doc__, "evaluate", ["results/eval/{metrics.json,scores.csv,plots/,figures/}"])
