"""Stage download: fetch the raw image set named by ``data.source`` into ``data/raw/``.

Reads params block ``data``. Outputs: ``data/raw/images/<id><ext>`` (original bytes),
``data/raw/manifest.csv`` (one row per file found, skipped ones included; columns ``schema.RAW_COLUMNS``)
and ``data/raw/summary.json`` (counts, and ``min_side``, which predict applies to the files it scores).
Fails with one line when the set does not hold usable images of both labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import InputError, run_stage
from core.io import atomic_output_dir, sha1_file, write_csv, write_json
from core.params import DataParams, load_block
from core.schema import LABELS
from core.tracking import stage_run
from sources import folder, hf, synthetic
from sources.rawset import DuplicateStats, manifest_frame, merge_duplicates, metric_counts, summarise

RAW_DIR = Path("data/raw")
CACHE_DIR = Path("data/cache/download")


def collect(params: DataParams, images_dir: Path) -> tuple[list[dict[str, Any]], DuplicateStats]:
    """The rows of the configured source, with identical bytes merged into one group (and skipped
    where their labels conflict) — once here, for every source."""
    if params.source == "synthetic":
        rows = synthetic.collect(params, images_dir)
    elif params.folder is not None:
        rows = folder.collect(params, images_dir)
    else:
        rows = hf.collect(params, images_dir, CACHE_DIR)
    return merge_duplicates(rows, images_dir)


def check_labels(frame: pd.DataFrame) -> None:
    """Both labels among the files kept, else one line saying which label is missing and why."""
    kept = frame[frame["status"] != "skipped"]
    for label in LABELS:
        if (kept["label"] == label).any():
            continue
        found = frame[frame["label"] == label]
        if found.empty:
            raise InputError(
                f"no {label} images found; a real-vs-fake set needs both labels", f"add {label} images to data.source"
            )
        reason = found["reason"].map(lambda r: str(r).split(" (")[0]).mode().iloc[0]
        raise InputError(
            f"all {len(found)} {label} images were skipped (most often: {reason}); "
            f"a real-vs-fake set needs usable images of both labels",
            f"add usable {label} images to data.source"
            + (" or lower data.min_side" if reason.startswith("too small") else ""),
        )


def main() -> None:
    params = load_block("data", DataParams)
    if params.source == "hf":
        hf.check_reachable(params)  # offline: fail in about a second, before any other setup
    elif params.folder is not None:
        folder.check_layout(params.folder)  # missing, a file, one label only: fail before any other setup
    import mlflow  # after the reachability check: importing it takes seconds

    with stage_run(stage="download", block="data", params=params):
        with atomic_output_dir(RAW_DIR) as tmp:
            rows, duplicates = collect(params, tmp / "images")
            frame = manifest_frame(rows)
            check_labels(frame)
            summary = {**summarise(frame, duplicates), "min_side": params.min_side}
            write_csv(tmp / "manifest.csv", frame)
            write_json(tmp / "summary.json", summary)
        mlflow.set_tag("data_manifest_sha1", sha1_file(RAW_DIR / "manifest.csv"))
        mlflow.log_metrics(metric_counts(summary))
        mlflow.log_artifact(str(RAW_DIR / "summary.json"))
    by = summary["by_status"]
    print(f"download: {summary['total']} files -> {RAW_DIR}/ ({', '.join(f'{k} {v}' for k, v in by.items())})")
    if summary["duplicate_groups_merged"] or summary["conflicting_label_skips"]:
        print(
            f"download: identical bytes: {summary['duplicate_groups_merged']} groups merged, "
            f"{summary['conflicting_label_skips']} files skipped for conflicting labels"
        )


if __name__ == "__main__":
    run_stage("download", main, __doc__, "data", ["data/raw/images/", "data/raw/manifest.csv", "data/raw/summary.json"])
