"""Tiny synthetic split CSVs + face crops + raw files for the classifier, evaluate and predict tests.

Reals are smooth colour gradients with a blob; fakes add a faint checkerboard (a GAN-like
high-frequency trace) and a colour cast, so a small network learns them in a couple of epochs.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from classifier.augment import NO_AUGMENTATION
from core.io import write_csv, write_json
from core.params import ClassifierParams
from core.schema import SPLIT_COLUMNS

GENERATORS = ("gan_a", "gan_b")


def synthetic_face(rng: np.random.Generator, fake: bool, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(0.2, 0.8, 3)
    slope = rng.uniform(-0.3, 0.3, (2, 3))
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
    blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2)[..., None]
    img = np.where(blob, img * 0.6 + 0.3, img)
    if fake:
        checker = ((np.indices((size, size)).sum(0) % 2) * 2 - 1)[..., None]
        img = img + 0.12 * checker + np.array([0.15, -0.05, -0.10])
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def raw_bytes(pixels: np.ndarray, rng: np.random.Generator, fake: bool) -> bytes:
    """A 'raw' file for the shortcut audit: reals as JPEG at varying sizes, fakes as JPEG quality 75."""
    im = Image.fromarray(pixels).resize((int(rng.integers(48, 96)),) * 2)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=75 if fake else 90)
    return buf.getvalue()


def make_splits(root: Path, counts: dict[str, int] | None = None, size: int = 32, seed: int = 0) -> dict[str, Path]:
    """Write data/faces/images, data/raw/images and data/splits/{train,val,test}.csv under ``root``.

    ``counts`` = images per split; half real, the rest fake spread over GENERATORS.
    """
    counts = counts or {"train": 64, "val": 32, "test": 32}
    rng = np.random.default_rng(seed)
    out: dict[str, Path] = {}
    k = 0
    for split, n in counts.items():
        rows = []
        for i in range(n):
            fake = i % 2 == 1
            generator = GENERATORS[(i // 2) % len(GENERATORS)] if fake else "real"
            ident = f"{split}{k:04d}"
            k += 1
            pixels = synthetic_face(rng, fake, size)
            face = root / "data/faces/images" / f"{ident}.png"
            raw = root / "data/raw/images" / f"{ident}.jpg"
            face.parent.mkdir(parents=True, exist_ok=True)
            raw.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(face)
            raw.write_bytes(raw_bytes(pixels, rng, fake))
            rows.append(
                {
                    "id": ident,
                    "path": f"data/faces/images/{ident}.png",
                    "label": "fake" if fake else "real",
                    "generator": generator,
                    "source": "synthetic",
                    "group": ident,
                    "predefined_split": "",
                    "raw_path": f"data/raw/images/{ident}.jpg",
                    "box_x1": 0,
                    "box_y1": 0,
                    "box_x2": size,
                    "box_y2": size,
                    "prob": 0.99,
                    "status": "ok",
                    "reason": "",
                    "split": split,
                }
            )
        out[split] = root / "data/splits" / f"{split}.csv"
        write_csv(out[split], pd.DataFrame(rows, columns=SPLIT_COLUMNS))
    write_json(root / "data/faces/params.json", {"crop_size": size})  # as the faces stage records its params
    return out


def tiny_classifier_params(**overrides: object) -> dict[str, object]:
    """classifier block for a fast CPU run on 32px images."""
    values: dict[str, object] = {
        "arch": "cnn",
        "init": "none",
        "image_size": 32,
        "cnn_depth": 2,
        "cnn_width": 8,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.003,
        "freeze_backbone_epochs": 0,
        "max_minutes": 0,
        "device": "cpu",
        "threads": 1,
        "ensemble": 1,  # one member: fast; tests/test_uncertainty.py trains ensembles
    }
    values.update(overrides)
    return values


def loop_params(**overrides: object) -> ClassifierParams:
    """The classifier params block for train_loop tests: params.yaml's defaults without augmentation, label
    smoothing, frozen warm-up, early stopping or time budget, unless a test asks for them."""
    quiet = {
        **NO_AUGMENTATION,
        "label_smoothing": 0.0,
        "freeze_backbone_epochs": 0,
        "early_stopping_patience": 0,
        "max_minutes": 0.0,
    }
    return dataclasses.replace(ClassifierParams(), **{**quiet, **overrides})  # type: ignore[arg-type]
