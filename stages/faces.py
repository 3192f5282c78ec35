"""Stage faces: MTCNN face crops of every usable raw image.

Writes data/faces/{images/,views/,manifest.csv,views.csv,metrics.json,params.json}.

Reads only params.yaml block ``faces``. Per-image work is cached under
<main checkout>/data/cache/faces/<hash of result params + detector version>/, so a killed run
resumes where it stopped (and DVC temp experiments share the work); data/faces is then assembled
from the cache (hard links) in one atomic rename.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pandas as pd

from core.device import pick_device, set_threads
from core.errors import require, run_stage
from core.io import atomic_output_dir, atomic_write_bytes, link_or_copy, read_csv, write_csv, write_json
from core.params import FacesParams, as_dict, load_block
from core.tracking import flatten_numeric, main_worktree, stage_run
from faces.cache import FaceCache, cache_key
from faces.crop import FaceCropper
from faces.grayscale import apply_policy, gray_copy, views_after_policy
from faces.metrics import face_metrics, view_metrics
from faces.pipeline import worker_count
from faces.run import run_faces

RAW_MANIFEST = Path("data/raw/manifest.csv")
OUT_DIR = Path("data/faces")
CACHE_DIR = Path("data/cache/faces")  # under the main checkout, shared with `dvc exp run --temp` copies


def assemble(tmp: Path, frame: pd.DataFrame, sources: dict[str, Path], params: FacesParams) -> None:
    """Link every kept crop of ``frame`` from the cache into ``tmp`` (a grey copy where the policy says so)."""
    for out_path, gray in zip(frame["path"], frame["grayscale"]):
        if not out_path:
            continue
        target = tmp / Path(out_path).relative_to(OUT_DIR)
        if gray == "matched":
            atomic_write_bytes(target, gray_copy(sources[out_path].read_bytes(), params.encoding, params.jpeg_quality))
        else:
            link_or_copy(sources[out_path], target)


def main() -> None:
    params = load_block("faces", FacesParams)
    threads = set_threads(params.threads)
    raw = read_csv(require(RAW_MANIFEST, "download"))
    cropper = FaceCropper(params, device=pick_device(params.device))
    cache = FaceCache(main_worktree() / CACHE_DIR / cache_key(params), cropper.extension)

    # The per-image work runs before the MLflow run opens, so a killed run leaves no dangling run.
    start = time.perf_counter()
    workers = worker_count(params.workers)
    run = run_faces(raw, cropper, cache, workers=workers)
    faces = apply_policy(run.faces, params.grayscale)
    views = views_after_policy(run.views, faces)
    counts = run.counts
    seconds = time.perf_counter() - start
    metrics = face_metrics(raw, faces)
    metrics["views"] = view_metrics(views)

    with stage_run(stage="faces", block="faces", params=params, manifest=RAW_MANIFEST):
        with atomic_output_dir(OUT_DIR) as tmp:
            (tmp / "images").mkdir()
            (tmp / "views").mkdir()
            for frame in (faces, views):
                assemble(tmp, frame, run.sources, params)
            write_csv(tmp / "manifest.csv", faces)
            write_csv(tmp / "views.csv", views)
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "params.json", as_dict(params))  # how these crops were made, for predict

        mlflow.log_metrics(flatten_numeric(metrics, "faces"))
        mlflow.log_metrics(
            {
                "faces.run.computed": counts.computed,
                "faces.run.reused": counts.reused,
                "faces.run.seconds": seconds,
                "faces.run.images_per_s": counts.computed / seconds if seconds else 0.0,
            }
        )
        mlflow.set_tags(
            {
                "faces.device": str(cropper.device),
                "faces.threads": threads,
                "faces.workers": workers,
                "faces.cache": str(cache.root),
            }
        )
        mlflow.log_artifact(str(OUT_DIR / "metrics.json"))

    o = metrics["overall"]
    print(
        f"faces: {o['inputs']} inputs → {o['ok']} ok, {o['center']} center, {o['dropped']} dropped, "
        f"{o['error']} error (detection rate {o['detection_rate']}, drop rate {o['drop_rate']}); "
        f"{counts.computed} computed, {counts.reused} reused from {cache.root}"
    )


if __name__ == "__main__":
    run_stage(
        "faces", main, __doc__, "faces", ["data/faces/{images/,views/,manifest.csv,views.csv,metrics.json,params.json}"]
    )
