"""Classifier inputs: a uint8 image cache per split, the training views, batching.

Face crops are decoded once into ``data/cache/classifier/<split>-<key>.npy``: an (N, 3, S, S) uint8
array that later runs memory-map instead of decoding PNG/JPEG again. ``key`` hashes the split CSV,
the bytes of every image it lists, the side ``S`` and the cache format, so any change upstream
makes a new entry. Entries are written under a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from core.errors import PipelineError
from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.io import read_csv, stable_hash

CACHE_DIR = Path("data/cache/classifier")
CACHE_VERSION = 1
LABEL_VALUES = {"real": 0.0, "fake": 1.0}


class ClassifierDataError(PipelineError, ValueError):
    """A split CSV or one of its images that the classifier cannot use."""


@dataclass(frozen=True)
class SplitData:
    """One split: its CSV rows, the uint8 pixels (N, 3, S, S) and the targets (1 = fake)."""

    name: str
    frame: pd.DataFrame
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def generators(self) -> np.ndarray:
        return self.frame["generator"].to_numpy(dtype=str)


def labels_of(frame: pd.DataFrame, name: str) -> np.ndarray:
    bad = sorted(set(frame["label"]) - set(LABEL_VALUES))
    if bad:
        raise ClassifierDataError(f"{name}: label values {bad} are not allowed; allowed: 'real', 'fake'")
    return frame["label"].map(LABEL_VALUES).to_numpy(dtype=np.float32)


def cache_key(listing: bytes, image_paths: list[Path], size: int, what: str, progress: bool = True) -> str:
    """Hash of the listing (the split CSV's bytes), every image's bytes, the side and the cache format."""
    h = hashlib.sha1()
    for path in tqdm(image_paths, desc=f"hash {what}", unit="img", leave=False, mininterval=1.0,
                     disable=not progress):
        try:
            h.update(path.read_bytes())
        except FileNotFoundError:
            raise ClassifierDataError(f"{what}: image {path} is missing (re-run the faces stage)") from None
        h.update(b"\0")
    return stable_hash({"v": CACHE_VERSION, "csv": hashlib.sha1(listing).hexdigest(),
                        "images": h.hexdigest(), "size": size}, n=16)


def decode_face(path: Path, size: int) -> np.ndarray:
    """(3, size, size) uint8 pixels of one crop; resized (bicubic) only when its side differs."""
    try:
        image = decode_rgb(path).image
    except ImageDecodeError as e:
        raise ClassifierDataError(f"{path}: {e}") from None
    return square_pixels(image, size)


def build_cache(target: Path, image_paths: list[Path], size: int, workers: int | None = None) -> None:
    """Decode every image into a (N, 3, size, size) .npy, written under a temp name then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(image_paths), 3, size, size))
        with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            decoded = pool.map(lambda p: decode_face(p, size), image_paths)
            for i, pixels in enumerate(tqdm(decoded, total=len(image_paths), desc=f"cache {target.stem}",
                                            unit="img", mininterval=1.0)):
                out[i] = pixels
        out.flush()
        del out
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_split(csv_path: Path, size: int, cache_dir: Path = CACHE_DIR, root: Path = Path("."),
               progress: bool = True) -> SplitData:
    """The split's rows and memory-mapped pixels, decoding into the cache only on a miss."""
    name = csv_path.stem
    frame = read_csv(csv_path)
    if frame.empty:
        raise ClassifierDataError(f"{csv_path} has no rows: the split stage left split {name!r} empty")
    for column in ("path", "label", "generator"):
        if column not in frame.columns:
            raise ClassifierDataError(f"{csv_path}: column {column!r} is missing (see core.schema)")
    labels = labels_of(frame, str(csv_path))
    images = cached_pixels(name, csv_path.read_bytes(), [root / p for p in frame["path"]], size, cache_dir, progress)
    return SplitData(name, frame, images, labels)


def cached_pixels(name: str, listing: bytes, paths: list[Path], size: int, cache_dir: Path,
                  progress: bool = True) -> np.ndarray:
    """(N, 3, size, size) uint8 memory map of ``paths``, decoded into ``cache_dir`` only on a miss."""
    target = cache_dir / f"{name}-{cache_key(listing, paths, size, name, progress)}.npy"
    if not target.exists():
        for stale in cache_dir.glob(f"{name}-*.npy"):
            if re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{16}}", stale.stem):  # not another split's entries
                stale.unlink(missing_ok=True)
        build_cache(target, paths, size)
    images = np.load(target, mmap_mode="r")
    if images.shape != (len(paths), 3, size, size):
        raise ClassifierDataError(f"{target}: shape {images.shape} does not match its {len(paths)} images; delete it")
    return images


@dataclass(frozen=True)
class TrainViews:
    """Extra views of training rows (the faces stage's tighter framings): each epoch a row is shown as its
    crop or one of its views, uniformly at random."""

    images: np.ndarray            # (M, 3, S, S) uint8
    of_row: list[np.ndarray]      # per split row: its indices into ``images``

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, crops: np.ndarray, idx: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """uint8 batch of rows ``idx``: each row's crop or one of its views."""
        batch = gather(crops, idx)
        picks = [(k, self.of_row[r]) for k, r in enumerate(idx) if len(self.of_row[r])]
        for k, views in picks:
            choice = int(torch.randint(len(views) + 1, (1,), generator=generator))
            if choice:
                batch[k] = torch.from_numpy(np.array(self.images[views[choice - 1]]))
        return batch


def load_views(split: SplitData, views_csv: Path, size: int, cache_dir: Path = CACHE_DIR, root: Path = Path("."),
               progress: bool = True) -> TrainViews | None:
    """The training views of ``split``'s rows listed in ``views_csv`` (None when there are none)."""
    if not views_csv.exists():
        return None
    views = read_csv(views_csv)
    views = views[(views["path"] != "") & views["id"].isin(set(split.frame["id"]))].reset_index(drop=True)
    if views.empty:
        return None
    images = cached_pixels(f"{split.name}-views", views.to_csv(index=False).encode(),
                           [root / p for p in views["path"]], size, cache_dir, progress)
    position = {row_id: i for i, row_id in enumerate(split.frame["id"])}
    of_row: list[list[int]] = [[] for _ in range(len(split))]
    for k, row_id in enumerate(views["id"]):
        of_row[position[row_id]].append(k)
    return TrainViews(images, [np.asarray(v, dtype=int) for v in of_row])


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None = None,
                  min_size: int = 1) -> Iterator[np.ndarray]:
    """Index batches in order, or shuffled with ``generator``; a last batch smaller than ``min_size`` is
    dropped (BatchNorm cannot train on a single image, per process when the batch is split)."""
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < min_size:
            continue
        yield idx


def gather(images: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """uint8 (B, 3, S, S) tensor of rows ``idx`` (read from the memory map in ascending order)."""
    order = np.argsort(idx, kind="stable")
    rows = np.empty((len(idx), *images.shape[1:]), dtype=np.uint8)
    rows[order] = images[idx[order]]
    return torch.from_numpy(rows)


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.to(torch.float32).mul_(1.0 / 255.0)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    scale = 1.0 / torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * scale
    return torch.addcmul(shift, x, scale)  # (x - mean) / std in one pass
