"""Stage report: every MLflow run of the project → results/report/{index.html, report.md, figures/, iterations.json}.

Reads only params block ``report`` (its ``experiment`` defaults to ``tracking.experiment``). The
iteration tables, plots and setup facts are gathered in report.collect, laid out as document blocks
in report.sections and rendered in report.render; index.html is self-contained (images embedded,
inline CSS, no URL).
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow

from core.errors import run_stage
from core.io import atomic_output_dir, write_json
from core.params import ReportParams, TrackingParams, load_block
from core.tracking import main_worktree, stage_run, tracking_uri
from report.collect import collect, summary
from report.render import write_report
from report.sections import build_document

OUT_DIR = Path("results/report")
# one progress bar per downloaded artifact is noise here
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def main() -> None:
    params = load_block("report", ReportParams)
    experiment = params.experiment or load_block("tracking", TrackingParams).experiment
    with stage_run(stage="report", block="report", params=params) as run:
        data = collect(params, experiment, tracking_uri(), main_worktree(), exclude=run.info.run_id)
        doc = build_document(data, params)
        with atomic_output_dir(OUT_DIR) as tmp:
            write_report(doc, tmp)
            write_json(tmp / "iterations.json", summary(data))
        mlflow.log_metrics(
            {
                "report.runs": len(data.runs),
                **{f"report.{t.spec.name}_iterations": len(t.iterations) for t in data.tracks},
            }
        )
        mlflow.log_artifact(str(OUT_DIR / "index.html"))
        mlflow.log_artifact(str(OUT_DIR / "report.md"))
    counts = ", ".join(f"{len(t.iterations)} {t.spec.name} iterations" for t in data.tracks)
    print(
        f"report: {len(data.runs)} runs of experiment {experiment!r} ({counts}) -> {OUT_DIR / 'index.html'}, "
        f"{OUT_DIR / 'report.md'}" + (f"; {data.dvc_error}" if data.dvc_error else "")
    )


if __name__ == "__main__":
    run_stage("report", main, __doc__, "report", ["results/report/{index.html,report.md,figures/,iterations.json}"])
