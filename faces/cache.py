"""Face detection (MTCNN) and the one crop → resize → encode path of the ``faces`` stage.

``FaceCropper(params).crop(images)`` is what both the stage and a ``predict`` CLI call:

* detection runs on a copy of each image scaled so its longer side is ``detect_side`` and
  letterboxed (top-left) into one ``detect_side`` x ``detect_side`` canvas, so ``batch_size``
  images go through MTCNN in one call; boxes are mapped back to full-resolution pixels;
* the most probable face wins; below ``min_prob`` it is a miss (``on_miss``: drop | center);
* the crop is a square around the box centre, side ``max(w, h) * (1 + margin)``, shifted so it
  lies inside the full-resolution image and shrunk (around the face) when the image is too small
  for it; the margin it actually gives the face is recorded. Nothing is ever filled in: padding
  with a constant made a label wherever one class's faces sat closer to the photo's edge.

Every image, real or fake, goes through the same decode → crop → resize → encode path, so the
file format carries no label. The per-image cache (``FaceCache``) makes the stage resumable.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.resources
import json
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from core.device import pick_device
from core.images import DecodedImage, ImageDecodeError, decode_rgb, encode, extension
from core.io import atomic_write_bytes, sha1_bytes, sha1_file, stable_hash, write_json
from core.params import FacesParams, as_dict
from core.schema import FACE_COLUMNS, FACE_KEPT, RAW_COLUMNS, RAW_STATUSES, VIEW_COLUMNS

CROP_FILTER = Image.Resampling.LANCZOS     # the one filter every crop is resized with
DETECT_FILTER = Image.Resampling.BILINEAR  # scaling of the detection copy (antialiased when shrinking)
# Bump when the detect/crop code changes in a way that changes outputs: invalidates the cache.
ALGO_VERSION = "letterbox-topleft/channels-last/lanczos/inside-image/v2"
# Params that change results; batch_size, device and threads only change speed. ``grayscale`` is
# applied after the cache (faces.grayscale), so it is not among them.
RESULT_KEYS = ("crop_size", "margin", "min_prob", "on_miss", "detect_side", "min_face",
               "encoding", "jpeg_quality")
USABLE_RAW = ("ok", "converted")


# --------------------------------------------------------------------------- boxes and results

@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixel coordinates (x1, y1) top-left, (x2, y2) bottom-right."""
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def scaled(self, sx: float, sy: float) -> Box:
        return Box(self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy)

    def iou(self, other: Box) -> float:
        iw = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        ih = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = iw * ih
        union = self.width * self.height + other.width * other.height - inter
        return inter / union if union > 0 else 0.0

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Detection:
    box: Box      # full-resolution pixel coordinates
    prob: float


Region = tuple[int, int, int, int]  # left, top, right, bottom in full-resolution pixels


@dataclass(frozen=True)
class FaceResult:
    """Outcome for one image: the crop (``crop_size`` x ``crop_size`` RGB) unless dropped."""
    image: Image.Image | None
    detection: Detection | None  # the most probable face found at any probability, or None
    status: str                  # ok | center | dropped
    reason: str
    region: Region | None = None     # the square cut from the image (inside it)
    margin_used: float | None = None  # the margin that square gives the face (None without a face)
    grayscale: bool = False          # the crop carries no colour

    @property
    def prob(self) -> float:
        return self.detection.prob if self.detection else 0.0


# --------------------------------------------------------------------------- detector

def facenet_weight_files() -> list[Path]:
    data = importlib.resources.files("facenet_pytorch") / "data"
    return [Path(str(data / f"{name}.pt")) for name in ("pnet", "rnet", "onet")]


def detector_version() -> str:
    """Identifies the detector: package version, MTCNN weight bytes, this module's algorithm."""
    weights = hashlib.sha1()
    for path in facenet_weight_files():
        weights.update(sha1_file(path).encode())
    return (f"facenet-pytorch=={importlib.metadata.version('facenet-pytorch')};"
            f"weights={weights.hexdigest()[:12]};{ALGO_VERSION}")


def build_mtcnn(min_face: int, device: torch.device) -> Any:
    """MTCNN returning every face with its probability (we pick the most probable ourselves)."""
    from facenet_pytorch import MTCNN

    model = MTCNN(min_face_size=min_face, keep_all=True, select_largest=False,
                  post_process=False, device=device)
    # channels-last conv weights make the CPU max-pool/conv kernels ~1.3-1.5x faster here (the
    # input canvas is NHWC already); boxes/probs agree with the default layout to ~1e-4.
    return model.to(memory_format=torch.channels_last).eval()


@dataclass(frozen=True)
class Letterboxed:
    canvas: np.ndarray  # (N, side, side, 3) uint8
    scales: list[tuple[float, float]]  # per image: full-res pixels per detection-copy pixel (x, y)


def letterbox(images: Sequence[Image.Image], side: int) -> Letterboxed:
    """Scale each image so its longer side is ``side`` and paste it top-left on a black canvas."""
    canvas = np.zeros((len(images), side, side, 3), dtype=np.uint8)
    scales = []
    for i, im in enumerate(images):
        w, h = im.size
        s = side / max(w, h)
        nw, nh = min(side, max(1, round(w * s))), min(side, max(1, round(h * s)))
        small = im if (nw, nh) == (w, h) else im.resize((nw, nh), DETECT_FILTER)
        canvas[i, :nh, :nw] = np.asarray(small if small.mode == "RGB" else small.convert("RGB"))
        scales.append((w / nw, h / nh))
    return Letterboxed(canvas, scales)


def best_detection(boxes: Any, probs: Any, scale: tuple[float, float]) -> Detection | None:
    """The most probable of one image's MTCNN boxes, mapped back to full resolution."""
    if boxes is None:
        return None
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray([np.nan if v is None else v for v in np.ravel(probs)], dtype=np.float64)
    if len(b) == 0 or len(p) != len(b) or np.all(np.isnan(p)):
        return None
    i = int(np.nanargmax(p))
    return Detection(Box(*map(float, b[i])).scaled(*scale), float(p[i]))


# --------------------------------------------------------------------------- cropping

def face_square(box: Box, margin: float, width: int, height: int) -> Region:
    """Integer square around ``box`` with side ``max(w, h) * (1 + margin)``, inside a width x height image.

    Centred on the face where the image allows it, else shifted inward; shrunk to the image's
    shorter side when it is larger (then the face gets less margin than asked: see margin_of).
    """
    side = max(1, min(round(max(box.width, box.height) * (1.0 + margin)), width, height))
    left = round((box.x1 + box.x2) / 2 - side / 2)
    top = round((box.y1 + box.y2) / 2 - side / 2)
    left, top = min(max(left, 0), width - side), min(max(top, 0), height - side)
    return left, top, left + side, top + side


def margin_of(region: Region, box: Box) -> float:
    """The margin a square region gives a face box (negative: the square is inside the box)."""
    return (region[2] - region[0]) / max(box.width, box.height, 1e-6) - 1.0


def center_square(width: int, height: int) -> Region:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop_resize(image: Image.Image, region: Region, size: int) -> Image.Image:
    """Cut ``region`` (inside the image) and resize it to ``size`` x ``size``."""
    w, h = image.size
    if not (0 <= region[0] < region[2] <= w and 0 <= region[1] < region[3] <= h):
        raise ValueError(f"crop region {region} leaves the {w}x{h} image (it would need padding)")
    return image.convert("RGB").crop(region).resize((size, size), CROP_FILTER)


GRAY_SPREAD = 6  # channel spread (max - min of R, G, B, in levels) that JPEG chroma noise leaves in a grey photo


def is_grayscale(image: Image.Image) -> bool:
    """True when (nearly) every pixel has equal R, G and B: a grey photo, also when stored as RGB."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    spread = a.max(axis=2) - a.min(axis=2)
    return bool(np.quantile(spread, 0.99) <= GRAY_SPREAD)


class FaceCropper:
    """Batched, downscaled MTCNN detection + full-resolution square crops, for any RGB images."""

    def __init__(self, params: FacesParams, device: torch.device | None = None,
                 detector: Any | None = None) -> None:
        self.params = params
        self.device = device if device is not None else pick_device(params.device)
        self.detector = detector if detector is not None else build_mtcnn(params.min_face, self.device)

    def detect(self, images: Sequence[Image.Image]) -> list[Detection | None]:
        """The most probable face of each image (any probability), in full-resolution pixels."""
        out: list[Detection | None] = []
        bs = self.params.batch_size
        for start in range(0, len(images), bs):
            boxed = letterbox(images[start:start + bs], self.params.detect_side)
            boxes, probs = self.detector.detect(boxed.canvas)
            out.extend(best_detection(b, p, s) for b, p, s in zip(boxes, probs, boxed.scales))
        return out

    def crop(self, images: Sequence[Image.Image]) -> list[FaceResult]:
        detections = self.detect(images)
        return [self.finish(im, det) for im, det in zip(images, detections)]

    def finish(self, image: Image.Image, det: Detection | None) -> FaceResult:
        p = self.params
        if det is not None and det.prob >= p.min_prob:
            region = face_square(det.box, p.margin, *image.size)
            status, reason = "ok", ""
        else:
            reason = ("no face detected" if det is None
                      else f"best face prob {det.prob:.3f} < min_prob {p.min_prob:g}")
            if p.on_miss != "center":
                return FaceResult(None, det, "dropped", reason)
            region, status, reason = center_square(*image.size), "center", f"{reason}; centred crop"
        crop = crop_resize(image, region, p.crop_size)
        return FaceResult(crop, det, status, reason, region, margin_of(region, det.box) if det else None,
                          is_grayscale(crop))

    def encode(self, crop: Image.Image) -> bytes:
        return encode(crop, self.params.encoding, self.params.jpeg_quality)

    def as_stored(self, crop: Image.Image) -> Image.Image:
        """The pixels the stage stores for ``crop`` (encoded and decoded again, e.g. for predict)."""
        return decode_rgb(self.encode(crop)).image

    @property
    def extension(self) -> str:
        return extension(self.params.encoding)


# --------------------------------------------------------------------------- resumable cache

def cache_key(params: FacesParams, version: str | None = None) -> str:
    values = {k: v for k, v in as_dict(params).items() if k in RESULT_KEYS}
    return stable_hash({"params": values, "detector": version or detector_version()})


@dataclass(frozen=True)
class CacheEntry:
    status: str            # ok | center | dropped | error
    reason: str
    box: list[float] | None
    prob: float
    crop_sha1: str         # "" when there is no crop (dropped, error)
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


# --------------------------------------------------------------------------- stage driver

@dataclass
class RunCounts:
    computed: int = 0
    reused: int = 0
    missing: int = 0


def usable_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows that are faces inputs (status ok|converted); checks the raw manifest contract."""
    missing = [c for c in RAW_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(f"raw manifest lacks columns {missing}; expected {RAW_COLUMNS}")
    bad = sorted(set(raw["status"]) - set(RAW_STATUSES))
    if bad:
        raise ValueError(f"raw manifest: unknown status {bad}; allowed: {', '.join(RAW_STATUSES)}")
    return raw[raw["status"].isin(USABLE_RAW)]


def _entry(result: FaceResult, crop_bytes: bytes | None, raw_size: tuple[int, int]) -> CacheEntry:
    det = result.detection
    return CacheEntry(result.status, result.reason, det.box.as_list() if det else None,
                      result.prob, sha1_bytes(crop_bytes) if crop_bytes else "",
                      list(result.region) if result.region else None,
                      None if result.margin_used is None else round(result.margin_used, 6),
                      list(raw_size), result.grayscale)


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def window_of(image: Image.Image, keep: float, rng: random.Random | None = None) -> Image.Image:
    """The part of ``image`` that a tighter frame keeps: ``keep`` of each side, centred, or placed at
    random with ``rng``. No pixel is resampled."""
    w, h = image.size
    cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
    left, top = ((w - cw) // 2, (h - ch) // 2) if rng is None else (rng.randint(0, w - cw), rng.randint(0, h - ch))
    return image.crop((left, top, left + cw, top + ch))


@dataclass(frozen=True)
class Job:
    """One crop to compute: a raw photo, or a training view of it (the photo framed tighter)."""
    path: Path
    keep: float = 1.0   # fraction of each side kept (1 = the whole photo)
    seed: str = ""      # where a tighter frame sits

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


def _finish_batch(keys: Sequence[str], decoded: Sequence[DecodedImage | ImageDecodeError],
                  detections: Sequence[Detection | None], cropper: FaceCropper, cache: FaceCache) -> None:
    """Crop, encode and cache one batch (decode errors are cached as status ``error``)."""
    found = iter(detections)
    for key, d in zip(keys, decoded):
        if isinstance(d, ImageDecodeError):
            cache.store(key, CacheEntry("error", str(d), None, 0.0, ""), None)
            continue
        result = cropper.finish(d.image, next(found))
        crop = cropper.encode(result.image) if result.image is not None else None
        cache.store(key, _entry(result, crop, d.image.size), crop)


def process(todo: dict[str, Job], cropper: FaceCropper, cache: FaceCache,
            progress: Callable[[int], Any] | None = None) -> None:
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
    faces: pd.DataFrame         # FACE_COLUMNS, one row per usable raw image
    views: pd.DataFrame         # VIEW_COLUMNS, faces.framing_views rows per kept face
    sources: dict[str, Path]    # output path (data/faces/...) -> its cache file (assemble with link_or_copy)
    counts: RunCounts


def run_faces(raw: pd.DataFrame, cropper: FaceCropper, cache: FaceCache, root: Path = Path(".")) -> FacesRun:
    """Fill the cache for every usable raw row (and the training views of every kept face).

    ``faces.path`` is ``data/faces/images/<id><ext>`` for kept rows, ``views.path``
    ``data/faces/views/<id>.v<k><ext>`` for views whose face was found.
    """
    rows = usable_rows(raw)
    counts = RunCounts()
    keys: list[str | None] = []
    todo: dict[str, Path] = {}
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
        entry = cache.load(key) if key else None
        if key is None:
            entry = CacheEntry("error", f"raw file missing: {row['path'] or '(empty path)'}", None, 0.0, "")
        elif entry is None:
            raise RuntimeError(f"faces cache entry for {row['id']} ({key}) vanished during the run")
        path = f"data/faces/images/{row['id']}{cache.ext}" if entry.has_crop else ""
        if path:
            sources[path] = cache.crop_path(key)
        box = entry.box or ["", "", "", ""]
        region = entry.region or ["", "", "", ""]
        raw_size = entry.raw_size or ["", ""]
        out_rows.append({**{c: row[c] for c in ("id", "label", "generator", "source", "group",
                                                "predefined_split")},
                         "path": path, "raw_path": row["path"], "raw_width": raw_size[0], "raw_height": raw_size[1],
                         "box_x1": box[0], "box_y1": box[1], "box_x2": box[2], "box_y2": box[3],
                         "prob": entry.prob, "crop_x1": region[0], "crop_y1": region[1], "crop_x2": region[2],
                         "crop_y2": region[3], "margin_used": "" if entry.margin_used is None else entry.margin_used,
                         "grayscale": ("raw" if entry.grayscale else "no") if entry.has_crop else "",
                         "status": entry.status, "reason": entry.reason})
    faces = pd.DataFrame(out_rows, columns=FACE_COLUMNS)
    kept = {row_id: (root / raw_path, key) for row_id, raw_path, key, status
            in zip(faces["id"], faces["raw_path"], keys, faces["status"]) if status in FACE_KEPT and key}
    views = run_views(kept, cropper, cache, sources)
    return FacesRun(faces, views, sources, counts)


def run_views(kept: dict[str, tuple[Path, str]], cropper: FaceCropper, cache: FaceCache,
              sources: dict[str, Path]) -> pd.DataFrame:
    """``faces.framing_views`` training views of each kept face: the photo framed tighter (a window of
    ``framing_min``..1 of each side, placed at random, seeded by the photo), cropped the same way.

    The classifier trains on a random one of an image's crop and its views each epoch, so how tightly a
    photo was framed (which differs between real and fake sources) stops being something to learn.
    """
    p = cropper.params
    jobs = {row_id: [view_job(path, key, v, p.framing_min) for v in range(1, p.framing_views + 1)]
            for row_id, (path, key) in kept.items()}
    todo = {k: job for per_row in jobs.values() for k, job in per_row if cache.load(k) is None}
    with tqdm(total=sum(map(len, jobs.values())), initial=sum(map(len, jobs.values())) - len(todo),
              desc="views", unit="img", disable=not todo) as bar:
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
            rows.append({"id": row_id, "view": view, "path": path, "status": entry.status, "reason": entry.reason,
                         "margin_used": "" if entry.margin_used is None else entry.margin_used,
                         "grayscale": ("raw" if entry.grayscale else "no") if entry.has_crop else ""})
    return pd.DataFrame(rows, columns=VIEW_COLUMNS)


# --------------------------------------------------------------------------- metrics

def _rate(num: float, den: float) -> float | None:
    return round(num / den, 6) if den else None


def group_metrics(faces: pd.DataFrame, raw_skipped: int) -> dict[str, Any]:
    n = {s: int((faces["status"] == s).sum()) for s in ("ok", "center", "dropped", "error")}
    inputs = len(faces)
    kept = n["ok"] + n["center"]
    decoded = inputs - n["error"]
    probs = pd.to_numeric(faces.loc[faces["status"] != "error", "prob"], errors="coerce").fillna(0.0)
    detected = pd.to_numeric(faces.loc[faces["status"] == "ok", "prob"], errors="coerce")
    return {
        "raw_skipped": raw_skipped, "inputs": inputs, **n, "kept": kept,
        "drop_rate": _rate(inputs - kept, inputs),           # inputs not in the output
        "loss_rate_from_raw": _rate(inputs - kept + raw_skipped, inputs + raw_skipped),
        "detection_rate": _rate(n["ok"], decoded),            # decoded images with a face >= min_prob
        "mean_prob": round(float(probs.mean()), 6) if len(probs) else None,  # best face per image, 0 if none
        "mean_prob_detected": round(float(detected.mean()), 6) if len(detected) else None,
        # share of kept crops that are grey: in the photo itself, and after faces.grayscale
        "grayscale_raw_share": _rate(int((faces["grayscale"] == "raw").sum()), kept),
        "grayscale_share": _rate(int(faces["grayscale"].isin(["raw", "matched"]).sum()), kept),
        "margin_used_mean": _mean(faces.loc[faces["status"].isin(FACE_KEPT), "margin_used"]),
    }


def _mean(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return round(float(v.mean()), 6) if len(v) else None


def view_metrics(views: pd.DataFrame) -> dict[str, Any]:
    """How many training views exist and how many found their face."""
    kept = int(views["status"].isin(FACE_KEPT).sum())
    return {"views": len(views), "kept": kept, "kept_rate": _rate(kept, len(views)),
            "margin_used_mean": _mean(views.loc[views["status"].isin(FACE_KEPT), "margin_used"])}


def face_metrics(raw: pd.DataFrame, faces: pd.DataFrame) -> dict[str, Any]:
    """Counts and rates overall, per label and per generator (raw skips counted as such)."""
    skipped = raw[raw["status"] == "skipped"]

    def by(column: str) -> dict[str, Any]:
        values = sorted(set(faces[column]) | set(skipped[column]))
        return {v: group_metrics(faces[faces[column] == v], int((skipped[column] == v).sum()))
                for v in values}

    return {"overall": group_metrics(faces, len(skipped)), "label": by("label"),
            "generator": by("generator")}
