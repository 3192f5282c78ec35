"""Small test utilities (importable as ``tests.helpers``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image


def set_params(params_file: Path, block: str, **values: Any) -> None:
    """Overwrite keys of one block of a params.yaml copy."""
    data = yaml.safe_load(params_file.read_text()) or {}
    data.setdefault(block, {})
    if not isinstance(data[block], dict):
        data[block] = {}
    data[block].update(values)
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def noise_jpeg(seed: int, size: int = 80) -> bytes:
    """A small valid RGB JPEG (noise; different for every seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_file(path: Path, data: bytes) -> None:
    """``data`` at ``path``, creating its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
