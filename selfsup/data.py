"""What the pretrain stage reads: the train split's face crops (labels unused), optional unlabelled images
sent through the faces path, and the labelled train/val crops its kNN probe scores.

Validation and test images are never training images: the training set is built from
data/splits/train.csv alone (test.csv is never opened), and an extra image whose bytes are in the labelled
set (data/raw/manifest.csv) is skipped.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from core.errors import InputError, MissingInputError, require
from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.io import read_csv, sha1_file
from core.params import FacesParams, parse_block
from core.pixels import cached_pixels
from core.schema import FAKE, IMAGE_EXTENSIONS

SPLITS_DIR = Path("data/splits")
FACES_PARAMS = Path("data/faces/params.json")
RAW_MANIFEST = Path("data/raw/manifest.csv")


@dataclass(frozen=True)
class LabelledCrops:
    """A split's crops (N, 3, S, S) uint8 and its targets (1 = fake), for the kNN probe."""

    images: np.ndarray
    labels: np.ndarray


def split_crops(name: str, size: int, progress: bool = True) -> LabelledCrops:
    """Crops and labels of split ``name`` ('train' or 'val') from the one image cache."""
    csv = require(SPLITS_DIR / f"{name}.csv", "split")
    frame = read_csv(csv)
    if frame.empty:
        raise InputError(f"{csv} has no rows", "rerun the split stage with more data")
    images = cached_pixels(f"ssl-{name}", csv.read_bytes(), [Path(p) for p in frame["path"]], size, progress=progress)
    return LabelledCrops(images, (frame["label"] == FAKE).to_numpy(dtype=np.float32))


def crop_params() -> FacesParams:
    """How the pipeline's crops were made (the faces stage's params.json): extra images are cropped the same way."""
    raw = json.loads(require(FACES_PARAMS, "faces").read_text())
    known = {f.name for f in dataclasses.fields(FacesParams)}
    return parse_block("faces", FacesParams, {k: v for k, v in raw.items() if k in known})


def folder_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise MissingInputError(
            f"pretrain.extra_folder: {folder} is not a folder", "fix it in params.yaml or set it to ''"
        )
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def extra_crops(folder: Path, size: int, progress: bool = True) -> tuple[np.ndarray, dict[str, int]]:
    """Face crops (M, 3, size, size) of every image under ``folder``, cut like the pipeline's crops; images of
    the labelled set (same bytes) and images without a face are left out and counted."""
    from faces.crop import FaceCropper

    labelled = set(read_csv(RAW_MANIFEST)["sha1"].astype(str)) if RAW_MANIFEST.exists() else set()
    paths = folder_images(folder)
    counts = {"files": len(paths), "labelled_set": 0, "undecodable": 0, "no_face": 0, "kept": 0}
    cropper = FaceCropper(crop_params())
    crops: list[np.ndarray] = []
    step = cropper.params.batch_size
    for start in tqdm(range(0, len(paths), step), desc="extra faces", unit="batch", disable=not progress):
        batch: list[Image.Image] = []
        for path in paths[start : start + step]:
            if sha1_file(path) in labelled:
                counts["labelled_set"] += 1
                continue
            try:
                batch.append(decode_rgb(path).image)
            except ImageDecodeError:
                counts["undecodable"] += 1
        for result in cropper.crop(batch) if batch else []:
            if result.image is None or result.status != "ok":
                counts["no_face"] += 1
            else:
                crops.append(square_pixels(result.image, size))
    counts["kept"] = len(crops)
    empty = np.zeros((0, 3, size, size), dtype=np.uint8)
    return (np.stack(crops) if crops else empty), counts
