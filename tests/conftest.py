"""Shared fixtures: small images made on the fly, the shared real data when it is present."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def shared_set(name: str) -> Path:
    """Path of a set in ../shared/data, or a clean skip when it is absent."""
    path = SHARED_DATA / name
    if not (path / "manifest.csv").exists():
        pytest.skip(f"{path} is absent: the integration test needs ../shared/data/{name}")
    return path


@pytest.fixture
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture
def in_tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd = an empty folder with the project's params.yaml; MLflow goes to a DB inside it."""
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
