"""Stage `split`: group-disjoint, stratified train/val/test lists over the face crops."""
from __future__ import annotations

from pathlib import Path

import mlflow

from core.io import atomic_output_dir, read_csv, write_csv, write_json
from core.params import SplitParams, load_block
from core.schema import FACE_KEPT, SPLITS
from core.tracking import stage_run
from sources.split import split_faces, summarise

FACES_MANIFEST = Path("data/faces/manifest.csv")
OUT_DIR = Path("data/splits")


def main() -> None:
    params = load_block("split", SplitParams)
    faces = read_csv(FACES_MANIFEST)
    kept = faces[faces["status"].isin(FACE_KEPT)].reset_index(drop=True)
    with stage_run("split", "split", params, manifest=FACES_MANIFEST):
        frame, facts = split_faces(kept, params)
        summary = summarise(frame, facts)
        with atomic_output_dir(OUT_DIR) as tmp:
            for name in SPLITS:
                write_csv(tmp / f"{name}.csv", frame[frame["split"] == name])
            write_json(tmp / "summary.json", summary)
        mlflow.log_metrics({f"{s}_rows": summary["total"][s] for s in SPLITS})
        mlflow.log_metric("groups_crossing_splits", summary["groups_crossing_splits"])
        mlflow.log_dict(summary, "split_summary.json")
    print(f"split ({params.protocol}): " + ", ".join(f"{s}={summary['total'][s]}" for s in SPLITS))


if __name__ == "__main__":
    main()
