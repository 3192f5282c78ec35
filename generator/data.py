"""The generator's training images (from the one uint8 image cache), the rows it learns from, pixel conversions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import InputError
from core.params import GENERATOR_TRAIN_ON
from core.pixels import cached_pixels


def load_image_cache(
    paths: Sequence[Path], size: int, desc: str = "loading images", progress: bool = True, cache_name: str | None = None
) -> torch.Tensor:
    """(N, 3, size, size) uint8 pixels of ``paths`` in memory, read through the one image cache
    (``core.pixels``: decoded once, resized like the classifier's crops); a missing or bad file is an
    error naming it. ``cache_name`` names the cache entry (default: ``desc`` as a file name)."""
    if not paths:
        raise ValueError("no images to load: the selection is empty")
    listing = "\n".join(map(str, paths)).encode()
    name = cache_name or re.sub(r"[^a-z0-9]+", "-", desc.lower()).strip("-") or "images"
    pixels = cached_pixels(name, listing, [Path(p) for p in paths], size, progress=progress)
    return torch.from_numpy(np.array(pixels))


def training_rows(split: pd.DataFrame, train_on: str, split_name: str = "train") -> pd.DataFrame:
    """The faces the generator learns from: real, fake or all rows of the split (an empty pick is an error)."""
    if train_on not in GENERATOR_TRAIN_ON:
        allowed = ", ".join(map(repr, GENERATOR_TRAIN_ON))
        raise ValueError(f"generator.train_on: got {train_on!r}; allowed: {allowed}")
    rows = split if train_on == "all" else split[split["label"] == train_on]
    if rows.empty:
        labels = ", ".join(f"{k}={v}" for k, v in split["label"].value_counts().items()) or "no rows"
        raise InputError(
            f"the {split_name} split has no {train_on!r} faces to train the generator on "
            f"(generator.train_on={train_on}; the split has {labels})",
            "set generator.train_on to a label the split has",
        )
    return rows.reset_index(drop=True)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return images.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def tensor_fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:12]
