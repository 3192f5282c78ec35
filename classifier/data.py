"""Classifier inputs: a uint8 image cache per split, batching, augmentations and corruptions.

Face crops are decoded once into ``data/cache/classifier/<split>-<key>.npy``: an (N, 3, S, S) uint8
array that later runs memory-map instead of decoding PNG/JPEG again. ``key`` hashes the split CSV,
the bytes of every image it lists, the side ``S`` and the cache format, so any change upstream
makes a new entry. Entries are written under a temporary name and renamed into place.

Augmentations and the robustness corruptions work on whole batches of tensors.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.images import ImageDecodeError, decode_rgb, square_pixels
from core.io import read_csv, stable_hash
from core.params import ClassifierParams

CACHE_DIR = Path("data/cache/classifier")
CACHE_VERSION = 1
LABEL_VALUES = {"real": 0.0, "fake": 1.0}
GREY_WEIGHTS = (0.299, 0.587, 0.114)


class ClassifierDataError(ValueError):
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


# ---- corruptions (shared by the augmentations and the robustness evaluation) ----

def jpeg_recompress(batch: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """Re-encode each uint8 (3, H, W) image of ``batch`` as JPEG at its quality and decode it."""
    from torchvision.io import decode_jpeg, encode_jpeg

    out = batch.clone()
    for i, q in enumerate(qualities):
        out[i] = decode_jpeg(encode_jpeg(batch[i].contiguous(), quality=int(q)))
    return out


def gaussian_blur(x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Blur each float image with its own sigma: one separable grouped convolution for the batch."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * float(sigmas.max())))
    radius = min(radius, min(h, w) - 1)  # reflect padding needs pad < side
    pos = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigmas.to(x.device, x.dtype).clamp_min(1e-3).view(b, 1)
    kernel = torch.exp(-pos.view(1, -1) ** 2 / (2 * s ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, k)
    k = kernel.shape[1]
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, k), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, k, 1), groups=b * c)
    return flat.view(b, c, h, w)


def down_up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by ``factor`` (antialiased) and back up to the original size (bilinear)."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="bilinear",
                          antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def add_noise(x: torch.Tensor, stds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    return x + noise * stds.to(x.device, x.dtype).view(-1, 1, 1, 1)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Back to uint8 pixels (what a saved image would hold)."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """Each float image's luma in all three channels."""
    grey = torch.einsum("bchw,c->bhw", x, torch.tensor(GREY_WEIGHTS, device=x.device, dtype=x.dtype))
    return grey.unsqueeze(1).expand_as(x).contiguous()


# ---- training augmentations ----

@dataclass(frozen=True)
class AugmentConfig:
    flip: float = 0.5
    color_jitter: float = 0.2
    crop_scale: float = 0.8
    jpeg_prob: float = 0.3
    jpeg_quality: int = 60
    blur_prob: float = 0.1
    blur_sigma: float = 1.0
    noise_prob: float = 0.1
    noise_std: float = 0.02
    grayscale: float = 0.1

    @classmethod
    def from_params(cls, p: ClassifierParams) -> AugmentConfig:
        return cls(flip=p.aug_flip, color_jitter=p.aug_color_jitter, crop_scale=p.aug_crop_scale,
                   jpeg_prob=p.aug_jpeg_prob, jpeg_quality=p.aug_jpeg_quality, blur_prob=p.aug_blur_prob,
                   blur_sigma=p.aug_blur_sigma, noise_prob=p.aug_noise_prob, noise_std=p.aug_noise_std,
                   grayscale=p.aug_grayscale)

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls(0.0, 0.0, 1.0, 0.0, 95, 0.0, 1.0, 0.0, 0.0, 0.0)


class Augmenter:
    """uint8 (B, 3, S, S) CPU batch -> augmented float batch in [0, 1] on ``device``.

    Order: JPEG re-compression (uint8) -> random resized crop + flip (one affine resampling) ->
    colour jitter -> greyscale -> Gaussian blur -> Gaussian noise. Random draws come from ``generator`` only.
    """

    def __init__(self, cfg: AugmentConfig, generator: torch.Generator, device: torch.device | str = "cpu") -> None:
        self.cfg = cfg
        self.g = generator
        self.device = torch.device(device)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.g)

    def _mask(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.g) < p

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, batch.shape[0]
        if cfg.jpeg_prob > 0:
            chosen = self._mask(n, cfg.jpeg_prob).nonzero().flatten()
            if len(chosen):
                lo, hi = min(cfg.jpeg_quality, 95), max(cfg.jpeg_quality, 95)
                qualities = torch.randint(lo, hi + 1, (len(chosen),), generator=self.g).tolist()
                batch = batch.clone()
                batch[chosen] = jpeg_recompress(batch[chosen], qualities)
        x = to_unit(batch.to(self.device, non_blocking=True))
        x = self._geometry(x)
        if cfg.color_jitter > 0:
            x = self._colour(x)
        if cfg.grayscale > 0:
            chosen = self._mask(n, cfg.grayscale).nonzero().flatten().to(self.device)
            if len(chosen):
                x[chosen] = to_grey(x[chosen])
        if cfg.blur_prob > 0:
            chosen = self._mask(n, cfg.blur_prob).nonzero().flatten().to(self.device)
            if len(chosen):
                x[chosen] = gaussian_blur(x[chosen], self._uniform(len(chosen), 0.1, cfg.blur_sigma))
        if cfg.noise_prob > 0 and cfg.noise_std > 0:
            chosen = self._mask(n, cfg.noise_prob).nonzero().flatten()
            if len(chosen):
                stds = self._uniform(len(chosen), 0.0, cfg.noise_std)
                x[chosen.to(self.device)] = add_noise(x[chosen.to(self.device)], stds, self.g)
        return x.clamp_(0.0, 1.0)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        cfg, n = self.cfg, x.shape[0]
        flips = self._mask(n, cfg.flip)
        if cfg.crop_scale >= 1.0:
            if flips.any():
                f = flips.to(x.device).view(-1, 1, 1, 1)
                x = torch.where(f, x.flip(-1), x)
            return x
        area = self._uniform(n, cfg.crop_scale, 1.0)
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3))
        ratio = torch.exp(log_ratio)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(n, generator=self.g) * 2 - 1) * (1 - w)
        ty = (torch.rand(n, generator=self.g) * 2 - 1) * (1 - h)
        sign = 1.0 - 2.0 * flips.float()
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = w * sign
        theta[:, 0, 2] = tx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness b, contrast c (around the mean grey level), saturation s (around each pixel's grey),
        fused into one per-image affine map of the pixel and its grey value:
        out = s*b*c * x + (1-s)*b*c * grey(x) + b*(1-c) * mean_grey(x)."""
        j, n = self.cfg.color_jitter, x.shape[0]
        shape = (n, 1, 1, 1)
        b = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        c = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        s = self._uniform(n, 1 - j, 1 + j).to(x.device).view(shape)
        grey = to_grey(x)[:, :1]
        offset = b * (1 - c) * grey.mean((2, 3), keepdim=True)
        base = torch.addcmul(offset, grey, (1 - s) * b * c)  # (n, 1, h, w), shared by the 3 channels
        return torch.addcmul(base, x, s * b * c).clamp_(0.0, 1.0)
