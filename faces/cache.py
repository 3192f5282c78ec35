"""The ``faces`` stage's resumable per-image cache and its driver (every raw photo and its training views).

``FaceCache`` holds one crop file + one JSON per raw image (keyed by the raw file's sha1), so a killed
run resumes; ``run_faces`` fills it for every usable raw row (and ``run_views`` for the tighter-framed
training views of every kept face) and returns the manifest rows.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from core.errors import InputError
from core.images import DecodedImage, ImageDecodeError, decode_rgb
from core.io import atomic_write_bytes, sha1_bytes, sha1_file, stable_hash, write_json
from core.params import FacesParams, as_dict
from core.schema import FACE_COLUMNS, FACE_KEPT, RAW_COLUMNS, RAW_STATUSES, VIEW_COLUMNS
from faces.crop import FaceCropper, FaceResult, window_of
from faces.detect import Detection, detector_version

# Params that change results; batch_size, device and threads only change speed. ``grayscale`` is
# applied after the cache (faces.grayscale), so it is not among them.
RESULT_KEYS = ("crop_size", "margin", "min_prob", "on_miss", "detect_side", "min_face", "encoding", "jpeg_quality")
USABLE_RAW = ("ok", "converted")


def cache_key(params: FacesParams, version: str | None = None) -> str:
    values = {k: v for k, v in as_dict(params).items() if k in RESULT_KEYS}
    return stable_hash({"params": values, "detector": version or detector_version()})


@dataclass(frozen=True)
class CacheEntry:
    status: str  # ok | center | dropped | error
    reason: str
    box: list[float] | None
    prob: float
    crop_sha1: str  # "" when there is no crop (dropped, error)
    region: list[int] | None = None
    margin_used: float | None = None
    raw_size: list[int] | None = None  # decoded width, height (after EXIF orientation)
    grayscale: bool = False

    @property
    def has_crop(self) -> bool:
        return self.status in FACE_KEPT


class FaceCache:
    """One crop file + one JSON per raw image (keyed by the raw file's sha1).

    Both are written atomically and the JSON last, so an entry exists only once its crop is
    complete; the crop's sha1 is checked on reuse, so an edited or truncated crop is redone.
    """

    def __init__(self, root: Path, ext: str) -> None:
        self.root = root
        self.ext = ext

    def crop_path(self, key: str) -> Path:
        return self.root / f"{key}{self.ext}"

    def meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str) -> CacheEntry | None:
        try:
            entry = CacheEntry(**json.loads(self.meta_path(key).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if entry.has_crop:
            try:
                if sha1_bytes(self.crop_path(key).read_bytes()) != entry.crop_sha1:
                    return None
            except OSError:
                return None
        return entry

    def store(self, key: str, entry: CacheEntry, crop: bytes | None) -> None:
        if entry.has_crop:
            if crop is None:
                raise ValueError(f"cache entry {key}: status {entry.status} needs its crop bytes")
            atomic_write_bytes(self.crop_path(key), crop)
        write_json(self.meta_path(key), asdict(entry))


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


def _entry(result: FaceResult, crop_bytes: bytes | None, raw_size: tuple[int, int]) -> CacheEntry:
    det = result.detection
    return CacheEntry(
        result.status,
        result.reason,
        det.box.as_list() if det else None,
        result.prob,
        sha1_bytes(crop_bytes) if crop_bytes else "",
        list(result.region) if result.region else None,
        None if result.margin_used is None else round(result.margin_used, 6),
        list(raw_size),
        result.grayscale,
    )


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass(frozen=True)
class Job:
    """One crop to compute: a raw photo, or a training view of it (the photo framed tighter)."""

    path: Path
    keep: float = 1.0  # fraction of each side kept (1 = the whole photo)
    seed: str = ""  # where a tighter frame sits

    def load(self) -> DecodedImage:
        decoded = decode_rgb(self.path)
        if self.keep >= 1.0:
            return decoded
        return dataclasses.replace(decoded, image=window_of(decoded.image, self.keep, random.Random(self.seed)))


def view_job(path: Path, key: str, view: int, framing_min: float) -> tuple[str, Job]:
    """Cache key and job of training view ``view`` (1, 2, ...) of the photo with cache key ``key``."""
    seed = f"{key}/view{view}/{framing_min:g}"
    keep = random.Random(seed).uniform(framing_min, 1.0)
    return f"{key}.view{view}-{framing_min:g}", Job(path, keep, seed)


def _decode_all(jobs: Iterable[Job]) -> list[DecodedImage | ImageDecodeError]:
    out: list[DecodedImage | ImageDecodeError] = []
    for job in jobs:
        try:
            out.append(job.load())
        except ImageDecodeError as e:
            out.append(e)
    return out


def _finish_batch(
    keys: Sequence[str],
    decoded: Sequence[DecodedImage | ImageDecodeError],
    detections: Sequence[Detection | None],
    cropper: FaceCropper,
    cache: FaceCache,
) -> None:
    """Crop, encode and cache one batch (decode errors are cached as status ``error``)."""
    found = iter(detections)
    for key, d in zip(keys, decoded):
        if isinstance(d, ImageDecodeError):
            cache.store(key, CacheEntry("error", str(d), None, 0.0, ""), None)
            continue
        result = cropper.finish(d.image, next(found))
        crop = cropper.encode(result.image) if result.image is not None else None
        cache.store(key, _entry(result, crop, d.image.size), crop)


def process(
    todo: dict[str, Job], cropper: FaceCropper, cache: FaceCache, progress: Callable[[int], Any] | None = None
) -> None:
    """Detect, crop and cache every image of ``todo`` (cache key → job), a batch at a time.

    A pipeline on two cores: while MTCNN (this thread) looks at batch i, one worker thread
    decodes batch i+1 and crops/encodes/writes batch i-1 (PIL releases the GIL for that work).
    """
    batches = list(_chunks(list(todo), cropper.params.batch_size))
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        next_decoded = pool.submit(_decode_all, [todo[k] for k in batches[0]])
        finishing: Future[None] | None = None
        for i, batch in enumerate(batches):
            decoded = next_decoded.result()
            if i + 1 < len(batches):
                next_decoded = pool.submit(_decode_all, [todo[k] for k in batches[i + 1]])
            images = [d.image for d in decoded if isinstance(d, DecodedImage)]
            detections = cropper.detect(images) if images else []
            if finishing is not None:
                finishing.result()  # re-raises the worker's errors here
                if progress:
                    progress(len(batches[i - 1]))
            finishing = pool.submit(_finish_batch, batch, decoded, detections, cropper, cache)
        if finishing is not None:
            finishing.result()
            if progress:
                progress(len(batches[-1]))


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


def run_faces(raw: pd.DataFrame, cropper: FaceCropper, cache: FaceCache, root: Path = Path(".")) -> FacesRun:
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
        process(todo, cropper, cache, progress=bar.update)

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
    views = run_views(kept, cropper, cache, sources)
    return FacesRun(faces, views, sources, counts)


def run_views(
    kept: dict[str, tuple[Path, str]], cropper: FaceCropper, cache: FaceCache, sources: dict[str, Path]
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
        process(todo, cropper, cache, progress=bar.update)
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
