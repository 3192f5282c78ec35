"""Stage download: fetch the raw image set named by ``data.source`` into ``data/raw/``.

Outputs: ``data/raw/images/<id><ext>`` (original bytes), ``data/raw/manifest.csv`` (one row per
file found, skipped ones included; columns ``schema.RAW_COLUMNS``) and ``data/raw/summary.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common import source_folder, source_hf, synthetic
from stages.common.io import atomic_output_dir, sha1_file, write_csv, write_json
from stages.common.params import DataParams, ParamsError, load_block
from stages.common.rawset import manifest_frame, metric_counts, summarise
from stages.common.tracking import stage_run

RAW_DIR = Path("data/raw")
CACHE_DIR = Path("data/cache/download")


def collect(params: DataParams, images_dir: Path) -> list[dict[str, Any]]:
    if params.source == "synthetic":
        return synthetic.collect(params, images_dir)
    if params.folder is not None:
        return source_folder.collect(params, images_dir)
    return source_hf.collect(params, images_dir, CACHE_DIR)


def main() -> None:
    params = load_block("data", DataParams)
    if params.source == "hf":
        source_hf.check_reachable(params)  # offline: fail in about a second, before any other setup
    import mlflow  # after the reachability check: importing it takes seconds

    with stage_run(stage="download", block="data", params=params):
        with atomic_output_dir(RAW_DIR) as tmp:
            frame = manifest_frame(collect(params, tmp / "images"))
            summary = summarise(frame)
            write_csv(tmp / "manifest.csv", frame)
            write_json(tmp / "summary.json", summary)
        mlflow.set_tag("data_manifest_sha1", sha1_file(RAW_DIR / "manifest.csv"))
        mlflow.log_metrics(metric_counts(summary))
        mlflow.log_artifact(str(RAW_DIR / "summary.json"))
    by = summary["by_status"]
    print(f"download: {summary['total']} files -> {RAW_DIR}/ ({', '.join(f'{k} {v}' for k, v in by.items())})")


if __name__ == "__main__":
    try:
        main()
    except (ParamsError, source_hf.SourceUnavailableError, source_hf.DownloadError,
            source_folder.FolderLayoutError) as e:
        raise SystemExit(f"download: {e}") from e
