"""The generator's training images: one uint8 tensor cache, the rows it learns from, pixel conversions."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from core.errors import InputError, MissingInputError
from core.images import ImageDecodeError, decode_rgb, square_pixels


def load_image_cache(paths: Sequence[Path], size: int, desc: str = "loading images",
                     progress: bool = True) -> torch.Tensor:
    """Decode and resize every image once to (N, 3, size, size) uint8; a bad file is an error naming it."""
    if not paths:
        raise ValueError("no images to load: the selection is empty")
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False, disable=not progress)):
        if not Path(path).is_file():
            raise MissingInputError(f"{path}: image listed in the split but missing on disk", "rerun stage faces")
        try:
            image = decode_rgb(Path(path)).image
        except ImageDecodeError as e:
            raise InputError(f"{path}: {e}", "rerun stage faces") from None
        out[i] = torch.from_numpy(square_pixels(image, size))
    return out


def training_rows(split: pd.DataFrame, train_on: str, split_name: str = "train") -> pd.DataFrame:
    """The faces the generator learns from: real, fake or all rows of the split (an empty pick is an error)."""
    if train_on not in ("real", "fake", "all"):
        raise ValueError(f"generator.train_on: got {train_on!r}; allowed: 'real', 'fake', 'all'")
    rows = split if train_on == "all" else split[split["label"] == train_on]
    if rows.empty:
        labels = ", ".join(f"{k}={v}" for k, v in split["label"].value_counts().items()) or "no rows"
        raise InputError(f"the {split_name} split has no {train_on!r} faces to train the generator on "
                         f"(generator.train_on={train_on}; the split has {labels})",
                         "set generator.train_on to a label the split has")
    return rows.reset_index(drop=True)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (rounded, clamped)."""
    return images.detach().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu()


def tensor_fingerprint(images: torch.Tensor) -> str:
    return hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:12]
