"""The iteration workflow: `dvc exp run -S ...` → new MLflow runs + a new `dvc exp show` row + a report.

Two tiny iterations of the whole DAG on the synthetic set in a temporary git+DVC copy of the project: the
first runs in the workspace, the second is queued and run by `dvc exp run --run-all` in DVC's temporary copy,
which must still log to the main checkout's MLflow DB; `dvc exp apply` + `dvc repro report` then bring it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import set_params
from tests.test_pipeline import mlflow_stages, project_copy, run

TINY = {
    "data": {"source": "synthetic", "synthetic_identities": 10},
    "faces": {"on_miss": "center", "crop_size": 64},
    "split": {"train": 0.4, "val": 0.2, "calib": 0.1},  # test 0.3: fid needs >= 2 real test faces
    "classifier": {
        "arch": "cnn",
        "init": "none",
        "cnn_depth": 2,
        "cnn_width": 8,
        "epochs": 1,
        "image_size": 32,
        "batch_size": 8,
        "threads": 1,
        "device": "cpu",
        "ensemble": 1,
    },
    "federated": {  # train_federated is in the DAG: two tiny iid clients, one round, no baselines
        "partition": "iid",
        "num_clients": 2,
        "rounds": 1,
        "arch": "cnn",
        "init": "none",
        "image_size": 32,
        "cnn_depth": 2,
        "cnn_width": 8,
        "batch_size": 8,
        "cpus": 1,
        "baselines": False,
    },
    "pretrain": {
        "arch": "cnn",
        "cnn_depth": 2,
        "cnn_width": 8,
        "image_size": 32,
        "epochs": 1,
        "batch_size": 8,
        "probe_k": 3,
        "threads": 1,
        "device": "cpu",
    },
    "evaluate": {"worst_k": 4, "threads": 1, "device": "cpu", "counterfactual": False, "mc_dropout_passes": 2},
    "generator": {
        "model": "dcgan",
        "image_size": 32,
        "latent_dim": 8,
        "g_width": 8,
        "d_width": 8,
        "epochs": 1,
        "batch_size": 8,
        "grid_size": 2,
        "threads": 1,
        "device": "cpu",
    },
    "fid": {
        "n_samples": 16,
        "batch_size": 8,
        "kid_subset_size": 4,
        "kid_subsets": 2,
        "precision_recall": False,
        "references": False,
    },
}
ITERATIONS = [
    ("baseline", {"classifier.lr": "0.001", "generator.lr_g": "0.0002"}),
    ("lower-lr-more-dropout", {"classifier.lr": "0.0003", "classifier.dropout": "0.5", "generator.lr_g": "0.0001"}),
]


pytestmark = pytest.mark.slow  # two DAG runs: about 5 minutes on 2 cores


def exp_sets(name: str, changes: dict[str, str]) -> list[str]:
    sets = [arg for key, value in changes.items() for arg in ("-S", f"{key}={value}")]
    return [*sets, "-S", f"tracking.note='{name} note'"]


@pytest.fixture(scope="module")
def iterated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = project_copy(tmp_path_factory.mktemp("iter") / "proj")
    for block, values in TINY.items():
        set_params(root / "params.yaml", block, **values)
    (root / ".gitignore").write_text("/data/\n/results/\n/logs/\n/mlflow.db\n/mlartifacts/\n")
    for cmd in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        ["dvc", "init", "-q"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "dvc init"],
    ):
        run(cmd, root)
    (first, first_changes), (queued_name, queued_changes) = ITERATIONS
    # no MLFLOW_TRACKING_URI: the stages must find <main checkout>/mlflow.db themselves
    run(["dvc", "exp", "run", "--name", first, *exp_sets(first, first_changes)], root, tracking_env=False)
    queue = ["dvc", "exp", "run", "--queue", "--name", queued_name, *exp_sets(queued_name, queued_changes)]
    run(queue, root, tracking_env=False)
    run(["dvc", "exp", "run", "--run-all", "--jobs", "1"], root, tracking_env=False)  # runs in a temp copy
    run(["dvc", "exp", "apply", queued_name], root, tracking_env=False)  # its params and outputs into the workspace
    run(["dvc", "repro", "report"], root, tracking_env=False)  # the report is not cached: it reads MLflow
    return root


def test_each_iteration_is_a_new_mlflow_run_per_training_stage(iterated: Path) -> None:
    stages = mlflow_stages(iterated / "mlflow.db")
    assert stages.count("train_classifier") == 2
    assert stages.count("train_generator") == 2
    assert stages.count("evaluate") == 2
    assert stages.count("download") == 1  # data stages did not rerun: their params never changed


def test_each_iteration_is_a_row_of_dvc_exp_show(iterated: Path) -> None:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], iterated).stdout)
    names = {exp["name"] for rev in shown for exp in (rev.get("experiments") or []) for exp in exp["revs"]}
    assert {name for name, _ in ITERATIONS} <= names


def test_report_lists_the_iterations_with_their_param_diffs(iterated: Path) -> None:
    html = (iterated / "results/report/index.html").read_text()
    data = json.loads((iterated / "results/report/iterations.json").read_text())
    rows = data["classifier"]["iterations"] if "classifier" in data else data["tracks"]["classifier"]["iterations"]
    assert len(rows) == 2
    text = json.dumps(rows)
    assert "0.0003" in text and "0.5" in text  # the lr and dropout changes appear as diffs
    for name, _ in ITERATIONS:
        assert f"{name} note" in html
    assert "http://" not in html and "https://" not in html


def test_the_queued_experiment_logged_to_the_main_checkout(iterated: Path) -> None:
    assert not list(iterated.glob(".dvc/tmp/exps/**/mlflow.db"))  # nothing logged inside the temp workspace
    assert not run(["dvc", "queue", "status"], iterated).stdout.count("Failed")
