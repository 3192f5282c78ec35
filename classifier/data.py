"""Classifier inputs: a split's rows and pixels, the training views, batches as tensors.

A split's face crops come from the one uint8 image cache (``core.pixels``; one entry per split,
``data/cache/pixels/<split>-<key>.npy``), memory-mapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import PipelineError
from core.io import read_csv
from core.pixels import CACHE_DIR, cached_pixels
from core.pixels import batch_indices as batch_indices  # re-exported: classifier.infer batches with it
from core.schema import FAKE, LABELS, REAL

LABEL_VALUES = {REAL: 0.0, FAKE: 1.0}


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
        allowed = ", ".join(map(repr, LABELS))
        raise ClassifierDataError(f"{name}: label values {bad} are not allowed; allowed: {allowed}")
    return frame["label"].map(LABEL_VALUES).to_numpy(dtype=np.float32)


def load_split(
    csv_path: Path, size: int, cache_dir: Path = CACHE_DIR, root: Path = Path("."), progress: bool = True
) -> SplitData:
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


def label_subset(split: SplitData, fraction: float, seed: int) -> SplitData:
    """A seeded share ``fraction`` of ``split``'s rows (the labels a label-efficiency run may use): whole groups,
    drawn in a shuffled order until each label has its share of rows, so both labels are always present."""
    if fraction >= 1.0:
        return split
    groups = split.frame["group"].astype(str).to_numpy()
    order = pd.unique(groups[np.random.default_rng(seed).permutation(len(groups))])
    target = {y: max(1, round(fraction * int((split.labels == y).sum()))) for y in (0.0, 1.0)}
    taken = {0.0: 0, 1.0: 0}
    keep = np.zeros(len(groups), dtype=bool)
    for group in order:
        if all(taken[y] >= target[y] for y in taken):
            break
        rows = groups == group
        ys = split.labels[rows]
        if any(taken[y] < target[y] for y in set(ys.tolist())):
            keep |= rows
            for y in ys.tolist():
                taken[y] += 1
    idx = np.flatnonzero(keep)
    return SplitData(split.name, split.frame.iloc[idx].reset_index(drop=True), split.images[idx], split.labels[idx])


@dataclass(frozen=True)
class TrainViews:
    """Extra views of training rows (the faces stage's tighter framings): each epoch a row is shown as its
    crop or one of its views, uniformly at random."""

    images: np.ndarray  # (M, 3, S, S) uint8
    of_row: list[np.ndarray]  # per split row: its indices into ``images``

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


def load_views(
    split: SplitData,
    views_csv: Path,
    size: int,
    cache_dir: Path = CACHE_DIR,
    root: Path = Path("."),
    progress: bool = True,
) -> TrainViews | None:
    """The training views of ``split``'s rows listed in ``views_csv`` (None when there are none)."""
    if not views_csv.exists():
        return None
    views = read_csv(views_csv)
    views = views[(views["path"] != "") & views["id"].isin(set(split.frame["id"]))].reset_index(drop=True)
    if views.empty:
        return None
    images = cached_pixels(
        f"{split.name}-views",
        views.to_csv(index=False).encode(),
        [root / p for p in views["path"]],
        size,
        cache_dir,
        progress,
    )
    position = {row_id: i for i, row_id in enumerate(split.frame["id"])}
    of_row: list[list[int]] = [[] for _ in range(len(split))]
    for k, row_id in enumerate(views["id"]):
        of_row[position[row_id]].append(k)
    return TrainViews(images, [np.asarray(v, dtype=int) for v in of_row])


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
