"""Decoded pixels for training and scoring: the one uint8 image cache, and index batches.

A list of images (a split, the generator's training faces, fid's test faces) is decoded once into
``data/cache/pixels/<name>-<key>.npy``: an (N, 3, S, S) uint8 array that later runs memory-map instead
of decoding PNG/JPEG again. ``key`` hashes the listing (e.g. the split CSV's bytes), the bytes of every
image, the side ``S`` and the cache format, so any change upstream makes a new entry, which replaces
the older entries of the same ``name``. Entries are written under a temporary name and renamed into
place. Every image goes through ``core.images`` (``decode_rgb`` + ``square_pixels``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

from core.errors import InputError, MissingInputError
from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.io import stable_hash

T = TypeVar("T")

CACHE_DIR = Path("data/cache/pixels")
CACHE_VERSION = 1
REMAKE = "rerun stage faces (dvc repro faces)"


def cache_key(listing: bytes, image_paths: list[Path], size: int, what: str, progress: bool = True) -> str:
    """Hash of the listing, every image's bytes, the side and the cache format."""
    h = hashlib.sha1()
    for path in tqdm(image_paths, desc=f"hash {what}", unit="img", leave=False, mininterval=1.0, disable=not progress):
        try:
            h.update(path.read_bytes())
        except FileNotFoundError:
            raise MissingInputError(f"{what}: image {path} is missing", REMAKE) from None
        h.update(b"\0")
    return stable_hash(
        {"v": CACHE_VERSION, "csv": hashlib.sha1(listing).hexdigest(), "images": h.hexdigest(), "size": size}, n=16
    )


def decode_square(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 pixels of one image; resized (bicubic) only when its side differs."""
    try:
        image = decode_rgb(path).image
    except ImageDecodeError as e:
        raise InputError(f"{path}: {e}", REMAKE) from None
    return square_pixels(image, size)


def build_cache(
    target: Path, image_paths: list[Path], size: int, workers: int | None = None, progress: bool = True
) -> None:
    """Decode every image into a (N, 3, size, size) .npy, written under a temp name then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(image_paths), 3, size, size))
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(lambda p: decode_square(p, size), image_paths)
            for i, pixels in enumerate(
                tqdm(
                    decoded,
                    total=len(image_paths),
                    desc=f"cache {target.stem}",
                    unit="img",
                    mininterval=1.0,
                    disable=not progress,
                )
            ):
                out[i] = pixels
        out.flush()
        del out
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def cached_pixels(
    name: str, listing: bytes, paths: list[Path], size: int, cache_dir: Path = CACHE_DIR, progress: bool = True
) -> np.ndarray:
    """(N, 3, size, size) uint8 memory map of ``paths``, decoded into ``cache_dir`` only on a miss.

    ``name`` (a file-name stem, e.g. the split's name) groups the entries: a new entry removes the
    older ones of the same name.
    """
    target = cache_dir / f"{name}-{cache_key(listing, paths, size, name, progress)}.npy"
    if not target.exists():
        for stale in cache_dir.glob(f"{name}-*.npy"):
            if re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", stale.stem):  # not another name's entries
                stale.unlink(missing_ok=True)
        build_cache(target, paths, size, progress=progress)
    images = np.load(target, mmap_mode="r")
    if images.shape != (len(paths), 3, size, size):
        raise InputError(f"{target}: shape {images.shape} does not match its {len(paths)} images", "delete it")
    return images


def chunks(items: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive pieces of ``n`` (the last one shorter)."""
    for i in range(0, len(items), n):
        yield items[i : i + n]


def batch_indices(
    n: int, batch_size: int, generator: torch.Generator | None = None, min_size: int = 1
) -> Iterator[np.ndarray]:
    """Index batches of ``range(n)`` in order, or shuffled with ``generator``; a last batch smaller than
    ``min_size`` is dropped (BatchNorm cannot train on a single image, per process when the batch is split)."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < min_size:
            continue
        yield idx
