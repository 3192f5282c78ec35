"""``data.source: folder:<path>`` — any local real-vs-fake image collection.

Accepted layouts (folder names case-insensitive, images anywhere below ``real/`` and ``fake/``):

* ``real/...`` and ``fake/[<generator>/]...`` — a fake directly in ``fake/`` gets generator
  ``unknown``; the first folder below ``fake/`` is the generator name;
* pre-split ``train|valid|val|test/{real,fake}/...`` — recorded as ``predefined_split``
  ``train|val|test`` (the DSA "Real or Fake" task layout).

Groups: a ``manifest.csv`` at the folder root with columns ``file`` (relative to the root) and
``near_dup_group`` gives each listed file its group; any other file is its own group.

Nothing below the label folders is left out silently: broken symlinks, symlink loops, unreadable
folders, fifos/sockets/devices and folders reached twice through symlinks each become a manifest
row with status ``skipped`` and the reason. Symlinks to files and folders are followed (a folder
only once; a link back into its own ancestry is a loop, never followed).
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import PipelineError
from core.params import DataParams
from sources.rawset import IMAGE_EXTENSIONS, FetchError, RawItem, store_all

SPLIT_DIRS = {
    "train": "train",
    "training": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
LABEL_DIRS = ("real", "fake")
UNKNOWN_GENERATOR = "unknown"


class FolderLayoutError(PipelineError, ValueError):
    """The folder does not have one of the accepted layouts."""


@dataclass(frozen=True)
class FolderFile:
    rel: str  # posix path relative to the folder root
    label: str
    generator: str
    split: str  # "" or train|val|test
    problem: str = ""  # non-empty: an entry that cannot be used (broken link, loop, unreadable folder...)


_scandir = os.scandir  # the one directory-listing call (tests simulate unreadable folders through it)


def _child_dirs(base: Path) -> dict[str, Path]:
    """Sub-folders of ``base`` by lower-case name (symlinks to folders included)."""
    try:
        with _scandir(base) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise FolderLayoutError(f"cannot list {base} ({e.strerror or e})") from None
    out: dict[str, Path] = {}
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks; a broken link is not a folder
        except OSError:
            is_dir = False
        if not is_dir:
            continue
        key = entry.name.lower()
        if key in out and key in (*LABEL_DIRS, *SPLIT_DIRS):
            raise FolderLayoutError(
                f"{base}: both {out[key].name}/ and {entry.name}/ exist (folder names are "
                f"case-insensitive here); merge them into one"
            )
        out.setdefault(key, Path(entry.path))
    return out


def _generator(label: str, inner: tuple[str, ...], is_dir: bool) -> str:
    """``real`` for reals; else the first folder below ``fake/`` (``unknown`` for a file directly in it)."""
    if label == "real":
        return "real"
    return inner[0] if len(inner) > 1 or (is_dir and inner) else UNKNOWN_GENERATOR


def _walk(root: Path, label_dir: Path, label: str, split: str, listed: dict[str, str]) -> list[FolderFile]:
    """Every entry below ``label_dir``: regular files (symlinks to files followed) as files, and every
    entry that cannot be used as a ``problem`` row — a broken symlink, a symlink loop, an unreadable
    folder, a folder reached a second time through a symlink, a fifo/socket/device. Folder symlinks are
    followed unless they lead back to a folder already listed (``listed``: real path -> relative path)."""
    found: list[FolderFile] = []

    def add(path: Path, is_dir: bool, problem: str = "") -> None:
        inner = path.relative_to(label_dir).parts
        found.append(
            FolderFile(path.relative_to(root).as_posix(), label, _generator(label, inner, is_dir), split, problem)
        )

    listed.setdefault(os.path.realpath(label_dir), label_dir.relative_to(root).as_posix())
    stack = [label_dir]
    while stack:
        folder = stack.pop()
        try:
            with _scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            add(folder, True, f"unreadable folder ({e.strerror or e}); its files are not listed")
            continue
        for entry in entries:
            path = Path(entry.path)
            try:
                st = os.stat(path)  # follows symlinks
            except OSError as e:
                if e.errno == errno.ELOOP:
                    add(path, False, "symbolic link loop (the link cannot be resolved)")
                elif entry.is_symlink() and isinstance(e, FileNotFoundError):
                    add(path, False, f"broken symbolic link (target {os.readlink(path)!r} does not exist)")
                else:
                    add(path, False, f"cannot stat ({e.strerror or e})")
                continue
            if stat.S_ISDIR(st.st_mode):
                real = os.path.realpath(path)
                rel = path.relative_to(root).as_posix()
                if real in listed:
                    first = listed[real]
                    loop = rel.startswith(first + "/") or first == ""
                    add(
                        path,
                        True,
                        (
                            f"symbolic link loop (leads back to {first}/)"
                            if loop
                            else f"folder already listed as {first}/ (reached twice through a symbolic link)"
                        ),
                    )
                    continue
                listed[real] = rel
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                add(path, False)
            else:
                add(path, False, "not a regular file (fifo, socket or device)")
    return sorted(found, key=lambda f: f.rel)


def _scan_labels(root: Path, base: Path, split: str, listed: dict[str, str]) -> list[FolderFile]:
    found: list[FolderFile] = []
    children = _child_dirs(base)
    for label in LABEL_DIRS:
        label_dir = children.get(label)
        if label_dir is not None:
            found.extend(_walk(root, label_dir, label, split, listed))
    return found


def check_layout(root: Path) -> tuple[dict[str, Path], list[str]]:
    """The layout of ``root`` (split folders by name, top-level label folders), or FolderLayoutError.

    Cheap (it lists two levels of folders, reads no file), so the download stage calls it before any
    other work: a path that is missing or a file, two layouts at once, or only one of the two labels
    fails here with one line."""
    if not root.exists():
        raise FolderLayoutError(
            f"data.source folder {root} does not exist (relative paths are relative to "
            f"the project root, where params.yaml is)"
        )
    if not root.is_dir():
        raise FolderLayoutError(
            f"data.source folder {root} is a file, not a folder; point data.source: "
            f"folder:<path> at the folder holding real/ and fake/"
        )
    children = _child_dirs(root)
    splits = {
        name: d
        for name, d in children.items()
        if name in SPLIT_DIRS and any(label in _child_dirs(d) for label in LABEL_DIRS)
    }
    flat = [label for label in LABEL_DIRS if label in children]
    if splits and flat:
        raise FolderLayoutError(
            f"{root}: has both split folders {sorted(splits)} and top-level {flat}/; "
            f"use one layout: real/ + fake/, or train|valid|test/{{real,fake}}/"
        )
    labels = (
        set(flat) if not splits else {label for d in splits.values() for label in LABEL_DIRS if label in _child_dirs(d)}
    )
    if len(labels) == 1:
        (only,) = labels
        (other,) = set(LABEL_DIRS) - labels
        raise FolderLayoutError(
            f"{root}: has {only}/ but no {other}/ folder; a real-vs-fake set needs both labels",
            f"add {other} images under {root}/{other}/ (or point data.source at a set that has both)",
        )
    return splits, flat


def scan_folder(root: Path) -> list[FolderFile]:
    """Every entry below the label folders of ``root``, in a stable order; entries that cannot be
    used (broken links, loops, unreadable folders) come back with a ``problem``."""
    splits, _ = check_layout(root)
    listed = {os.path.realpath(root): ""}
    if splits:
        files = [f for name, d in sorted(splits.items()) for f in _scan_labels(root, d, SPLIT_DIRS[name], listed)]
    else:
        files = _scan_labels(root, root, "", listed)
    if not files:
        raise FolderLayoutError(
            f"{root}: no files found; expected real/... and fake/[<generator>/]... "
            f"or train|valid|test/{{real,fake}}/..."
        )
    ignored = sorted(
        name
        for name in os.listdir(root)
        if name.lower() not in (*LABEL_DIRS, *(splits if splits else ()), "manifest.csv")
    )
    if ignored:
        print(
            f"download: {root}: ignoring {len(ignored)} entries outside the label folders "
            f"({', '.join(ignored[:5])}{', ...' if len(ignored) > 5 else ''})"
        )
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
        if not f.problem and Path(f.rel).suffix.lower() in IMAGE_EXTENSIONS:
            buckets[(f.label, f.generator)].append(f)
        else:
            others.append(f)
    chosen = set(others)  # non-images and problem entries: always kept, they become skipped rows
    for (label, generator), bucket in sorted(buckets.items()):
        n = min(int(per_source), len(bucket))
        chosen.update(random.Random(f"{seed}/{label}/{generator}").sample(bucket, n))
    return [f for f in files if f in chosen]


def folder_items(spec: Path, per_source: int | str, seed: int) -> list[RawItem]:
    files = sample_files(scan_folder(spec), per_source, seed)
    groups = near_dup_groups(spec)
    source = spec.resolve().name
    return [
        RawItem(
            key=f"{source}/{f.rel}",
            label=f.label,
            generator=f.generator,
            source=source,
            group=groups.get(f.rel, f.rel),
            origin=(spec / f.rel).as_posix(),
            ext=Path(f.rel).suffix.lower(),
            predefined_split=f.split,
            refused=f.problem,
        )
        for f in files
    ]


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
