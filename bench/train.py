"""Benchmark: classifier training throughput (images/s) of the real loop against two references.

    python -m bench.train [--arch mobilenet_v2] [--size 128] [--n 512] [--batch-size 32] [--split CSV]

1. pure compute: the same model, optimiser and batch size on batches already in memory as
   normalised float tensors (no decoding, no augmentation) - the ceiling for this machine;
2. real loop: ``train_loop`` (uint8 memory-mapped cache + batched tensor augmentations, params
   defaults) - its ``train_images_per_s``;
3. ImageFolder: torchvision ``ImageFolder`` + PIL decoding + torchvision v2 transforms with the same
   augmentations (crop, flip, jitter, JPEG, blur, noise) through a ``DataLoader``, same model.

Every path runs interleaved with the others of its table (bench/interleave.py: a warm-up round, then
``--rounds`` rounds, ``--quick`` for 2), printed as median [min–max]; the real loop's figure is its
second epoch (the first warms up).

Data loading alone is timed too (no model): the cache + augmentations against ImageFolder + PIL with
the same augmentations and with only crop/flip/jitter.
Face crops come from ``--split`` (a split CSV of the project) or are synthetic PNGs of ``--size``.
Prints two tables; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from bench.interleave import Figures, add_rounds_arguments, interleaved, rounds_from
from classifier.augment import AugmentConfig, Augmenter
from classifier.data import gather, load_split, normalise
from classifier.infer import prepare_input
from classifier.train import smoothed_bce, train_loop
from core.device import pick_device, set_threads
from core.io import write_csv
from core.params import CLASSIFIER_ARCHS, ClassifierParams
from core.pixels import batch_indices
from core.schema import FAKE, REAL, REAL_GENERATOR, SPLIT_COLUMNS
from models.classifier import IMAGENET_MEAN, IMAGENET_STD, ArchSpec, build_classifier


def synthetic_split(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n photo-like PNG crops (smooth colour fields + texture + noise) in ImageFolder layout + a split CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        label = FAKE if i % 2 else REAL
        base = (
            rng.uniform(0.2, 0.8, 3)
            + yy[..., None] * rng.uniform(-0.3, 0.3, 3)
            + xx[..., None] * rng.uniform(-0.3, 0.3, 3)
        )
        texture = 0.08 * np.sin(xx[..., None] * rng.uniform(5, 40) + yy[..., None] * rng.uniform(5, 40))
        img = np.clip(base + texture + rng.normal(0, 0.03, (size, size, 3)), 0, 1)
        path = root / label / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(path)
        rows.append(
            {
                "id": f"{i:05d}",
                "path": str(path),
                "label": label,
                "generator": "bench" if i % 2 else REAL_GENERATOR,
                "status": "ok",
                "split": "train",
            }
        )
    csv = root / "train.csv"
    write_csv(csv, pd.DataFrame(rows).reindex(columns=SPLIT_COLUMNS, fill_value=""))
    return csv


def imagefolder_from_split(csv: Path, root: Path) -> Path:
    """ImageFolder layout (label/<file>) of the split's crops, as symlinks."""
    frame = pd.read_csv(csv, keep_default_na=False)
    for i, (path, label) in enumerate(zip(frame["path"], frame["label"])):
        link = root / label / f"{i:05d}{Path(path).suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
    return root


def pure_compute(
    model: nn.Module,
    batches: list[torch.Tensor],
    labels: list[torch.Tensor],
    device: torch.device,
    steps: int,
    warmup: int = 2,
) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    seen, t0 = 0, 0.0
    for k in range(steps + warmup):
        if k == warmup:
            seen, t0 = 0, time.perf_counter()
        x, y = batches[k % len(batches)], labels[k % len(labels)]
        loss = smoothed_bce(model(x), y, (1.0, 1.0), 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def imagefolder_loader(
    folder: Path, size: int, batch_size: int, workers: int, aug: AugmentConfig | None = None
) -> torch.utils.data.DataLoader:
    """ImageFolder + PIL decoding + torchvision v2 transforms. With ``aug``: the same augmentations as
    the real loop (crop, flip, jitter, JPEG, blur, noise with the same probabilities); without: only
    random resized crop, flip and colour jitter (the usual minimal pipeline)."""
    from torchvision import datasets
    from torchvision.transforms import v2

    a = aug or AugmentConfig.from_params(ClassifierParams())
    steps: list = [
        v2.RandomResizedCrop(size, scale=(a.crop_scale, 1.0)),
        v2.RandomHorizontalFlip(a.flip),
        v2.ColorJitter(a.color_jitter, a.color_jitter, a.color_jitter),
    ]
    if aug is not None:
        steps += [
            v2.RandomApply([v2.JPEG((min(a.jpeg_quality, 95), 95))], p=a.jpeg_prob),
            v2.RandomApply([v2.GaussianBlur(2 * int(3 * a.blur_sigma) + 1, (0.1, a.blur_sigma))], p=a.blur_prob),
        ]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if aug is not None:
        steps += [v2.RandomApply([v2.GaussianNoise(sigma=a.noise_std, clip=True)], p=a.noise_prob)]
    steps += [v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    ds = datasets.ImageFolder(str(folder), transform=v2.Compose(steps))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0
    )


def imagefolder_train(
    model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, steps: int, warmup: int = 2
) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    seen, t0, k = 0, time.perf_counter(), 0
    while k < steps + warmup:
        for x, y in loader:
            if k == warmup:
                seen, t0 = 0, time.perf_counter()
            if k >= steps + warmup:
                break
            x, y = x.to(device), y.float().to(device)
            loss = smoothed_bce(model(x), y, (1.0, 1.0), 0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            k += 1
    return seen / (time.perf_counter() - t0)


def loader_only_cache(images: np.ndarray, aug: AugmentConfig, batch_size: int, device: torch.device) -> float:
    augment = Augmenter(aug, torch.Generator().manual_seed(0), device)
    augment(gather(images, np.arange(min(len(images), batch_size))))  # warm up (lazy imports, allocator)
    t0, seen = time.perf_counter(), 0
    for idx in batch_indices(len(images), batch_size, torch.Generator().manual_seed(1), min_size=2):
        x = prepare_input(augment(gather(images, idx)), IMAGENET_MEAN, IMAGENET_STD, device)
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def loader_only_imagefolder(loader: torch.utils.data.DataLoader) -> float:
    it = iter(loader)
    next(it)  # start workers
    t0, seen = time.perf_counter(), 0
    for x, _ in it:
        seen += len(x)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ClassifierParams()
    ap.add_argument("--arch", default=defaults.arch, choices=CLASSIFIER_ARCHS)
    ap.add_argument("--size", type=int, default=defaults.image_size)
    ap.add_argument("--n", type=int, default=384, help="synthetic images (ignored with --split)")
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--steps", type=int, default=8, help="timed steps of the pure-compute and ImageFolder runs")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="ImageFolder DataLoader workers")
    ap.add_argument("--split", type=Path, default=None, help="use this split CSV's face crops")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    add_rounds_arguments(ap)
    args = ap.parse_args()
    rounds = rounds_from(args)
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    params = dataclasses.replace(defaults, arch=args.arch, init="none")  # the networks start from scratch here
    spec = ArchSpec.from_params(params)
    mean, std = spec.normalisation
    aug = AugmentConfig.from_params(defaults)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.split is None:
            csv = synthetic_split(tmp_path / "folder", args.n, args.size)
            folder = tmp_path / "folder"
        else:
            csv = args.split
            folder = imagefolder_from_split(csv, tmp_path / "folder")
        t0 = time.perf_counter()
        data = load_split(csv, args.size, cache_dir=tmp_path / "cache")
        cache_s = time.perf_counter() - t0
        n = len(data)

        def folder_loader(workers: int, same_augmentations: bool) -> Callable[[], Figures]:
            return lambda: {
                "images_per_s": loader_only_imagefolder(
                    imagefolder_loader(folder, args.size, args.batch_size, workers, aug if same_augmentations else None)
                )
            }

        data_paths: dict[str, Callable[[], Figures]] = {
            "uint8 cache + tensor augmentations": lambda: {
                "images_per_s": loader_only_cache(data.images, aug, args.batch_size, device)
            }
        }
        for w in args.workers:
            data_paths[f"ImageFolder + PIL, crop/flip/jitter, {w} workers"] = folder_loader(w, False)
            data_paths[f"ImageFolder + PIL, same augmentations, {w} workers"] = folder_loader(w, True)
        data_only = interleaved(data_paths, rounds)

        torch.manual_seed(0)
        x = torch.from_numpy(np.array(data.images[: args.batch_size * 2]))
        batches = [
            prepare_input(normalise(x[i : i + args.batch_size].float() / 255, (0, 0, 0), (1, 1, 1)), mean, std, device)
            for i in range(0, len(x), args.batch_size)
        ]
        labels = [
            torch.from_numpy(data.labels[i : i + args.batch_size]).to(device) for i in range(0, len(x), args.batch_size)
        ]
        # params defaults, 2 whole epochs, every layer trained (no frozen warm-up, no early stop, no budget)
        loop = dataclasses.replace(
            params,
            epochs=2,
            batch_size=args.batch_size,
            freeze_backbone_epochs=0,
            early_stopping_patience=0,
            max_minutes=0,
        )
        val_idx = np.linspace(0, n - 1, min(n, 2 * args.batch_size)).astype(int)  # both classes

        def real_loop() -> Figures:
            model = build_classifier(spec)
            val_x, val_y = data.images[val_idx], data.labels[val_idx]
            result = train_loop(model, data.images, data.labels, val_x, val_y, loop, device, mean, std, progress=False)
            return {"images_per_s": result.history[-1].train_images_per_s}  # epoch 2: epoch 1 warms up

        def folder_train(workers: int) -> Callable[[], Figures]:
            loader = imagefolder_loader(folder, args.size, args.batch_size, workers, aug)
            return lambda: {
                "images_per_s": imagefolder_train(build_classifier(spec).to(device), loader, device, args.steps)
            }

        train_paths: dict[str, Callable[[], Figures]] = {
            "pure compute (in-memory tensors)": lambda: {
                "images_per_s": pure_compute(build_classifier(spec).to(device), batches, labels, device, args.steps)
            },
            "real loop (cache + augmentations), epoch 2": real_loop,
        }
        for w in args.workers:
            train_paths[f"ImageFolder + PIL, same augmentations, {w} workers"] = folder_train(w)
        training = interleaved(train_paths, rounds)

    print(
        f"\nbench.train: arch {args.arch}, {args.size}px, batch {args.batch_size}, {n} images, device {device}, "
        f"torch threads {threads}; cache built in {cache_s:.1f}s ({n / cache_s:.0f} img/s)"
    )
    cache_path = next(iter(data_paths))
    print(f"\ndata only (no model); {data_only.header()}")
    print(data_only.table(["images_per_s"], cache_path, "images_per_s"))
    print("(target: the cache path >= 5x the ImageFolder loaders, i.e. their ratio <= 0.2x)")
    print(f"\ntraining; {training.header()}")
    print(training.table(["images_per_s"], next(iter(train_paths)), "images_per_s"))
    print("(target: the real loop >= 1/1.2 = 0.83x of pure compute)")


if __name__ == "__main__":
    main()
