"""Params loader, atomic outputs and the MLflow helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.io import atomic_output_dir, sha1_file
from core.params import DataParams, FacesParams, ParamsError, load_block, parse_block
from core.tracking import main_worktree, stage_run, tracking_uri
from tests.helpers import set_params


def test_default_params_load() -> None:
    assert load_block("data", DataParams).source in ("hf", "synthetic")
    assert load_block("faces", FacesParams).crop_size == 128


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"sise": 64}, r"faces\.sise: unknown key; allowed keys: crop_size, margin"),
        ({"on_miss": "skip"}, r"faces\.on_miss: got 'skip'; allowed values: 'drop', 'center'"),
        ({"crop_size": "big"}, r"faces\.crop_size: got 'big' \(str\); expected int"),
        ({"min_prob": 1.5}, r"faces\.min_prob: got 1\.5; allowed range \[0\.0, 1\.0\]"),
        ({"crop_size": True}, r"faces\.crop_size: got True"),
    ],
)
def test_bad_faces_params_name_the_key_and_allowed_values(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_block("faces", FacesParams, raw)


def test_data_source_and_per_source_are_checked() -> None:
    with pytest.raises(ParamsError, match="allowed: 'hf', 'synthetic' or 'folder:<path>'"):
        parse_block("data", DataParams, {"source": "s3://bucket"})
    with pytest.raises(ParamsError, match="per_source.*positive integer or 'all'"):
        parse_block("data", DataParams, {"per_source": 0})
    assert parse_block("data", DataParams, {"per_source": "all"}).per_source == "all"
    assert parse_block("data", DataParams, {"source": "folder:/x/y"}).folder == Path("/x/y")
    assert parse_block("faces", FacesParams, {"margin": 1}).margin == 1.0


def test_missing_params_file_says_where_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParamsError, match="run stages from the project root"):
        load_block("faces", FacesParams)


def test_atomic_output_dir_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed mid-stage")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp debris left behind


def test_main_worktree_from_a_dvc_temp_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_ROOT", raising=False)
    temp_workspace = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    temp_workspace.mkdir(parents=True)
    assert main_worktree(temp_workspace) == tmp_path / "proj"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert main_worktree() == tmp_path / "main"


def test_tracking_uri_defaults_to_sqlite_in_main_worktree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri()
    assert uri.startswith("sqlite:///") and uri.endswith("/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking_uri() == "sqlite:////elsewhere/x.db"


def test_stage_run_logs_params_and_provenance_tags(in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("DVC_EXP_NAME", "exp-lr")
    set_params(in_tmp_project / "params.yaml", "tracking", note="try a wider margin")
    manifest = in_tmp_project / "manifest.csv"
    manifest.write_text("id,path\n1,a.png\n")
    params = parse_block("faces", FacesParams, {"margin": 0.4})
    with stage_run("faces", "faces", params, manifest=manifest) as run:
        mlflow.log_metric("drop_rate", 0.1)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["faces.margin"] == "0.4"
    assert got.data.tags["dvc_exp_name"] == "exp-lr"
    assert got.data.tags["note"] == "try a wider margin"
    assert got.data.tags["data_manifest_sha1"] == sha1_file(manifest)
    assert got.data.tags["stage"] == "faces"
    assert got.data.metrics["drop_rate"] == 0.1
    experiment = mlflow.get_experiment_by_name("deepfake-pipeline")
    assert got.info.experiment_id == experiment.experiment_id
    # artifacts live beside the DB, not in the cwd (which may be a temporary DVC workspace)
    assert experiment.artifact_location == (in_tmp_project / "mlartifacts" / "deepfake-pipeline").as_uri()
