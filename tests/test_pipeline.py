"""End to end: download → faces → split under `dvc repro` and under `snakemake`, in temp copies."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tests.conftest import PROJECT_ROOT
from tests.helpers import set_params
from tests.test_dag import CODE_PACKAGES

DATA_STAGES = ("download", "faces", "split")
COPIED = (*CODE_PACKAGES, "envs", "profiles", "dvc.yaml", "Snakefile", "params.yaml")


def project_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in COPIED:
        src = PROJECT_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def run(cmd: list[str], cwd: Path, tracking_env: bool = True) -> subprocess.CompletedProcess:
    """Run a command with the venv on PATH; MLflow goes to <cwd>/mlflow.db, by env var unless told not."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
    }
    if tracking_env:
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def mlflow_stages(db: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return sorted(r.data.tags.get("stage", "") for r in runs)


def configure_synthetic(root: Path) -> None:
    set_params(root / "params.yaml", "data", source="synthetic", synthetic_identities=8)


def test_dvc_repro_and_snakemake_build_the_same_data(tmp_path: Path) -> None:
    dvc_root = project_copy(tmp_path / "dvc")
    smk_root = project_copy(tmp_path / "smk")
    for root in (dvc_root, smk_root):
        configure_synthetic(root)

    run(["dvc", "init", "--no-scm", "-q"], dvc_root)
    run(["dvc", "repro", *DATA_STAGES], dvc_root)
    assert mlflow_stages(dvc_root / "mlflow.db") == sorted(DATA_STAGES)
    again = run(["dvc", "repro", *DATA_STAGES], dvc_root)
    assert "didn't change, skipping" in again.stdout + again.stderr
    assert mlflow_stages(dvc_root / "mlflow.db") == sorted(DATA_STAGES)  # nothing reran, no new runs

    # a DVC remote on a local folder: push, lose the workspace outputs and the cache, pull them back
    run(["dvc", "remote", "add", "-d", "shared", str(tmp_path / "remote")], dvc_root)
    run(["dvc", "push", *DATA_STAGES], dvc_root)
    pushed = (dvc_root / "data/faces/manifest.csv").read_bytes()
    shutil.rmtree(dvc_root / "data")
    shutil.rmtree(dvc_root / ".dvc" / "cache")
    run(["dvc", "pull", *DATA_STAGES], dvc_root)
    assert (dvc_root / "data/faces/manifest.csv").read_bytes() == pushed
    assert any((dvc_root / "data/faces/images").iterdir())

    run(["snakemake", "--cores", "2", "data/splits/summary.json"], smk_root)
    assert mlflow_stages(smk_root / "mlflow.db") == sorted(DATA_STAGES)
    for stage in DATA_STAGES:
        assert (smk_root / "logs" / f"{stage}.log").exists()

    for table in (
        "data/raw/manifest.csv",
        "data/faces/manifest.csv",
        "data/splits/train.csv",
        "data/splits/val.csv",
        "data/splits/test.csv",
    ):
        a, b = pd.read_csv(dvc_root / table), pd.read_csv(smk_root / table)
        pd.testing.assert_frame_equal(a, b, obj=table)
    faces = pd.read_csv(dvc_root / "data/faces/manifest.csv")
    assert len(faces) > 0
    kept = faces[faces["status"].isin(["ok", "center"])]
    assert all((dvc_root / p).exists() for p in kept["path"])
    train = pd.read_csv(dvc_root / "data/splits/train.csv")
    test = pd.read_csv(dvc_root / "data/splits/test.csv")
    assert not set(train["group"].astype(str)) & set(test["group"].astype(str))
