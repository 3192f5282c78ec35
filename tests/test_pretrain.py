"""pretrain: the SimCLR loss falls, the encoder round-trips into the classifier, label_fraction keeps groups
whole with both labels, and the stage trains on the train split only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from classifier.data import SplitData, label_subset, load_split
from core.errors import InputError, MissingInputError
from core.io import read_csv
from core.params import ClassifierParams, PretrainParams
from models.classifier import ArchSpec, build_classifier
from selfsup import data as ssl_data
from selfsup.augment import ViewMaker
from selfsup.encoder import EncoderFile, arch_key, encoder_spec, feature_width, load_into
from selfsup.probe import knn_auc
from selfsup.train import SimCLR, nt_xent, pretrain_loop
from tests.classifier_fixtures import make_splits, synthetic_face, tiny_classifier_params
from tests.helpers import set_params

TINY = {
    "arch": "cnn",
    "cnn_depth": 2,
    "cnn_width": 8,
    "image_size": 32,
    "batch_size": 16,
    "epochs": 2,
    "lr": 0.003,
    "proj_hidden": 32,
    "proj_dim": 16,
    "max_minutes": 0,
    "device": "cpu",
    "threads": 1,
}


def tiny_params(**overrides: object) -> PretrainParams:
    return dataclasses.replace(PretrainParams(), **{**TINY, **overrides})  # type: ignore[arg-type]


def tiny_model(p: PretrainParams) -> SimCLR:
    net = build_classifier(encoder_spec(p))
    return SimCLR(net.backbone, feature_width(net), p.proj_hidden, p.proj_dim)


def test_nt_xent_is_low_when_partners_agree_and_high_when_they_do_not() -> None:
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    matched = nt_xent(z, z + 0.01 * torch.randn_like(z), 0.2)
    shuffled = nt_xent(z, z[torch.randperm(8, generator=torch.Generator().manual_seed(1))], 0.2)
    assert float(matched) < 0.5 < float(shuffled)


def test_simclr_loss_falls_on_a_tiny_synthetic_set(one_torch_thread: None) -> None:
    rng = np.random.default_rng(0)
    images = np.stack([synthetic_face(rng, i % 2 == 1, 32) for i in range(64)]).transpose(0, 3, 1, 2).copy()
    p = tiny_params(epochs=8, aug_crop_scale=0.6)
    torch.manual_seed(0)
    mean, std = encoder_spec(p).normalisation
    result = pretrain_loop(
        tiny_model(p),
        images,
        p,
        ViewMaker.from_params(p, mean, std),
        torch.device("cpu"),
        lambda b: 0.5,
        progress=False,
    )
    losses = [r.loss for r in result.history]
    assert len(losses) == 8 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses


def test_views_are_two_different_normalised_draws() -> None:
    p = tiny_params(aug_blur_prob=1.0, aug_jpeg_prob=1.0)
    views = ViewMaker.from_params(p, (0.5,) * 3, (0.5,) * 3)
    batch = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    a, b = views.pair(batch)
    assert a.shape == b.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b) and float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6
    names = [
        type(t).__name__ for t in ViewMaker.from_params(PretrainParams(), (0.5,) * 3, (0.5,) * 3).transform.transforms
    ]
    assert "RandomApply" in names and len(names) == 4  # defaults: no blur, no JPEG


def test_knn_probe_separates_separable_features() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    feats = rng.normal(size=(40, 8)) + y[:, None] * 3.0
    assert knn_auc(feats[:20], y[:20], feats[20:], y[20:], k=5) > 0.95


def test_encoder_round_trips_into_the_classifier(tmp_path: Path) -> None:
    p = tiny_params()
    spec = encoder_spec(p)
    model = tiny_model(p)
    with torch.no_grad():
        for t in model.backbone.parameters():
            t.add_(0.1)
    mean, std = spec.normalisation
    path = tmp_path / "encoder.pt"
    EncoderFile(model.backbone.state_dict(), arch_key(spec), list(mean), list(std), 32).save(path)
    payload = torch.load(path, weights_only=True)  # plain types only
    assert payload["arch"] == {"arch": "cnn", "cnn_depth": 2, "cnn_width": 8, "cnn_block": "residual"}

    cls_spec = ArchSpec.from_params(ClassifierParams(**tiny_classifier_params(init="ssl")))  # type: ignore[arg-type]
    classifier = build_classifier(cls_spec)
    load_into(classifier, cls_spec, path)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(classifier.backbone.state_dict()[key], value), key
    x = torch.randn(2, 3, 32, 32)
    model.eval(), classifier.eval()
    assert torch.allclose(classifier.backbone(x), model.backbone(x))


def test_ssl_init_refuses_a_missing_or_mismatched_encoder(tmp_path: Path) -> None:
    p = tiny_params()
    spec = encoder_spec(p)
    cls_spec = dataclasses.replace(spec, cnn_width=16)
    with pytest.raises(MissingInputError, match="init is 'ssl'") as err:
        load_into(build_classifier(cls_spec), cls_spec, tmp_path / "absent.pt")
    assert "dvc repro pretrain" in err.value.hint
    path = tmp_path / "encoder.pt"
    mean, std = spec.normalisation
    EncoderFile(tiny_model(p).backbone.state_dict(), arch_key(spec), list(mean), list(std), 32).save(path)
    with pytest.raises(InputError, match="pretrained as .*cnn_width.: 8"):
        load_into(build_classifier(cls_spec), cls_spec, path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a loadable encoder"):
        load_into(build_classifier(spec), spec, tmp_path / "junk.pt")


def grouped_split(n_groups: int, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, n_groups)
    groups = np.repeat([f"g{i}" for i in range(n_groups)], sizes)
    fake = np.repeat(rng.random(n_groups) < 0.3, sizes)  # a group holds one label; fakes are rarer
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(groups))], "group": groups, "label": "real"})
    frame.loc[fake, "label"] = "fake"
    return SplitData("train", frame, np.zeros((len(frame), 3, 2, 2), np.uint8), fake.astype(np.float32))


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_label_fraction_keeps_groups_whole_and_both_labels(fraction: float) -> None:
    split = grouped_split(120)
    sub = label_subset(split, fraction, seed=3)
    kept = set(sub.frame["group"])
    assert all((split.frame["group"].isin(kept)).sum() == sub.frame["group"].isin(kept).sum() for _ in [0])
    for group in kept:  # every kept group is complete
        assert (sub.frame["group"] == group).sum() == (split.frame["group"] == group).sum()
    assert set(sub.labels.tolist()) == {0.0, 1.0}
    assert abs(len(sub) - fraction * len(split)) <= 8 + 0.1 * len(split) * fraction
    assert np.array_equal(sub.labels, (sub.frame["label"] == "fake").to_numpy(np.float32))
    again = label_subset(split, fraction, seed=3)
    assert again.frame["id"].tolist() == sub.frame["id"].tolist()  # seeded
    assert label_subset(split, fraction, seed=4).frame["id"].tolist() != sub.frame["id"].tolist()
    assert label_subset(split, 1.0, seed=3) is split


def test_stage_trains_on_train_rows_only_and_writes_a_loadable_encoder(
    in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages import pretrain, train_classifier

    make_splits(in_tmp_project, {"train": 24, "val": 12, "test": 12})
    train_ids = set(read_csv(in_tmp_project / "data/splits/train.csv")["id"])
    (in_tmp_project / "data/splits/test.csv").unlink()  # the stage must not need it
    set_params(in_tmp_project / "params.yaml", "pretrain", **{**TINY, "batch_size": 8, "probe_k": 3})
    seen: list[set[str]] = []
    real_split_crops = ssl_data.split_crops

    def spy(name: str, size: int, progress: bool = True) -> ssl_data.LabelledCrops:
        crops = real_split_crops(name, size, progress)
        frame = read_csv(ssl_data.SPLITS_DIR / f"{name}.csv")
        seen.append(set(frame["id"]) if name == "train" else set())
        return crops

    trained_on: list[int] = []
    real_loop = pretrain.pretrain_loop

    def loop_spy(model: SimCLR, images: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        trained_on.append(len(images))
        return real_loop(model, images, *args, **kwargs)

    monkeypatch.setattr(pretrain, "split_crops", spy)
    monkeypatch.setattr(pretrain, "pretrain_loop", loop_spy)
    pretrain.main()
    assert seen[0] == train_ids and trained_on == [len(train_ids)]  # the training set is the train split, exactly
    out = in_tmp_project / "results/pretrain"
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["knn_val_roc_auc"].between(0, 1).all()
    assert (out / "metrics.json").exists() and (out / "history.png").exists()

    make_splits(in_tmp_project, {"train": 24, "val": 12, "test": 12})
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(init="ssl", epochs=1))
    train_classifier.main()
    ckpt = torch.load(in_tmp_project / "results/classifier/model.pt", weights_only=True)
    assert ckpt["info"]["init"] == "ssl"

    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(init="ssl", cnn_width=16))
    with pytest.raises(InputError, match="pretrained as"):
        train_classifier.main()


def test_split_crops_reads_only_the_named_split(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 8, "val": 4, "test": 4})
    crops = ssl_data.split_crops("train", 32, progress=False)
    split = load_split(in_tmp_project / "data/splits/train.csv", 32, progress=False)
    assert np.array_equal(np.asarray(crops.images), np.asarray(split.images))
    assert np.array_equal(crops.labels, split.labels)


def test_report_groups_label_efficiency_iterations_into_one_figure_and_table() -> None:
    from report.document import Figure, Table
    from report.iterations import CLASSIFIER, Iteration, TrackData
    from report.study import study_blocks

    iterations = []
    for n, (source, init, fraction, probe, auc) in enumerate(
        [
            ("folder:../shared/data/setA", "none", 0.1, "False", 0.6),
            ("folder:../shared/data/setA", "none", 1.0, "False", 0.7),
            ("folder:../shared/data/setA", "ssl", 0.1, "True", 0.65),
            ("folder:../shared/data/setA", "ssl", 1.0, "True", 0.8),
            ("folder:../shared/data/setB", "imagenet", 0.1, "False", 0.9),
            ("folder:../shared/data/setA", "none", 1.0, "False", 0.75),  # a rerun: the latest counts
        ]
    ):
        params = {
            "data.source": source,
            "classifier.init": init,
            "classifier.label_fraction": str(fraction),
            "classifier.linear_probe": probe,
        }
        params["input of train_classifier (sha1)"] = "sha" + source[-1]
        iterations.append(Iteration(number=n + 1, train=None, eval=None, params=params, metrics={"roc_auc": auc}))
    iterations.append(Iteration(number=7, train=None, eval=None, params={}, metrics={"roc_auc": 0.5}))  # not in it
    track = TrackData(CLASSIFIER, ["roc_auc"], "roc_auc", frozenset(), iterations)
    blocks = study_blocks(track, [], 4)
    assert any(isinstance(b, Figure) and b.name == "label_efficiency.png" and b.png for b in blocks)
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert table.header == ["data", "init", "mode", "0.1 of labels", "1 of labels"]
    cells = {tuple(c.lines[0][0].text for c in row[:3]): [c.lines[0][0].text for c in row[3:]] for row in table.rows}
    assert cells[("train.csv shaA", "none", "fine-tune")] == ["0.6", "0.75"]  # not a DVC experiment: by inputs
    assert cells[("train.csv shaA", "ssl", "linear probe")] == ["0.65", "0.8"]
    assert cells[("train.csv shaB", "imagenet", "fine-tune")] == ["0.9", "—"]
    assert study_blocks(TrackData(CLASSIFIER, ["roc_auc"], "roc_auc", frozenset(), iterations[-1:]), [], 4) == []
