"""The ``faces`` stage's resumable per-image cache.

``FaceCache`` holds one crop file + one JSON per raw image (keyed by the raw file's sha1), so a killed
run resumes; ``faces.pipeline`` fills it, ``faces.run`` turns it into the manifest rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from core.io import atomic_write_bytes, sha1_bytes, stable_hash, write_json
from core.params import FacesParams, as_dict
from core.schema import FACE_KEPT
from faces.crop import FaceResult
from faces.detect import detector_version

# Params that change results; batch_size, device, threads and workers only change speed. ``grayscale`` is
# applied after the cache (faces.grayscale), so it is not among them.
RESULT_KEYS = ("crop_size", "margin", "min_prob", "on_miss", "detect_side", "min_face", "encoding", "jpeg_quality")


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


def entry_of(result: FaceResult, crop_bytes: bytes | None, raw_size: tuple[int, int]) -> CacheEntry:
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
