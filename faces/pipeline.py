"""The faces stage's batch pipeline: decode, detect (MTCNN, batched), crop, encode and cache images.

``process`` runs it in this process: while MTCNN (this thread) looks at batch i, one worker thread decodes
batch i+1 and crops/encodes/writes batch i-1 (PIL releases the GIL for that work). ``process_on_workers``
hands the same batches to several worker processes (``faces.workers``), each with one torch thread and its
own MTCNN, so detection uses every core; every batch holds the same images as in a one-process run, so the
crops and the cache are byte-identical. The cache's entries are written atomically, JSON last, so a killed
worker leaves only complete entries behind (FaceCache.load checks each crop's sha1).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from core.errors import PipelineError
from core.images import DecodedImage, ImageDecodeError, decode_rgb
from core.pixels import chunks
from faces.cache import CacheEntry, FaceCache, entry_of
from faces.crop import FaceCropper, window_of
from faces.detect import Detection


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
        cache.store(key, entry_of(result, crop, d.image.size), crop)


def process(
    todo: dict[str, Job], cropper: FaceCropper, cache: FaceCache, progress: Callable[[int], Any] | None = None
) -> None:
    """Detect, crop and cache every image of ``todo`` (cache key → job), a batch at a time.

    A pipeline on two cores: while MTCNN (this thread) looks at batch i, one worker thread
    decodes batch i+1 and crops/encodes/writes batch i-1 (PIL releases the GIL for that work).
    """
    batches = list(chunks(list(todo), cropper.params.batch_size))
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


def worker_count(requested: int) -> int:
    """``faces.workers``: 0 = one per core this process may use."""
    return requested or len(os.sched_getaffinity(0))


# The cropper the worker processes use: set by the parent just before it forks them, so every worker starts
# with MTCNN already loaded (a spawned worker would spend seconds importing torch and loading it again).
_WORKER_CROPPER: dict[str, FaceCropper] = {}


def _start_worker() -> None:
    torch.set_num_threads(1)  # one intra-op thread per process: no OpenMP pool inherited across the fork


def _run_batch(todo: dict[str, Job], root: str, ext: str) -> int:
    process(todo, _WORKER_CROPPER["cropper"], FaceCache(Path(root), ext))
    return len(todo)


def process_on_workers(
    todo: dict[str, Job],
    cropper: FaceCropper,
    cache: FaceCache,
    workers: int,
    progress: Callable[[int], Any] | None = None,
) -> None:
    """``process`` with the batches spread over ``workers`` processes (one torch thread each, CPU only).

    One process (``workers`` 1, a GPU, or a single batch) runs ``process`` here. The batches are those of
    a one-process run (``faces.batch_size`` images in the same order), so results do not depend on
    ``workers``.
    """
    batches = list(chunks(list(todo), cropper.params.batch_size))
    n = min(workers, len(batches))
    if n <= 1 or cropper.device.type != "cpu":
        process(todo, cropper, cache, progress)
        return
    _WORKER_CROPPER["cropper"] = cropper
    pool = ProcessPoolExecutor(n, mp_context=get_context("fork"), initializer=_start_worker)
    try:
        with pool:
            futures = [pool.submit(_run_batch, {k: todo[k] for k in b}, str(cache.root), cache.ext) for b in batches]
            for done in as_completed(futures):
                finished = done.result()
                if progress:
                    progress(finished)
    except BrokenProcessPool:
        raise PipelineError(
            "a faces worker process died (killed, or out of memory); the crops it finished are cached",
            "rerun the stage: it resumes from the cache (lower faces.workers if memory is short)",
        ) from None
    finally:
        _WORKER_CROPPER.clear()
