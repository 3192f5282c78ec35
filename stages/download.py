"""Stage download: fetch the raw image set named by ``data.source`` into ``data/raw/``.

Outputs: ``data/raw/images/<id><ext>`` (original bytes), ``data/raw/manifest.csv`` (one row per
file found, skipped ones included; columns ``schema.RAW_COLUMNS``) and ``data/raw/summary.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.io import atomic_output_dir, sha1_file, write_csv, write_json
from core.params import DataParams, ParamsError, load_block
from core.tracking import stage_run
from sources import folder, hf, synthetic
from sources.hub import DownloadError, SourceUnavailableError
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


def main() -> None:
    params = load_block("data", DataParams)
    if params.source == "hf":
        hf.check_reachable(params)  # offline: fail in about a second, before any other setup
    import mlflow  # after the reachability check: importing it takes seconds

    with stage_run(stage="download", block="data", params=params):
        with atomic_output_dir(RAW_DIR) as tmp:
            rows, duplicates = collect(params, tmp / "images")
            frame = manifest_frame(rows)
            summary = summarise(frame, duplicates)
            write_csv(tmp / "manifest.csv", frame)
            write_json(tmp / "summary.json", summary)
        mlflow.set_tag("data_manifest_sha1", sha1_file(RAW_DIR / "manifest.csv"))
        mlflow.log_metrics(metric_counts(summary))
        mlflow.log_artifact(str(RAW_DIR / "summary.json"))
    by = summary["by_status"]
    print(f"download: {summary['total']} files -> {RAW_DIR}/ ({', '.join(f'{k} {v}' for k, v in by.items())})")
    if summary["duplicate_groups_merged"] or summary["conflicting_label_skips"]:
        print(f"download: identical bytes: {summary['duplicate_groups_merged']} groups merged, "
              f"{summary['conflicting_label_skips']} files skipped for conflicting labels")


if __name__ == "__main__":
    try:
        main()
    except (ParamsError, SourceUnavailableError, DownloadError, folder.FolderLayoutError) as e:
        raise SystemExit(f"download: {e}") from e
