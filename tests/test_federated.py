"""Federated training (issue 14): partitions, Flower's averaging, and the stage through Flower's simulation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import GaussianPrivacyEvent
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from core.errors import InputError
from core.params import FacesParams, FederatedParams, as_dict
from federated.partition import partition
from tests.classifier_fixtures import make_splits
from tests.helpers import set_params

GENS = ("gen_a", "gen_b", "gen_c")


def frame(n_groups: int = 30, seed: int = 0) -> pd.DataFrame:
    """Groups of one real and one or two fakes (of different generators), like identity groups."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        rows.append({"id": f"{g}r", "label": "real", "generator": "real", "group": f"g{g}"})
        for gen in rng.choice(GENS, size=int(rng.integers(1, 3)), replace=False):
            rows.append({"id": f"{g}{gen}", "label": "fake", "generator": str(gen), "group": f"g{g}"})
    rows += [{"id": f"solo{i}", "label": "real", "generator": "real", "group": f"solo{i}"} for i in range(9)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("scheme", ["by_generator", "iid", "dirichlet"])
def test_partitions_are_group_disjoint(scheme: str) -> None:
    f = frame()
    part = partition(f, FederatedParams(partition=scheme, num_clients=3, dirichlet_alpha=1.0))
    groups = [set(f["group"].to_numpy()[rows]) for rows in part.clients]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not groups[i] & groups[j], (scheme, groups[i] & groups[j])
    held = np.concatenate(part.clients)
    assert len(held) == len(set(held.tolist()))  # no row twice
    assert len(held) + part.dropped == len(f)
    if scheme != "by_generator":
        assert part.dropped == 0


def test_by_generator_gives_each_client_one_generator_and_reals() -> None:
    f = frame()
    part = partition(f, FederatedParams(partition="by_generator", num_clients=3))
    assert part.names == list(GENS)
    for name, rows in zip(part.names, part.clients):
        assert set(f["generator"].to_numpy()[rows]) == {name, "real"}
    reals = [int((f["generator"].to_numpy()[rows] == "real").sum()) for rows in part.clients]
    assert sum(reals) == int((f["generator"] == "real").sum())  # every real held by one client
    assert min(reals) > 0


def test_by_generator_makes_one_client_per_generator_found() -> None:
    f = frame()
    assert partition(f, FederatedParams(partition="by_generator", num_clients=2)).names == list(GENS)
    single = f[f["generator"].isin(["real", GENS[0]])].reset_index(drop=True)
    part = partition(single, FederatedParams(partition="by_generator", num_clients=3))
    assert part.names == [GENS[0]] and len(part.clients[0]) == len(single)
    with pytest.raises(InputError, match="has none"):
        partition(f[f["generator"] == "real"].reset_index(drop=True), FederatedParams(partition="by_generator"))


def test_fedavg_of_identical_updates_is_the_update() -> None:
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).state_dict()
    records = [
        RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": n})}) for n in (3, 5, 11)
    ]
    averaged = aggregate_arrayrecords(records, "num-examples").to_torch_state_dict()
    assert set(averaged) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(averaged[k].to(v.dtype), v)
    different = [
        RecordDict(
            {"arrays": ArrayRecord({k: v + i for k, v in state.items()}), "metrics": MetricRecord({"num-examples": 1})}
        )
        for i in (0, 2)
    ]
    mean = aggregate_arrayrecords(different, "num-examples").to_torch_state_dict()
    torch.testing.assert_close(mean["0.weight"], state["0.weight"] + 1)


TINY = {
    "num_clients": 2,
    "rounds": 2,
    "arch": "cnn",
    "init": "none",
    "image_size": 32,
    "cnn_depth": 2,
    "cnn_width": 8,
    "batch_size": 16,
    "lr": 0.003,
    "augment": False,
    "cpus": 1,
    "strategy": "fedavg",
    "baselines": True,
    "partition": "by_generator",
}


def running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_two_clients_two_rounds_through_flower_simulation(in_tmp_project: Path) -> None:
    """The stage end to end on tiny images: 2 clients (one generator each), 2 rounds, then predict."""
    import ray

    from classifier.checkpoint import load_model
    from classifier.predict import Predictor, faces_params_for
    from faces.crop import FaceCropper
    from stages import train_federated
    from tests.test_predict import CPU, CentreBoxDetector

    make_splits(in_tmp_project, {"train": 48, "val": 24, "test": 24})
    set_params(in_tmp_project / "params.yaml", "federated", **TINY)
    train_federated.main()
    assert not ray.is_initialized()
    left = [c.pid for c in psutil.Process().children(recursive=True) if running(c)]
    assert not left, left  # no Ray process left (a zombie has exited; only its entry remains)

    out = in_tmp_project / "results/federated"
    history = pd.read_csv(out / "history.csv")
    assert history["round"].tolist() == [0, 1, 2]
    assert history["clients_trained"].tolist() == [0, 2, 2]
    assert history["val_roc_auc"].between(0, 1).all()
    clients = pd.read_csv(out / "clients.csv")
    assert sorted(clients["client"].unique()) == [0, 1] and len(clients) == 4
    parts = pd.read_csv(out / "partitions.csv")
    assert [sorted(set(g)) for _, g in parts.groupby("client")["generator"]] == [
        ["gan_a", "real"],
        ["gan_b", "real"],
    ]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"federated_fedavg", "central", "alone_gan_a", "alone_gan_b"}
    assert 1 <= metrics["best_round"] <= 2
    table = pd.read_csv(out / "comparison.csv")
    assert {"roc_auc.gan_a", "roc_auc.gan_b"} <= set(table.columns)

    # predict scores photos with it, as with train_classifier's checkpoint
    model, ckpt = load_model(out / "model.pt")
    assert ckpt.info["trained_by"] == "train_federated"
    assert ckpt.temperature > 0 and ckpt.temperature == metrics["models"]["federated_fedavg"]["temperature"]
    faces, _ = faces_params_for(ckpt)
    cropper = FaceCropper(FacesParams(**{**as_dict(faces), "device": "cpu"}), device=CPU, detector=CentreBoxDetector())
    photos = sorted((in_tmp_project / "data/raw/images").glob("test*.jpg"))
    scored = [p for p in Predictor(model, ckpt, cropper, CPU).files(photos) if p.status == "ok"]
    assert len(scored) >= 4  # the rest are under data.min_side
    assert all(0.0 <= p.prob_fake <= 1.0 for p in scored)


def test_dp_wraps_the_strategy_and_accounts_epsilon() -> None:
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedProx

    from federated.server import make_strategy

    def aggregate(records: list[RecordDict], key: str) -> MetricRecord:
        return MetricRecord({})

    plain = make_strategy(FederatedParams(strategy="fedprox", proximal_mu=0.1), aggregate)
    assert isinstance(plain, FedProx) and plain.proximal_mu == 0.1
    epsilons = []
    for noise in (0.8, 1.6):
        dp = make_strategy(FederatedParams(dp="server_clipping", dp_noise_multiplier=noise), aggregate)
        assert isinstance(dp, DifferentialPrivacyServerSideFixedClipping)
        assert dp.accountant is not None and dp.clipping_norm == 10.0
        dp.accountant.compose(GaussianPrivacyEvent(noise, 3, 3), count=4)  # what 4 rounds of 3 clients record
        epsilons.append(dp.accountant.get_epsilon(1e-5))
    assert 0 < epsilons[1] < epsilons[0] < float("inf")  # more noise, less privacy spent


class FakeArtifactStore:
    """The two MlflowClient calls report.runs.Artifacts makes, over in-memory files per run."""

    def __init__(self, files: dict[str, dict[str, bytes]]) -> None:
        self.files = files

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[object]:
        from types import SimpleNamespace

        return [SimpleNamespace(path=name, is_dir=False) for name in self.files.get(run_id, {})]

    def download_artifacts(self, run_id: str, path: str, dst_path: str) -> str:
        out = Path(dst_path) / path
        out.write_bytes(self.files[run_id][path])
        return str(out)


def test_report_shows_the_latest_federated_comparison(tmp_path: Path) -> None:
    from report.document import Figure, Heading, Para, Table
    from report.federated import federated_blocks, latest_federated
    from report.runs import Artifacts, RunInfo

    comparison = pd.DataFrame(
        [
            {"model": "federated_fedprox", "roc_auc": 0.8, "eer": 0.3, "roc_auc.gen_a": 0.85, "roc_auc.gen_b": 0.75},
            {"model": "central", "roc_auc": 0.9, "eer": 0.2, "roc_auc.gen_a": 0.95, "roc_auc.gen_b": 0.85},
            {"model": "alone_gen_a", "roc_auc": 0.7, "eer": 0.4, "roc_auc.gen_a": 0.97, "roc_auc.gen_b": np.nan},
            {"model": "alone_gen_b", "roc_auc": 0.6, "eer": 0.5, "roc_auc.gen_a": 0.5, "roc_auc.gen_b": 0.8},
        ]
    )
    history = pd.DataFrame({"round": [0, 1, 2], "val_loss": [0.7, 0.6, 0.65], "val_roc_auc": [0.5, 0.8, 0.7]})
    params = {"federated.strategy": "fedprox", "federated.num_clients": "2", "federated.partition": "by_generator"}
    old = RunInfo("old", "train_federated", "FINISHED", 1, 2, {}, {"federated_fedavg.test.roc_auc": 0.1}, {})
    new = RunInfo("new", "train_federated", "FINISHED", 3, 4, params, {}, {})
    other = RunInfo("ev", "evaluate", "FINISHED", 5, 6, {}, {}, {})
    store = FakeArtifactStore(
        {
            "old": {"comparison.csv": b"model,roc_auc\nfederated_fedavg,0.1\n"},
            "new": {
                "comparison.csv": comparison.to_csv(index=False).encode(),
                "history.csv": history.to_csv().encode(),
            },
        }
    )
    fed = latest_federated([old, new, other], Artifacts(store, tmp_path))
    assert fed is not None and fed.run is new and fed.source == "comparison.csv"
    blocks = federated_blocks(fed, 5)
    assert isinstance(blocks[0], Heading) and blocks[0].text == "5 Federated"
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert table.header == ["model", "ROC-AUC", "ROC-AUC gen_a", "ROC-AUC gen_b"]  # eer is not shown
    cells = [[c.lines[0][0] for c in row] for row in table.rows]
    assert [[s.text for s in row] for row in cells] == [
        ["central (all train images pooled)", "0.900", "0.950", "0.850"],
        ["federated (FedProx)", "0.800", "0.850", "0.750"],
        ["client gen_a alone", "0.700", "0.970", "—"],
        ["client gen_b alone", "0.600", "0.500", "0.800"],
    ]
    assert [cells[0][1].kind, cells[2][2].kind, cells[1][1].kind] == ["strong", "strong", ""]  # best of each column
    assert any(isinstance(b, Figure) and b.name == "federated_rounds.png" and b.png for b in blocks)
    assert not any(isinstance(b, Para) and "No baselines" in b.text for b in blocks)

    # no comparison.csv artifact: the overall ROC-AUC from the run's MLflow metrics, no per-generator columns
    only_metrics = RunInfo("m", "train_federated", "FINISHED", 7, 8, {}, {"federated_fedavg.test.roc_auc": 0.75}, {})
    fed = latest_federated([new, only_metrics], Artifacts(FakeArtifactStore({}), tmp_path))
    assert fed is not None and fed.source == "MLflow metrics" and fed.history is None
    blocks = federated_blocks(fed, 5)
    (table,) = [b for b in blocks if isinstance(b, Table)]
    assert [[c.lines[0][0].text for c in row] for row in table.rows] == [["federated (FedAvg)", "0.750"]]
    assert any(isinstance(b, Para) and "No baselines" in b.text for b in blocks)
    assert not any(isinstance(b, Figure) for b in blocks)

    # the federated stage never ran: no section
    assert latest_federated([other], Artifacts(FakeArtifactStore({}), tmp_path)) is None
    assert federated_blocks(None, 5) == []
