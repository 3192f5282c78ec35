"""``data.source: folder:<path>`` — any local real-vs-fake image collection.

Accepted layouts (folder names case-insensitive, images anywhere below ``real/`` and ``fake/``):

* ``real/...`` and ``fake/[<generator>/]...`` — a fake directly in ``fake/`` gets generator
  ``unknown``; the first folder below ``fake/`` is the generator name;
* pre-split ``train|valid|val|test/{real,fake}/...`` — recorded as ``predefined_split``
  ``train|val|test`` (the DSA "Real or Fake" task layout).

Groups: a ``manifest.csv`` at the folder root with columns ``file`` (relative to the root) and
``near_dup_group`` gives each listed file its group; any other file is its own group.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.params import DataParams
from stages.common.rawset import IMAGE_EXTENSIONS, FetchError, RawItem, store_all

SPLIT_DIRS = {"train": "train", "training": "train", "valid": "val", "val": "val",
              "validation": "val", "test": "test", "testing": "test"}
LABEL_DIRS = ("real", "fake")
UNKNOWN_GENERATOR = "unknown"


class FolderLayoutError(ValueError):
    """The folder does not have one of the accepted layouts."""


@dataclass(frozen=True)
class FolderFile:
    rel: str          # posix path relative to the folder root
    label: str
    generator: str
    split: str        # "" or train|val|test


def _child_dirs(base: Path) -> dict[str, Path]:
    return {d.name.lower(): d for d in sorted(base.iterdir()) if d.is_dir()}


def _scan_labels(root: Path, base: Path, split: str) -> list[FolderFile]:
    found: list[FolderFile] = []
    children = _child_dirs(base)
    for label in LABEL_DIRS:
        label_dir = children.get(label)
        if label_dir is None:
            continue
        for path in sorted(p for p in label_dir.rglob("*") if p.is_file()):
            inner = path.relative_to(label_dir).parts
            generator = "real" if label == "real" else (inner[0] if len(inner) > 1 else UNKNOWN_GENERATOR)
            found.append(FolderFile(path.relative_to(root).as_posix(), label, generator, split))
    return found


def scan_folder(root: Path) -> list[FolderFile]:
    """Every file below the label folders of ``root``, in a stable order."""
    if not root.is_dir():
        raise FolderLayoutError(f"data.source folder {root} does not exist (relative paths are relative to "
                                f"the project root, where params.yaml is)")
    children = _child_dirs(root)
    splits = {name: d for name, d in children.items()
              if name in SPLIT_DIRS and any(label in _child_dirs(d) for label in LABEL_DIRS)}
    flat = [label for label in LABEL_DIRS if label in children]
    if splits and flat:
        raise FolderLayoutError(f"{root}: has both split folders {sorted(splits)} and top-level {flat}/; "
                                f"use one layout: real/ + fake/, or train|valid|test/{{real,fake}}/")
    if splits:
        files = [f for name, d in sorted(splits.items()) for f in _scan_labels(root, d, SPLIT_DIRS[name])]
    else:
        files = _scan_labels(root, root, "")
    if not files:
        raise FolderLayoutError(f"{root}: no files found; expected real/... and fake/[<generator>/]... "
                                f"or train|valid|test/{{real,fake}}/...")
    return files


def near_dup_groups(root: Path) -> dict[str, str]:
    """``file -> near_dup_group`` from ``root/manifest.csv`` when it has both columns, else {}."""
    manifest = root / "manifest.csv"
    if not manifest.exists():
        return {}
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    if not {"file", "near_dup_group"} <= set(frame.columns):
        return {}
    return {f: g for f, g in zip(frame["file"], frame["near_dup_group"]) if g}


def sample_files(files: list[FolderFile], per_source: int | str, seed: int) -> list[FolderFile]:
    """Up to ``per_source`` image files per (label, generator), seeded; non-image files are all kept
    (they become skipped rows)."""
    if per_source == "all":
        return files
    buckets: dict[tuple[str, str], list[FolderFile]] = defaultdict(list)
    others = []
    for f in files:
        if Path(f.rel).suffix.lower() in IMAGE_EXTENSIONS:
            buckets[(f.label, f.generator)].append(f)
        else:
            others.append(f)
    chosen = set(others)
    for (label, generator), bucket in sorted(buckets.items()):
        n = min(int(per_source), len(bucket))
        chosen.update(random.Random(f"{seed}/{label}/{generator}").sample(bucket, n))
    return [f for f in files if f in chosen]


def folder_items(spec: Path, per_source: int | str, seed: int) -> list[RawItem]:
    files = sample_files(scan_folder(spec), per_source, seed)
    groups = near_dup_groups(spec)
    source = spec.resolve().name
    return [RawItem(key=f"{source}/{f.rel}", label=f.label, generator=f.generator, source=source,
                    group=groups.get(f.rel, f.rel), origin=(spec / f.rel).as_posix(),
                    ext=Path(f.rel).suffix.lower(), predefined_split=f.split)
            for f in files]


def _read_file(item: RawItem) -> bytes:
    try:
        return Path(item.origin).read_bytes()
    except OSError as e:
        raise FetchError(f"unreadable file ({e.strerror or e})") from None


def collect(params: DataParams, images_dir: Path) -> list[dict[str, Any]]:
    """Check and copy the (sampled) files of ``params.folder`` into ``images_dir``; one row per file."""
    assert params.folder is not None
    items = folder_items(params.folder, params.per_source, params.seed)
    return store_all(items, _read_file, images_dir, params.min_side, params.workers, desc=f"folder {params.folder}")
