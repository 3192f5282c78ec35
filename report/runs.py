"""The MLflow runs the report reads: finished runs per experiment, metric names, artifacts and histories.

Every stage execution is one MLflow run tagged ``stage``, ``dvc_exp_name``, ``note``, ``git_commit`` and
``data_manifest_sha1``, with params ``<block>.<key>``. Metric names are resolved leniently (``roc_auc``
also finds ``test_roc_auc`` / ``test.roc_auc``; ``kid`` also ``generator.kid_mean``), so stages can rename
metrics without breaking the report; a metric that cannot be found is shown as missing, never guessed.
Reading an artifact never raises: a failure becomes a remark shown in the report.
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

METRIC_PREFIXES = ("", "test_", "test.", "test/", "eval_", "eval.", "generator.")
METRIC_SUFFIXES = ("", "_mean", ".mean")


@dataclass
class RunInfo:
    run_id: str
    stage: str
    status: str
    start: float  # seconds since the epoch
    end: float | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def exp_name(self) -> str:
        return self.tags.get("dvc_exp_name", "")

    @property
    def note(self) -> str:
        return self.tags.get("note") or self.tags.get("mlflow.note.content", "")

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def started(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.start))


def load_runs(
    client: Any, experiment: str, exclude: str | None = None
) -> tuple[list[RunInfo], dict[str, dict[str, int]]]:
    """Finished runs of ``experiment`` (time order) and counts of the others per stage and status.

    ``exclude``: a run id left out entirely (the report's own run, still RUNNING).
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], {}
    finished: list[RunInfo] = []
    left_out: dict[str, Counter] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        for run in page:
            info = _run_info(run)
            if info.run_id == exclude:
                continue
            if info.status == "FINISHED":
                finished.append(info)
            else:
                left_out.setdefault(info.stage or "untagged", Counter())[info.status] += 1
        token = page.token
        if not token:
            break
    finished.sort(key=lambda r: (r.start, r.run_id))
    return finished, {stage: dict(c) for stage, c in left_out.items()}


def _run_info(run: Any) -> RunInfo:
    info, data = run.info, run.data
    return RunInfo(
        run_id=info.run_id,
        stage=data.tags.get("stage", ""),
        status=info.status,
        start=(info.start_time or 0) / 1000.0,
        end=info.end_time / 1000.0 if info.end_time else None,
        params=dict(data.params),
        metrics=dict(data.metrics),
        tags=dict(data.tags),
    )


def resolve_metric(metrics: dict[str, float], name: str) -> str | None:
    """The MLflow key that holds metric ``name`` (exact first, then test_/test./_mean variants)."""
    for prefix in METRIC_PREFIXES:
        for suffix in METRIC_SUFFIXES:
            key = f"{prefix}{name}{suffix}"
            if key in metrics:
                return key
    return None


class Artifacts:
    """Listing and reading run artifacts; every failure becomes a remark instead of an exception."""

    def __init__(self, client: Any, workdir: Path) -> None:
        self.client = client
        self.workdir = workdir
        self.remarks: list[str] = []
        self._listing: dict[str, list[str]] = {}

    def paths(self, run_id: str) -> list[str]:
        if run_id not in self._listing:
            try:
                self._listing[run_id] = sorted(self._walk(run_id, None))
            except Exception as err:  # noqa: BLE001 - any store error is reported, the report goes on
                self.remarks.append(f"artifacts of run {run_id[:8]} could not be listed: {err}")
                self._listing[run_id] = []
        return self._listing[run_id]

    def _walk(self, run_id: str, path: str | None) -> list[str]:
        out: list[str] = []
        for f in self.client.list_artifacts(run_id, path):
            out += self._walk(run_id, f.path) if f.is_dir else [f.path]
        return out

    def matching(self, run_id: str, patterns: Sequence[str]) -> list[str]:
        """Artifact paths matching any pattern (case-insensitive), the shortest file name first."""
        hits = [p for p in self.paths(run_id) if any(fnmatch.fnmatch(p.lower(), pat.lower()) for pat in patterns)]
        return sorted(hits, key=lambda p: (len(Path(p).name), p))

    def read(self, run_id: str, path: str) -> bytes | None:
        try:
            dst = Path(tempfile.mkdtemp(dir=self.workdir))
            local = self.client.download_artifacts(run_id, path, dst_path=str(dst))
            return Path(local).read_bytes()
        except Exception as err:  # noqa: BLE001
            self.remarks.append(f"artifact {path} of run {run_id[:8]} could not be read: {err}")
            return None


def read_roc(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> pd.DataFrame | None:
    for path in art.matching(run.run_id, patterns):
        raw = art.read(run.run_id, path)
        if raw is None:
            continue
        try:
            frame = pd.read_csv(io.BytesIO(raw))
        except (ValueError, pd.errors.ParserError) as err:
            art.remarks.append(f"{path} of run {run.run_id[:8]} is not a readable CSV: {err}")
            continue
        cols = {c.lower().strip(): c for c in frame.columns}
        if "fpr" in cols and "tpr" in cols:
            out = frame[[cols["fpr"], cols["tpr"]]].apply(pd.to_numeric, errors="coerce").dropna()
            out.columns = ["fpr", "tpr"]
            return out.sort_values(["fpr", "tpr"]).reset_index(drop=True)
        art.remarks.append(f"{path} of run {run.run_id[:8]} has no fpr,tpr columns (has {list(frame.columns)})")
    return None


def epoch_of(path: str) -> int | None:
    numbers = re.findall(r"\d+", Path(path).stem)
    return int(numbers[-1]) if numbers else None


def sample_grids(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> list[tuple[int, str]]:
    """(epoch, artifact path) of the run's sample grids, by epoch (the first file per epoch)."""
    by_epoch: dict[int, str] = {}
    for path in art.matching(run.run_id, patterns):
        epoch = epoch_of(path)
        if epoch is not None and path.lower().endswith(".png"):
            by_epoch.setdefault(epoch, path)
    return sorted(by_epoch.items())


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items evenly spread over ``items``, first and last included."""
    if len(items) <= n:
        return list(items)
    if n == 1:
        return [items[-1]]
    idx = sorted({round(k * (len(items) - 1) / (n - 1)) for k in range(n)})
    return [items[i] for i in idx]


def curve_keys(
    client: Any, run: RunInfo, wanted: Sequence[str], exclude: Sequence[str]
) -> dict[str, list[tuple[int, float]]]:
    """Metric histories (step, value) of a training run: ``wanted`` keys, or every per-epoch metric."""
    keys = [k for k in wanted if k in run.metrics]
    auto = not keys
    if auto:
        keys = [k for k in sorted(run.metrics) if not any(fnmatch.fnmatch(k, pat) for pat in exclude)]
    out: dict[str, list[tuple[int, float]]] = {}
    for key in keys:
        points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run.run_id, key))
        if not auto or len(points) > 1:
            out[key] = points
    return out


def read_json_artifact(art: Artifacts, run: RunInfo, path: str) -> dict[str, Any] | None:
    """The run's JSON artifact at ``path`` as a dict; None (with a remark when unreadable) otherwise."""
    if path not in art.paths(run.run_id) or (raw := art.read(run.run_id, path)) is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError as err:
        art.remarks.append(f"{path} of run {run.run_id[:8]} is not valid JSON: {err}")
        return None
    return data if isinstance(data, dict) else None


def first_image(art: Artifacts, run: RunInfo, patterns: Sequence[str]) -> bytes | None:
    for path in art.matching(run.run_id, patterns):
        if path.lower().endswith(".png") and (raw := art.read(run.run_id, path)) is not None:
            return raw
    return None
