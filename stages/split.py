"""Stage `split`: group-disjoint, stratified train/val/calib/test lists over the face crops.

Reads params block ``split`` and data/faces/manifest.csv (the kept faces). Writes
data/splits/{train,val,calib,test}.csv and data/splits/summary.json (calib: conformal calibration
only; empty when split.calib is 0). Every split must hold both labels: a split
that would not is refused with one line saying what to change.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from core.errors import require, run_stage
from core.io import atomic_output_dir, read_csv, write_csv, write_json
from core.params import SplitParams, load_block
from core.schema import FACE_KEPT, SPLITS
from core.tracking import stage_run
from sources.split import split_faces, summarise

FACES_MANIFEST = Path("data/faces/manifest.csv")
OUT_DIR = Path("data/splits")


def main() -> None:
    params = load_block("split", SplitParams)
    faces = read_csv(require(FACES_MANIFEST, "faces"))
    kept = faces[faces["status"].isin(FACE_KEPT)].reset_index(drop=True)
    frame, facts = split_faces(kept, params)  # before the MLflow run: a split that cannot be made opens none
    summary = summarise(frame, facts)
    with stage_run("split", "split", params, manifest=FACES_MANIFEST):
        with atomic_output_dir(OUT_DIR) as tmp:
            for name in SPLITS:
                write_csv(tmp / f"{name}.csv", frame[frame["split"] == name])
            write_json(tmp / "summary.json", summary)
        mlflow.log_metrics({f"{s}_rows": summary["total"][s] for s in SPLITS})
        mlflow.log_metric("groups_crossing_splits", summary["groups_crossing_splits"])
        mlflow.log_dict(summary, "split_summary.json")
    print(f"split ({params.protocol}): " + ", ".join(f"{s}={summary['total'][s]}" for s in SPLITS))


if __name__ == "__main__":
    run_stage("split", main, __doc__, "split", ["data/splits/{train,val,calib,test}.csv", "data/splits/summary.json"])
