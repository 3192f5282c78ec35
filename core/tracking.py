"""MLflow run per stage execution, on one sqlite DB shared by every run and experiment.

The DB is ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<main worktree>/mlflow.db``. The
main worktree is found even from the temporary copies that ``dvc exp run --temp`` and
``dvc queue start`` run in (they live under ``<main>/.dvc/tmp/exps/``), so every iteration lands
in the same DB.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from core.io import sha1_file
from core.params import TrackingParams, load_block

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DVC_TEMP_MARKER = (".dvc", "tmp", "exps")


def main_worktree(start: Path | None = None) -> Path:
    """The project's main checkout, also from inside a DVC temp experiment workspace.

    DVC sets ``DVC_ROOT`` to the main checkout for stages it runs (temp and queued experiments
    included); without it, the path itself or git tells.
    """
    here = (start or Path(os.environ.get("DVC_ROOT") or Path.cwd())).resolve()
    parts = here.parts
    for i in range(len(parts) - len(DVC_TEMP_MARKER) + 1):
        if parts[i : i + len(DVC_TEMP_MARKER)] == DVC_TEMP_MARKER:
            return Path(*parts[:i])
    try:
        common = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(common).parent
    except (subprocess.CalledProcessError, FileNotFoundError):
        return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{main_worktree() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def flat_params(params: Any, prefix: str) -> dict[str, Any]:
    raw = asdict(params) if is_dataclass(params) and not isinstance(params, type) else dict(params)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def flatten_numeric(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1.0}`` keeping finite numbers only (for mlflow.log_metrics)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        name = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
        if isinstance(value, dict):
            out.update(flatten_numeric(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def artifact_root() -> Path:
    """Where run artifacts go: beside the DB, never inside a temporary experiment workspace."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return main_worktree() / "mlartifacts"


def ensure_experiment(name: str) -> None:
    import mlflow

    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location=(artifact_root() / name).as_uri())
    mlflow.set_experiment(name)


def active_run_id() -> str:
    """The id of the MLflow run open in this process; empty when none is."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else ""


@contextlib.contextmanager
def stage_run(stage: str, block: str, params: Any, manifest: Path | None = None) -> Iterator[Any]:
    """Open one MLflow run for this stage execution and log its params and provenance tags."""
    import mlflow

    tracking = load_block("tracking", TrackingParams)
    mlflow.set_tracking_uri(tracking_uri())
    ensure_experiment(tracking.experiment)
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "dvc_exp_name": exp_name,
        "mlflow.note.content": tracking.note,
        "note": tracking.note,
    }
    if manifest is not None and manifest.exists():
        tags["data_manifest_sha1"] = sha1_file(manifest)
    run_name = f"{stage}:{exp_name}" if exp_name else stage
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(flat_params(params, block))
        yield run
