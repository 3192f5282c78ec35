"""The ``faces`` stage's driver: fill the cache for every usable raw photo and its training views, and
turn the cache into the manifest rows (faces.csv, views.csv)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from core.errors import InputError
from core.io import sha1_file
from core.schema import FACE_COLUMNS, FACE_KEPT, RAW_COLUMNS, RAW_STATUSES, VIEW_COLUMNS
from faces.cache import CacheEntry, FaceCache
from faces.crop import FaceCropper
from faces.pipeline import Job, process_on_workers, view_job

USABLE_RAW = ("ok", "converted")


@dataclass
class RunCounts:
    computed: int = 0
    reused: int = 0
    missing: int = 0


def usable_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows that are faces inputs (status ok|converted); checks the raw manifest contract."""
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(f"raw manifest lacks columns {missing}; expected {RAW_COLUMNS}", "rerun stage download")
    bad = sorted(set(raw["status"]) - set(RAW_STATUSES))
    if bad:
        raise InputError(
            f"raw manifest: unknown status {bad}; allowed: {', '.join(RAW_STATUSES)}", "rerun stage download"
        )
    return raw[raw["status"].isin(USABLE_RAW)]


def raw_key(row: pd.Series, root: Path) -> str:
    """Cache key of a raw image: its sha1 from the raw manifest, else hashed from the file."""
    sha1 = str(row["sha1"]).strip().lower()
    return sha1 if len(sha1) == 40 else sha1_file(root / row["path"])


@dataclass(frozen=True)
class FacesRun:
    faces: pd.DataFrame  # FACE_COLUMNS, one row per usable raw image
    views: pd.DataFrame  # VIEW_COLUMNS, faces.framing_views rows per kept face
    sources: dict[str, Path]  # output path (data/faces/...) -> its cache file (assemble with link_or_copy)
    counts: RunCounts


def run_faces(
    raw: pd.DataFrame, cropper: FaceCropper, cache: FaceCache, root: Path = Path("."), workers: int = 1
) -> FacesRun:
    """Fill the cache for every usable raw row (and the training views of every kept face).

    ``faces.path`` is ``data/faces/images/<id><ext>`` for kept rows, ``views.path``
    ``data/faces/views/<id>.v<k><ext>`` for views whose face was found.
    """
    rows = usable_rows(raw)
    counts = RunCounts()
    keys: list[str | None] = []
    key: str | None
    todo: dict[str, Job] = {}
    for _, row in rows.iterrows():
        src = root / row["path"]
        if not row["path"] or not src.is_file():
            keys.append(None)
            counts.missing += 1
            continue
        key = raw_key(row, root)
        keys.append(key)
        if key not in todo and cache.load(key) is None:
            todo[key] = Job(src)
    counts.computed = len(todo)
    counts.reused = len(rows) - counts.missing - sum(1 for k in keys if k in todo)
    with tqdm(total=len(rows), initial=len(rows) - len(todo), desc="faces", unit="img") as bar:
        process_on_workers(todo, cropper, cache, workers, progress=bar.update)

    out_rows, sources = [], {}
    for (_, row), key in zip(rows.iterrows(), keys):
        loaded = cache.load(key) if key else None
        if key is None:
            entry = CacheEntry("error", f"raw file missing: {row['path'] or '(empty path)'}", None, 0.0, "")
        elif loaded is None:
            raise RuntimeError(f"faces cache entry for {row['id']} ({key}) vanished during the run")
        else:
            entry = loaded
        path = f"data/faces/images/{row['id']}{cache.ext}" if entry.has_crop else ""
        if path and key:
            sources[path] = cache.crop_path(key)
        box: Sequence[float | str] = entry.box or ["", "", "", ""]
        region: Sequence[int | str] = entry.region or ["", "", "", ""]
        raw_size: Sequence[int | str] = entry.raw_size or ["", ""]
        out_rows.append(
            {
                **{c: row[c] for c in ("id", "label", "generator", "source", "group", "predefined_split")},
                "path": path,
                "raw_path": row["path"],
                "raw_width": raw_size[0],
                "raw_height": raw_size[1],
                "box_x1": box[0],
                "box_y1": box[1],
                "box_x2": box[2],
                "box_y2": box[3],
                "prob": entry.prob,
                "crop_x1": region[0],
                "crop_y1": region[1],
                "crop_x2": region[2],
                "crop_y2": region[3],
                "margin_used": "" if entry.margin_used is None else entry.margin_used,
                "grayscale": ("raw" if entry.grayscale else "no") if entry.has_crop else "",
                "status": entry.status,
                "reason": entry.reason,
            }
        )
    faces = pd.DataFrame(out_rows, columns=FACE_COLUMNS)
    kept = {
        row_id: (root / raw_path, key)
        for row_id, raw_path, key, status in zip(faces["id"], faces["raw_path"], keys, faces["status"])
        if status in FACE_KEPT and key
    }
    views = run_views(kept, cropper, cache, sources, workers)
    return FacesRun(faces, views, sources, counts)


def run_views(
    kept: dict[str, tuple[Path, str]],
    cropper: FaceCropper,
    cache: FaceCache,
    sources: dict[str, Path],
    workers: int = 1,
) -> pd.DataFrame:
    """``faces.framing_views`` training views of each kept face: the photo framed tighter (a window of
    ``framing_min``..1 of each side, placed at random, seeded by the photo), cropped the same way.

    The classifier trains on a random one of an image's crop and its views each epoch, so how tightly a
    photo was framed (which differs between real and fake sources) stops being something to learn.
    """
    p = cropper.params
    jobs = {
        row_id: [view_job(path, key, v, p.framing_min) for v in range(1, p.framing_views + 1)]
        for row_id, (path, key) in kept.items()
    }
    todo = {k: job for per_row in jobs.values() for k, job in per_row if cache.load(k) is None}
    with tqdm(
        total=sum(map(len, jobs.values())),
        initial=sum(map(len, jobs.values())) - len(todo),
        desc="views",
        unit="img",
        disable=not todo,
    ) as bar:
        process_on_workers(todo, cropper, cache, workers, progress=bar.update)
    rows = []
    for row_id, per_row in jobs.items():
        for view, (key, _) in enumerate(per_row, start=1):
            entry = cache.load(key)
            if entry is None:
                raise RuntimeError(f"faces cache entry for view {view} of {row_id} ({key}) vanished during the run")
            path = f"data/faces/views/{row_id}.v{view}{cache.ext}" if entry.has_crop else ""
            if path:
                sources[path] = cache.crop_path(key)
            rows.append(
                {
                    "id": row_id,
                    "view": view,
                    "path": path,
                    "status": entry.status,
                    "reason": entry.reason,
                    "margin_used": "" if entry.margin_used is None else entry.margin_used,
                    "grayscale": ("raw" if entry.grayscale else "no") if entry.has_crop else "",
                }
            )
    return pd.DataFrame(rows, columns=VIEW_COLUMNS)
