"""Data-parallel training: the primitives, the launcher, and both training stages under torchrun
(gloo backend, 2 CPU processes, tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from classifier.checkpoint import load_model
from classifier.infer import infer_logits
from classifier.train import train_loop
from core import distributed
from core.distributed import World, local_processes, relaunch_under_torchrun, world_from_env
from core.params import GeneratorParams, parse_block
from generator.sampling import load_generator
from generator.train import train
from tests.classifier_fixtures import loop_params, make_splits, tiny_classifier_params
from tests.conftest import PROJECT_ROOT
from tests.helpers import set_params

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
TINY_GENERATOR = dict(
    image_size=32,
    latent_dim=8,
    g_width=8,
    d_width=8,
    batch_size=8,
    grid_size=2,
    epochs=2,
    device="cpu",
    threads=1,
    max_minutes=0,
)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def stage_runs(project: Path, stage: str) -> pd.DataFrame:
    """The stage's runs in the project's DB (the workers logged there; an earlier in-process test may
    have pointed this process's MLflow elsewhere)."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["deepfake-pipeline"])
    return runs[runs["tags.stage"] == stage]


# --- in one process ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_partition_every_global_batch(size: int) -> None:
    batch = np.random.default_rng(0).permutation(11)
    shares = [World(rank=r, size=size).shard(batch) for r in range(size)]
    assert sorted(np.concatenate(shares).tolist()) == list(range(11))  # disjoint and complete
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_one_process_world_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = world_from_env()
    assert not world.distributed and world.is_main and world.size == 1
    assert world.gather(3) == [3] and world.mean({"a": 2.0}) == {"a": 2.0} and world.any(True)
    net = torch.nn.Linear(2, 1)
    net(torch.ones(1, 2)).sum().backward()
    grad = net.weight.grad.clone()
    world.average_gradients(net)
    assert torch.equal(net.weight.grad, grad)


def test_relaunch_only_when_more_processes_are_asked_outside_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[list[str]] = []
    monkeypatch.setattr(
        distributed.subprocess, "run", lambda cmd, check: launched.append(cmd) or subprocess.CompletedProcess(cmd, 3)
    )
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert relaunch_under_torchrun("stages.train_classifier", 1) is None and launched == []
    assert relaunch_under_torchrun("stages.train_classifier", 2) == 3  # the workers' exit code
    assert "--nproc-per-node=2" in launched[0] and launched[0][-2:] == ["-m", "stages.train_classifier"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # already a torchrun worker: run in place
    assert relaunch_under_torchrun("stages.train_classifier", 2) is None and len(launched) == 1
    assert local_processes(0) == max(1, torch.cuda.device_count())


def test_a_global_batch_too_small_to_split_is_a_clear_error(tmp_path: Path) -> None:
    x = np.zeros((16, 3, 8, 8), dtype=np.uint8)
    y = np.array([0.0, 1.0] * 8, dtype=np.float32)
    from models.classifier import ArchSpec, build_classifier

    model = build_classifier(ArchSpec("cnn", 0.0, 1, 4, "plain"))
    with pytest.raises(ValueError, match="at least 8"):
        train_loop(
            model,
            x,
            y,
            x,
            y,
            loop_params(batch_size=4),
            torch.device("cpu"),
            (0.5,) * 3,
            (0.5,) * 3,
            world=World(rank=0, size=4),
        )
    p = parse_block("generator", GeneratorParams, {**TINY_GENERATOR, "batch_size": 4})
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        train(
            p,
            torch.zeros((16, 3, 32, 32), dtype=torch.uint8),
            tmp_path,
            "h",
            torch.device("cpu"),
            world=World(rank=0, size=4),
        )


# --- under torchrun (2 gloo workers) -------------------------------------------------------------


def test_primitives_under_torchrun(tmp_path: Path) -> None:
    proc = run([*TORCHRUN, "-m", "tests.ddp_worker"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}/2: data-parallel primitives ok" in proc.stdout


@pytest.mark.slow
def test_train_classifier_with_two_processes(in_tmp_project: Path) -> None:
    make_splits(in_tmp_project, {"train": 32, "val": 16, "test": 8})
    set_params(in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=2, processes=2))
    proc = run([sys.executable, "-m", "stages.train_classifier"], in_tmp_project)  # relaunches under torchrun
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stages.train_classifier: 2 data-parallel processes" in proc.stdout
    assert proc.stdout.count("train_classifier: 1 member(s); member 0 best epoch") == 1  # only rank 0 reports
    out = in_tmp_project / "results/classifier"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["processes"] == 2 and summary["n_train"] == 32 and summary["epochs_run"] == 2
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [1, 2]
    model, ckpt = load_model(out / "model.pt")
    val = np.stack([np.zeros((3, 32, 32), np.uint8), np.full((3, 32, 32), 255, np.uint8)])
    assert np.isfinite(infer_logits(model, val, 2, torch.device("cpu"), tuple(ckpt.mean), tuple(ckpt.std))).all()
    runs = stage_runs(in_tmp_project, "train_classifier")
    assert len(runs) == 1 and runs["tags.classifier.world_size"].iloc[0] == "2"
    steps = mlflow.MlflowClient().get_metric_history(runs["run_id"].iloc[0], "val_roc_auc")
    assert sorted(m.step for m in steps) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "wgan_gp"])
def test_train_generator_under_torchrun(in_tmp_project: Path, model: str) -> None:
    make_splits(in_tmp_project, {"train": 32, "val": 4, "test": 4})  # 16 real train faces
    set_params(in_tmp_project / "params.yaml", "generator", **TINY_GENERATOR, model=model)
    proc = run([*TORCHRUN, "-m", "stages.train_generator"], in_tmp_project)  # launched from outside
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 processes x 1 CPU threads)" in proc.stdout and proc.stdout.count("train_generator: 2/2 epochs") == 1
    out = in_tmp_project / "results/generator"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["complete"] and summary["n_train"] == 16
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    net, _, payload = load_generator(out / "model.pt", torch.device("cpu"))
    assert payload["epochs_done"] == 2 and torch.isfinite(net(torch.randn(2, 8))).all()
    runs = stage_runs(in_tmp_project, "train_generator")
    assert len(runs) == 1 and runs["tags.generator.world_size"].iloc[0] == "2"


@pytest.mark.slow
def test_budget_stops_agree_across_ranks_and_the_generator_resumes(in_tmp_project: Path) -> None:
    """A time budget must stop every rank at the same step (a rank left waiting would hang the job)."""
    make_splits(in_tmp_project, {"train": 32, "val": 16, "test": 4})
    set_params(
        in_tmp_project / "params.yaml", "classifier", **tiny_classifier_params(epochs=3, processes=2, max_minutes=1e-6)
    )
    proc = run([sys.executable, "-m", "stages.train_classifier"], in_tmp_project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((in_tmp_project / "results/classifier/metrics.json").read_text())
    assert summary["stop_reason"] == "time_budget" and summary["epochs_run"] == 1 and summary["processes"] == 2

    set_params(
        in_tmp_project / "params.yaml",
        "generator",
        **{**TINY_GENERATOR, "epochs": 3, "max_minutes": 1e-6},
        model="dcgan",
        processes=2,
    )
    proc = run([sys.executable, "-m", "stages.train_generator"], in_tmp_project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((in_tmp_project / "results/generator/summary.json").read_text())
    assert first["epochs_done"] == 1 and first["stopped_by_budget"]
    set_params(in_tmp_project / "params.yaml", "generator", max_minutes=0)
    proc = run([sys.executable, "-m", "stages.train_generator"], in_tmp_project)  # every rank reads the checkpoint
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = json.loads((in_tmp_project / "results/generator/summary.json").read_text())
    assert second["resumed_from_epoch"] == 1 and second["epochs_done"] == 3 and second["complete"]
    assert list(pd.read_csv(in_tmp_project / "results/generator/history.csv")["epoch"]) == [1, 2, 3]
