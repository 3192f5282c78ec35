"""Uncertainty: conformal sets (crepes), ensembles, MC dropout, selective prediction, the evaluate/predict outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from classifier.checkpoint import ClassifierCheckpoint, load_checkpoint, load_model, save_checkpoint
from classifier.predict import Predictor
from core.params import FacesParams, SplitParams, as_dict
from faces.crop import FaceCropper
from models.classifier import ArchSpec, build_classifier
from models.ensemble import DeepfakeEnsemble, members_of
from sources.split import split_faces
from tests.classifier_fixtures import make_splits, synthetic_face, tiny_classifier_params
from tests.helpers import set_params
from tests.test_predict import CentreBoxDetector, TwoBoxDetector
from tests.test_split import faces_frame
from uncertainty.conformal import ConformalSets, set_metrics, set_names
from uncertainty.predictive import Predictive, head_samples, method_samples, predictive_samples
from uncertainty.score import load_scorer
from uncertainty.selective import accuracy_at_coverage, aurc, error_detection_auc

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


def scores_with_known_distribution(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels 1:2 real:fake; logit ~ N(+-1, 1.5): classes overlap, so sets of both sizes occur."""
    y = (rng.random(n) < 2 / 3).astype(int)
    z = rng.normal(np.where(y == 1, 1.0, -1.0), 1.5)
    return 1 / (1 + np.exp(-z)), y


@pytest.mark.parametrize("mode", ["mondrian", "marginal"])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_conformal_sets_reach_their_coverage_on_exchangeable_scores(mode: str, alpha: float) -> None:
    rng = np.random.default_rng(0)
    cal_p, cal_y = scores_with_known_distribution(1000, rng)
    test_p, test_y = scores_with_known_distribution(6000, rng)
    sets = ConformalSets.fit(cal_p, cal_y, mode).predict(test_p, alpha)
    m = set_metrics(sets, test_y)
    assert 1 - alpha - 0.02 <= m["coverage"] <= 1 - alpha + 0.04
    assert 1.0 < m["mean_set_size"] < 2.0 and m["abstain_rate"] > 0
    if mode == "mondrian":  # class-conditional: each true class on its own
        for c in (0, 1):
            assert set_metrics(sets[test_y == c], test_y[test_y == c])["coverage"] >= 1 - alpha - 0.03


def uneven_scores(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fakes are easy (logit N(3, 0.5)), reals hard (logit N(-0.5, 2)): one pooled quantile cannot fit both."""
    y = (rng.random(n) < 0.5).astype(int)
    z = np.where(y == 1, rng.normal(3.0, 0.5, n), rng.normal(-0.5, 2.0, n))
    return 1 / (1 + np.exp(-z)), y


def test_marginal_coverage_can_miss_a_class_that_mondrian_covers() -> None:
    rng = np.random.default_rng(1)
    cal_p, cal_y = uneven_scores(1000, rng)
    test_p, test_y = uneven_scores(5000, rng)
    per_class = {
        mode: [
            set_metrics(ConformalSets.fit(cal_p, cal_y, mode).predict(test_p, 0.2)[test_y == c], test_y[test_y == c])[
                "coverage"
            ]
            for c in (0, 1)
        ]
        for mode in ("mondrian", "marginal")
    }
    assert min(per_class["mondrian"]) >= 0.77
    assert per_class["marginal"][0] < 0.75  # the hard class (real) pays for the pooling


@pytest.mark.parametrize("mode", ["mondrian", "marginal"])
def test_prediction_set_is_never_empty_at_alpha_zero(mode: str) -> None:
    rng = np.random.default_rng(2)
    cal_p, cal_y = scores_with_known_distribution(200, rng)
    extreme = np.array([0.0, 1e-9, 0.5, 1 - 1e-9, 1.0])
    names = set_names(ConformalSets.fit(cal_p, cal_y, mode).predict(np.concatenate([extreme, cal_p]), 0.0))
    assert "" not in names and set(names) == {"real|fake"}


def test_conformal_round_trips_through_json() -> None:
    rng = np.random.default_rng(3)
    cal_p, cal_y = scores_with_known_distribution(300, rng)
    cc = ConformalSets.fit(cal_p, cal_y)
    again = ConformalSets.from_dict(json.loads(json.dumps(cc.to_dict())))
    test_p, _ = scores_with_known_distribution(500, rng)
    assert np.array_equal(cc.predict(test_p, 0.1), again.predict(test_p, 0.1))


def test_mondrian_calibration_needs_both_labels() -> None:
    with pytest.raises(ValueError, match="both labels"):
        ConformalSets.fit(np.array([0.2, 0.3]), np.array([0, 0]))


def test_selective_prediction_figures() -> None:
    wrong = np.array([0, 0, 0, 1, 1], bool)
    good = np.array([0.1, 0.2, 0.3, 0.8, 0.9])  # every error less certain than every right answer
    assert error_detection_auc(good, wrong) == 1.0 and error_detection_auc(-good, wrong) == 0.0
    assert aurc(good, wrong) == pytest.approx(np.mean([0, 0, 0, 1 / 4, 2 / 5]))
    assert aurc(good, wrong) < aurc(-good, wrong)
    assert accuracy_at_coverage(good, wrong, 0.6) == 1.0 and accuracy_at_coverage(-good, wrong, 0.4) == 0.0
    assert error_detection_auc(good, np.zeros(5, bool)) is None


def test_entropy_split_into_aleatoric_and_epistemic() -> None:
    agree = Predictive.from_samples(np.array([[0.5], [0.5]]))  # both unsure: aleatoric only
    disagree = Predictive.from_samples(np.array([[0.0], [1.0]]))  # both sure, opposite: epistemic only
    assert agree.total[0] == pytest.approx(1.0) and agree.aleatoric[0] == pytest.approx(1.0)
    assert agree.epistemic[0] == pytest.approx(0.0)
    assert disagree.total[0] == pytest.approx(1.0) and disagree.epistemic[0] == pytest.approx(1.0, abs=1e-6)


def small_net(dropout: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_classifier(ArchSpec("cnn", dropout, 1, 4, "plain"))
    torch.nn.init.normal_(net.head[1].weight, std=1.0)
    return net.eval()


def pixels(n: int = 6, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([synthetic_face(rng, i % 2 == 1, size).transpose(2, 0, 1) for i in range(n)])


def test_mc_dropout_passes_differ_only_with_dropout_on() -> None:
    mean, std = (0.5,) * 3, (0.5,) * 3
    on = predictive_samples(small_net(0.5), pixels(), 1.0, 8, 4, CPU, mean, std, seed=0, progress=False)
    assert on.shape == (8, 6) and np.ptp(on, axis=0).min() > 0
    again = predictive_samples(small_net(0.5), pixels(), 1.0, 8, 4, CPU, mean, std, seed=0, progress=False)
    assert np.array_equal(on, again)  # seeded masks
    features = torch.rand(6, small_net(0.0).head[1].in_features)
    g = torch.Generator().manual_seed(0)
    off = head_samples(small_net(0.0), features, 8, g)  # the head's dropout at 0: every pass the same
    assert off.shape == (8, 6) and torch.equal(off, off[:1].expand(8, -1))
    assert head_samples(small_net(0.5), features, 8, g).std(0).min() > 0
    # dropout off (no passes, or a model without dropout): one sample per member, the eval-mode probability
    net = small_net(0.5)
    methods = method_samples(net, pixels(), 2.0, 0, 4, CPU, mean, std, progress=False)
    assert list(methods) == ["single"] and methods["single"].shape == (1, 6)
    x = (torch.from_numpy(pixels()).float() / 255 - 0.5) / 0.5
    assert np.allclose(methods["single"][0], torch.sigmoid(net(x) / 2.0).detach().numpy(), atol=1e-5)
    assert list(method_samples(small_net(0.0), pixels(), 1.0, 8, 4, CPU, mean, std, progress=False)) == ["single"]
    ens = DeepfakeEnsemble([small_net(0.5, 0), small_net(0.5, 1)], 1.0)
    both = method_samples(ens, pixels(), 1.0, 3, 4, CPU, mean, std, progress=False)
    assert list(both) == ["single", "ensemble", "mc_dropout"] and both["mc_dropout"].shape == (6, 6)
    assert np.array_equal(both["single"][0], both["ensemble"][0])


def test_ensemble_logit_is_the_members_mean_probability() -> None:
    nets = [small_net(0.0, seed) for seed in (0, 1, 2)]
    ens = DeepfakeEnsemble(nets, temperature=1.5).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(n(x) / 1.5) for n in nets]).mean(0)
        assert torch.allclose(torch.sigmoid(ens(x) / 1.5), expected, atol=1e-5)
    assert members_of(ens) == nets and members_of(nets[0]) == [nets[0]]


def test_split_keeps_a_group_disjoint_calibration_split() -> None:
    frame = faces_frame()
    out, facts = split_faces(frame, SplitParams())
    assert facts["fractions"]["calib"] == pytest.approx(0.10)
    assert out.groupby("group")["split"].nunique().max() == 1
    calib = out[out["split"] == "calib"]
    assert set(calib["label"]) == {"real", "fake"} and 0.05 < len(calib) / len(out) < 0.15
    none, _ = split_faces(frame, SplitParams(train=0.7, calib=0.0))
    assert "calib" not in set(none["split"])
    predefined = faces_frame(predefined=True)
    out, _ = split_faces(predefined, SplitParams(protocol="predefined"))
    assert set(out.loc[out["split"] == "calib", "predefined_split"]) == {"valid"}  # carved from val


def test_trained_ensemble_members_differ_and_evaluate_writes_uncertainty(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 48, "val": 24, "calib": 40, "test": 40})
    params = in_tmp_project / "params.yaml"
    set_params(params, "classifier", **tiny_classifier_params(epochs=2, ensemble=2, dropout=0.3))
    set_params(params, "evaluate", threads=1, counterfactual=False, mc_dropout_passes=4, alpha=0.2)
    from stages import evaluate, train_classifier

    train_classifier.main()
    ckpt = load_checkpoint(in_tmp_project / "results/classifier/model.pt")
    assert ckpt.n_members == 2
    differing = [
        k for k, v in ckpt.state_dict.items() if v.is_floating_point() and not torch.equal(v, ckpt.members[0][k])
    ]
    assert differing  # seeds seed and seed + 1
    model, _ = load_model(in_tmp_project / "results/classifier/model.pt")
    assert isinstance(model, DeepfakeEnsemble)

    evaluate.main()
    out = in_tmp_project / "results/eval"
    unc = json.loads((out / "uncertainty.json").read_text())
    for key in ("coverage", "mean_set_size", "abstain_rate", "aurc", "error_detection_auc", "ece", "nll", "brier"):
        assert key in unc, key
        assert key in unc["per_generator"]["gan_a"], key
    assert unc["method"] == "mc_dropout" and unc["n_calib"] == 40 and unc["ensemble"] == 2
    assert set(unc["methods"]) == {"single", "ensemble", "mc_dropout"}
    assert set(unc["shift"]["robustness"]) == {"jpeg_q50", "blur_sigma1.5", "downscale_x0.5", "noise_std0.05"}
    assert unc["exchangeability"]["unseen_generators"] == []
    scores = pd.read_csv(out / "scores.csv", keep_default_na=False)
    assert set(scores["prediction_set"]) <= {"real", "fake", "real|fake", ""}
    assert (scores["uncertainty"] >= 0).all() and (scores["uncertainty"] <= 1).all()
    for name in ("risk_coverage", "reliability", "coverage", "right_wrong"):
        assert (out / "figures" / f"uncertainty_{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert list(pd.read_csv(out / "plots/risk_coverage.csv").columns) == ["coverage", "risk"]


def test_evaluate_names_an_unseen_generator(in_tmp_project: Path) -> None:
    csvs = make_splits(in_tmp_project, {"train": 32, "val": 16, "calib": 24, "test": 24})
    for split in ("train", "val", "calib"):  # gan_b only in test: leave_one_generator_out
        frame = pd.read_csv(csvs[split], keep_default_na=False)
        frame[frame["generator"] != "gan_b"].to_csv(csvs[split], index=False)
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=1, ensemble=1))
    set_params(in_tmp_project / "params.yaml", "evaluate", threads=1, counterfactual=False, mc_dropout_passes=3)
    from stages import evaluate, train_classifier

    train_classifier.main()
    evaluate.main()
    unc = json.loads((in_tmp_project / "results/eval/uncertainty.json").read_text())
    assert unc["exchangeability"]["unseen_generators"] == ["gan_b"]
    assert "gan_b" in unc["exchangeability"]["coverage_unseen"] and "does not hold" in unc["exchangeability"]["note"]
    assert set(unc["methods"]) == {"single", "mc_dropout"}


def test_predict_gives_uncertainty_and_the_calibrated_set(tmp_path: Path) -> None:
    faces = FacesParams(crop_size=32, detect_side=64, on_miss="center", device="cpu")
    net = small_net(0.3)
    spec = ArchSpec("cnn", 0.3, 1, 4, "plain")
    ckpt_path = tmp_path / "model.pt"
    save_checkpoint(
        ckpt_path,
        ClassifierCheckpoint(
            net.state_dict(), spec.to_dict(), 1.0, 0.5, "youden", [0.5] * 3, [0.5] * 3, 32, as_dict(faces), {}
        ),
    )
    model, ckpt = load_model(ckpt_path)
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        Image.fromarray(synthetic_face(rng, i % 2 == 1, 64)).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    cropper = FaceCropper(faces, device=CPU, detector=CentreBoxDetector())
    cal_p, cal_y = scores_with_known_distribution(100, rng)
    conformal = tmp_path / "conformal.json"
    payload = {
        "mc_dropout_passes": 5,
        "seed": 0,
        "alpha": 0.0,
        "calibration": ConformalSets.fit(cal_p, cal_y).to_dict(),
    }
    conformal.write_text(json.dumps({**payload, "checkpoint_sha1": "another checkpoint"}))
    stale = load_scorer(model, ckpt, ckpt_path, CPU, 4, conformal)
    assert stale.conformal is None and "another checkpoint" in stale.note
    from core.io import sha1_file

    conformal.write_text(json.dumps({**payload, "checkpoint_sha1": sha1_file(ckpt_path)}))
    scorer = load_scorer(model, ckpt, ckpt_path, CPU, 4, conformal)
    preds = Predictor(model, ckpt, cropper, CPU, 4, scorer).files(files)
    assert all(p.prediction_set == "real|fake" for p in preds)  # alpha 0: every label, never empty
    assert all(p.uncertainty is not None and 0 <= p.uncertainty <= 1 for p in preds)
    assert scorer.passes == 5
    two = FaceCropper(faces, device=CPU, detector=TwoBoxDetector())
    every = Predictor(model, ckpt, two, CPU, 4, scorer, every_face=True).files(files[:2])
    assert [p.face for p in every] == [0, 1, 0, 1] and every[0].box != every[1].box
    assert every[0].box is not None and every[0].box[0] < every[1].box[0]  # the more probable (left) face first
    assert all(p.prediction_set == "real|fake" and p.uncertainty is not None for p in every)


def test_report_compares_uncertainty_across_iterations() -> None:
    from report.document import Heading, Table
    from report.iterations import CLASSIFIER, Iteration, TrackData
    from report.runs import RunInfo
    from report.uncertainty import uncertainty_blocks

    def ev(start: int, coverage: float, passes: str) -> RunInfo:
        metrics = {
            "uncertainty.coverage": coverage,
            "uncertainty.aurc": 0.05,
            "uncertainty.per_generator.gan_a.coverage": 0.5,
        }
        params = {"evaluate.alpha": "0.1", "evaluate.mc_dropout_passes": passes}
        return RunInfo(f"e{start}", "evaluate", "FINISHED", start, start + 1, params, metrics, {})

    train = RunInfo("t", "train_classifier", "FINISHED", 0, 1, {"classifier.ensemble": "2"}, {}, {})
    its = [Iteration(1, train, ev(2, 0.91, "0")), Iteration(2, train, ev(4, 0.70, "20")), Iteration(3, None, None)]
    blocks = uncertainty_blocks(TrackData(CLASSIFIER, [], "roc_auc", frozenset(), its))
    assert isinstance(blocks[0], Heading) and blocks[0].text == "Uncertainty"
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert len(table.rows) == 2  # iterations with an evaluation run
    first, second = table.rows
    assert first[1].lines[0][0].text == "N=2, T=0, alpha=0.1" and second[1].lines[0][0].text.endswith("T=20, alpha=0.1")
    assert first[2].lines[0][0].kind == "good" and second[2].lines[0][0].kind == "bad"  # 0.70 is far from 0.90
    assert first[-1].lines[0][0].text == "gan_a 0.50"
