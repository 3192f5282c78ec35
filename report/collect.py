"""Everything the report shows, gathered in one ``ReportData`` (and its iteration tables as JSON)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.params import ReportParams
from report.federated import FederatedResult, latest_federated
from report.iterations import CLASSIFIER, GENERATOR, TrackData, build_track
from report.runs import Artifacts, RunInfo, load_runs
from report.setup import DvcExp, SetupData, dvc_experiments, setup_data
from report.study import PretrainCurve, pretrain_curves


@dataclass
class ReportData:
    experiment: str
    tracking_uri: str
    generated: str
    runs: list[RunInfo]
    left_out: dict[str, dict[str, int]]  # stage -> status -> count (runs not FINISHED)
    tracks: list[TrackData]
    setup: SetupData
    dvc_exps: list[DvcExp]
    dvc_error: str | None
    pretrain: list[PretrainCurve]
    federated: FederatedResult | None = None  # the latest train_federated run's comparison


def collect(p: ReportParams, experiment: str, uri: str, repo: Path | None, exclude: str | None = None) -> ReportData:
    """Read every finished run of ``experiment`` at ``uri`` into a ReportData (artifacts read into memory)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs, left_out = load_runs(client, experiment, exclude)
    with tempfile.TemporaryDirectory(prefix="report-artifacts-") as tmp:
        art = Artifacts(client, Path(tmp))
        tracks = [build_track(spec, runs, p, client, art) for spec in (CLASSIFIER, GENERATOR)]
        pretrain = pretrain_curves(runs, art)
        federated = latest_federated(runs, art)
        for track in tracks:
            track.remarks += [r for r in art.remarks if r not in track.remarks]
            art.remarks.clear()
    exps, dvc_error = (
        dvc_experiments(repo, p.dvc_timeout_s)
        if (p.dvc_exp_show and repo is not None)
        else ([], "dvc exp show not asked for (report.dvc_exp_show: false)")
    )
    return ReportData(
        experiment=experiment,
        tracking_uri=uri,
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        runs=runs,
        left_out=left_out,
        tracks=tracks,
        setup=setup_data(runs),
        dvc_exps=exps,
        dvc_error=dvc_error,
        pretrain=pretrain,
        federated=federated,
    )


def summary(data: ReportData) -> dict[str, Any]:
    """The iteration tables as JSON (results/report/iterations.json): what the report shows, machine-readable."""
    tracks: dict[str, Any] = {}
    for track in data.tracks:
        rows = []
        for it in track.iterations:
            rows.append(
                {
                    "number": it.number,
                    "train_run": it.train.run_id if it.train else None,
                    "eval_run": it.eval.run_id if it.eval else None,
                    "reused_train_of": it.reused_train_of,
                    "exp_name": it.exp_name,
                    "note": it.note,
                    "best": it is track.best_iteration,
                    "changes": [{"key": c.key, "old": c.old, "new": c.new} for c in it.changes],
                    "metrics": it.metrics,
                    "metric_keys": it.metric_keys,
                    "deltas": it.deltas,
                    "better": it.better,
                    "has_roc": it.roc is not None,
                    "final_grid_epoch": it.final_grid[0] if it.final_grid else None,
                }
            )
        best = track.best_iteration
        tracks[track.spec.name] = {
            "primary": track.primary,
            "requested_primary": track.requested_primary or None,
            "best": best.number if best else None,
            "iterations": rows,
            "remarks": track.remarks,
        }
    return {
        "experiment": data.experiment,
        "generated": data.generated,
        "runs": len(data.runs),
        "left_out": data.left_out,
        "tracks": tracks,
        "dvc_error": data.dvc_error,
        "dvc_experiments": len(data.dvc_exps),
        "federated": None
        if data.federated is None
        else {
            "run": data.federated.run.run_id,
            "source": data.federated.source,
            "comparison": data.federated.comparison.astype(object)
            .where(data.federated.comparison.notna(), None)
            .to_dict("records"),
        },
    }
