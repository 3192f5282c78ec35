"""evaluate: metric helpers against sklearn, validation-only threshold, stage outputs, robustness, audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

from classifier.checkpoint import ClassifierCheckpoint, load_checkpoint, save_checkpoint
from classifier.evaluation import raw_metadata, robustness_transforms, shortcut_audit, worst_misclassified
from classifier.metrics import (
    binary_metrics,
    choose_threshold,
    equal_error_rate,
    expected_calibration_error,
    per_generator_metrics,
    reliability_table,
)
from core.params import EvaluateParams
from models.classifier import ArchSpec, build_classifier
from tests.classifier_fixtures import make_splits, tiny_classifier_params
from tests.helpers import set_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
P = np.array([0.05, 0.2, 0.35, 0.6, 0.1, 0.4, 0.7, 0.8, 0.95, 0.55, 0.3, 0.45])


def test_binary_metrics_match_sklearn() -> None:
    m = binary_metrics(Y, P, threshold=0.5)
    pred = (P >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, P))
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(Y, P))
    assert m["log_loss"] == pytest.approx(skm.log_loss(Y, P))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(Y, P))
    assert (m["n"], m["n_fake"], m["n_real"]) == (12, 6, 6)


def test_equal_error_rate_where_fpr_meets_fnr() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert equal_error_rate(y, p) == pytest.approx(0.25)  # threshold 0.5: 1 of 4 reals and 1 of 4 fakes wrong
    assert equal_error_rate(y, np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])) == pytest.approx(0.0)
    # brute force on the hand-made vector: the min over thresholds of max(FPR, FNR) bounds the EER
    rates = [max(np.mean(P[Y == 0] >= t), np.mean(P[Y == 1] < t)) for t in np.r_[P, 1.01]]
    assert equal_error_rate(Y, P) <= min(rates) + 1e-9


def test_expected_calibration_error_by_hand() -> None:
    y = np.array([1, 0, 1, 0, 1, 1, 1, 1])
    p = np.array([0.8, 0.8, 0.8, 0.8, 0.1, 0.1, 0.95, 0.95])
    # bins: 0.8 (4 images, 50% fake) gap 0.3; 0.1 (2, 100%) gap 0.9; 0.95 (2, 100%) gap 0.05
    expected = (4 * 0.3 + 2 * 0.9 + 2 * 0.05) / 8
    assert expected_calibration_error(y, p, bins=10) == pytest.approx(expected)
    table = reliability_table(y, p, bins=10)
    assert int(table["count"].sum()) == 8 and len(table) == 10


def test_threshold_is_chosen_on_validation_not_test() -> None:
    rng = np.random.default_rng(0)
    # validation: reals around 0.2, fakes around 0.45 -> best cut near 0.33
    yv = np.r_[np.zeros(200), np.ones(200)]
    pv = np.r_[rng.normal(0.2, 0.05, 200), rng.normal(0.45, 0.05, 200)].clip(0, 1)
    # test (shifted): reals around 0.55, fakes around 0.8 -> best cut near 0.67
    yt = yv.copy()
    pt = np.r_[rng.normal(0.55, 0.05, 200), rng.normal(0.8, 0.05, 200)].clip(0, 1)
    t_val, t_test = choose_threshold(yv, pv, "youden"), choose_threshold(yt, pt, "youden")
    assert 0.28 < t_val < 0.38 and 0.6 < t_test < 0.72
    m = binary_metrics(yt, pt, t_val)
    assert m["threshold"] == t_val
    assert m["accuracy"] == pytest.approx(0.5, abs=0.02)  # the val threshold calls every test image fake
    assert binary_metrics(yt, pt, t_test)["accuracy"] > 0.95  # what peeking at test would have reported
    for rule in ("f1", "eer"):
        assert 0.25 < choose_threshold(yv, pv, rule) < 0.4


def test_per_generator_metrics_compare_each_generator_with_all_reals() -> None:
    gens = np.array(["real"] * 4 + ["a"] * 3 + ["b"] * 3)
    y = (gens != "real").astype(int)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.35, 0.25, 0.15])
    out = per_generator_metrics(y, p, gens, threshold=0.5)
    assert set(out) == {"a", "b"}
    assert out["a"]["n"] == 7 and out["a"]["roc_auc"] == pytest.approx(1.0)
    assert out["b"]["roc_auc"] == pytest.approx(skm.roc_auc_score([0, 0, 0, 0, 1, 1, 1], np.r_[p[:4], p[7:]]))


def test_worst_misclassified_order() -> None:
    y = np.array([0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.6, 0.8, 0.2])
    assert list(worst_misclassified(y, p, 0.5, 5)) == [0, 1, 2]
    assert list(worst_misclassified(y, p, 0.5, 1)) == [0]


def test_robustness_transforms_corrupt_pixels() -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8))
    clean = x.float() / 255
    transforms = robustness_transforms(EvaluateParams())
    assert set(transforms) == {"jpeg_q50", "blur_sigma1.5", "downscale_x0.5", "noise_std0.05"}
    for name, fn in transforms.items():
        out = fn(x)
        assert out.shape == clean.shape and out.dtype == torch.float32, name
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0, name
        assert float((out - clean).abs().mean()) > 0.01, name
    a = robustness_transforms(EvaluateParams(seed=3))["noise_std0.05"](x)
    b = robustness_transforms(EvaluateParams(seed=3))["noise_std0.05"](x)
    assert torch.equal(a, b)


def _jpeg(path: Path, quality: int, side: int) -> None:
    Image.new("RGB", (side, side), (120, 80, 60)).save(path, format="JPEG", quality=quality)


def test_raw_metadata_reads_quantisation_tables(tmp_path: Path) -> None:
    _jpeg(tmp_path / "a.jpg", 50, 40)
    Image.new("RGB", (30, 20)).save(tmp_path / "b.png")
    a, b = raw_metadata(tmp_path / "a.jpg"), raw_metadata(tmp_path / "b.png")
    assert (a["width"], a["height"]) == (40, 40) and a["jpeg_tables"] >= 2 and a["jpeg_luma_q_mean"] > 5
    assert (b["width"], b["height"], b["jpeg_tables"], b["jpeg_luma_q_mean"]) == (30, 20, 0, 0)
    assert b["bytes"] == (tmp_path / "b.png").stat().st_size


def test_shortcut_audit_flags_a_format_leak(tmp_path: Path) -> None:
    rows = []
    for i in range(40):
        fake = i % 2 == 1
        name = f"r{i}.jpg"
        _jpeg(tmp_path / name, 70 if fake else 95, 64)  # fakes carry another quantisation table
        rows.append({"raw_path": name, "label": "fake" if fake else "real"})
    frame = pd.DataFrame(rows)
    leak = shortcut_audit(frame.iloc[:24], frame.iloc[24:], model_roc_auc=0.8, root=tmp_path)
    assert leak["metadata_roc_auc"] == pytest.approx(1.0) and leak["model_roc_auc"] == 0.8
    for i in range(40):
        _jpeg(tmp_path / f"r{i}.jpg", 90, 64)  # same encoding for everyone: nothing to learn
    fair = shortcut_audit(frame.iloc[:24], frame.iloc[24:], model_roc_auc=0.8, root=tmp_path)
    assert fair["metadata_roc_auc"] <= 0.6
    frame.loc[0, "raw_path"] = "missing.jpg"
    counted = shortcut_audit(frame.iloc[:24], frame.iloc[24:], None, root=tmp_path)
    assert counted["unreadable_raw"] == 1 and "missing.jpg" in counted["unreadable_examples"][0]


def write_untrained_checkpoint(path: Path, threshold: float, temperature: float = 1.0) -> None:
    torch.manual_seed(0)
    spec = ArchSpec("cnn", 0.0, 1, 4, "plain")
    model = build_classifier(spec)
    torch.nn.init.normal_(model.head[1].weight, std=1.0)  # not all-equal scores
    ckpt = ClassifierCheckpoint(
        model.state_dict(),
        spec.to_dict(),
        temperature,
        threshold,
        "youden",
        [0.5] * 3,
        [0.5] * 3,
        32,
        {"crop_size": 32},
        {},
    )
    save_checkpoint(path, ckpt)


def test_evaluate_uses_the_checkpoint_threshold_and_writes_every_output(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 16, "val": 8, "test": 24})
    ckpt_path = in_tmp_project / "results/classifier/model.pt"
    write_untrained_checkpoint(ckpt_path, threshold=0.123, temperature=2.0)
    set_params(in_tmp_project / "params.yaml", "evaluate", threads=1)
    from stages import evaluate

    evaluate.main()
    out = in_tmp_project / "results/eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == 0.123 and metrics["temperature"] == 2.0
    scores = pd.read_csv(out / "scores.csv")
    y = (scores["label"] == "fake").astype(int).to_numpy()
    expected = binary_metrics(y, scores["prob_fake"].to_numpy(), 0.123)
    for key in ("accuracy", "balanced_accuracy", "f1", "roc_auc", "eer", "brier"):
        assert metrics["test"][key] == pytest.approx(expected[key], abs=1e-5), key
    assert np.allclose(scores["prob_fake"], 1 / (1 + np.exp(-scores["logit"] / 2.0)), atol=1e-5)
    assert {"ece", "ece_before_temperature", "log_loss", "average_precision"} <= set(metrics["test"])
    assert set(metrics["per_generator"]) == {"gan_a", "gan_b"}
    assert set(metrics["robustness"]) == {"clean", "jpeg_q50", "blur_sigma1.5", "downscale_x0.5", "noise_std0.05"}
    audit = metrics["shortcut_audit"]
    assert audit["n_train"] == 16 and audit["n_test"] == 24 and audit["metadata_roc_auc"] is not None
    confusion = pd.read_csv(out / "plots/confusion.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 24
    assert set(confusion["predicted"]) <= {"real", "fake"}
    assert list(pd.read_csv(out / "plots/roc.csv").columns[:2]) == ["fpr", "tpr"]
    assert list(pd.read_csv(out / "plots/pr.csv").columns[:2]) == ["recall", "precision"]
    for name in ("reliability", "reliability_before_temperature"):
        reliability = pd.read_csv(out / f"plots/{name}.csv")
        assert {"mean_predicted", "fraction_fake", "count"} <= set(reliability) and reliability["count"].sum() == 24
    for name in ("roc", "pr", "confusion", "reliability", "robustness", "worst_misclassified"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name

    import mlflow

    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"])
    run = runs[runs["tags.stage"] == "evaluate"].iloc[0]
    assert run["metrics.test.roc_auc"] == pytest.approx(metrics["test"]["roc_auc"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"], "figures")}
    assert "figures/roc.png" in artifacts


def test_train_then_evaluate_end_to_end(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 48, "val": 24, "test": 24})
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=3))
    set_params(in_tmp_project / "params.yaml", "evaluate", threads=1)
    from stages import evaluate, train_classifier

    train_classifier.main()
    evaluate.main()
    ckpt = load_checkpoint(in_tmp_project / "results/classifier/model.pt")
    metrics = json.loads((in_tmp_project / "results/eval/metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(ckpt.threshold)
    assert metrics["threshold_source"] == "validation"
    assert metrics["test"]["roc_auc"] > 0.5  # learnable toy data


def test_single_class_test_split_gives_nulls_not_nan(in_tmp_project: Path) -> None:
    csvs = make_splits(in_tmp_project, {"train": 8, "val": 4, "test": 8})
    test = pd.read_csv(csvs["test"], keep_default_na=False)
    test[test["label"] == "fake"].to_csv(csvs["test"], index=False)
    write_untrained_checkpoint(in_tmp_project / "results/classifier/model.pt", threshold=0.5)
    set_params(in_tmp_project / "params.yaml", "evaluate", threads=1)
    from stages import evaluate

    evaluate.main()
    text = (in_tmp_project / "results/eval/metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert metrics["test"]["roc_auc"] is None and metrics["test"]["eer"] is None
    assert metrics["test"]["recall"] is not None and metrics["test"]["n_real"] == 0
    assert metrics["shortcut_audit"]["metadata_roc_auc"] is None and metrics["shortcut_audit"]["skipped"]
