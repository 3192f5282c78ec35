"""Shared fixtures: small images made on the fly, the shared real data when it is present."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # Flower reads it at import (tests/test_federated.py)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_set(name: str) -> Path:
    """Path of a set in ../shared/data, or a clean skip when it is absent."""
    path = SHARED_DATA / name
    if not (path / "manifest.csv").exists():
        pytest.skip(f"{path} is absent: the integration test needs ../shared/data/{name}")
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject addopts): one worker per core this process may use, at most 4.

    Fresh-clone CI on 2 cores, 2026-11-26: 2 workers 1113 s of tests, 3 workers 1305 s (the DAG tests slow down
    more than the waits on subprocess starts gain); serially (commit c361c70) 1190 s.
    """
    return max(1, min(4, len(os.sched_getaffinity(0))))


# The two longest files (each runs the DAG: minutes) start first, one per xdist worker; then the other slow ones.
LONGEST_FIRST = ("test_iterations.py", "test_hardfakevsreal.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest files first, so no long fixture starts late on a worker (the suite's wall time is the last one)."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name)
        return len(LONGEST_FIRST) + (item.path not in slow_files)

    items.sort(key=rank)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test, restored after it (the stages set the count too).

    Tiny batches gain nothing from several intra-op threads, and one thread is not slowed down by
    other processes competing for the cores.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow sqlite DB (creating one takes seconds; copying it does not)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "mlruns"))
    return path


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_db_template: Path) -> Path:
    """cwd = an empty folder with the project's params.yaml; MLflow goes to a DB inside it."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
