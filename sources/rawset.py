"""The raw image set every download source produces: one checked row per file found.

A source (DFF zips, a local folder, the synthetic generator) only lists ``RawItem``s and says how
to fetch each one's bytes; ``store_all`` checks every file with ``images.decode_rgb``, copies the
original bytes unchanged into ``images/`` and returns one manifest row per item, skipped ones
included (status + reason), so nothing is ever dropped silently. ``merge_duplicates`` then runs once
over all rows of a source: files with identical bytes share one group (never split across), and
identical bytes carrying both labels are skipped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from core.images import ImageDecodeError, decode_rgb
from core.io import sha1_bytes, stable_hash
from core.schema import IMAGE_EXTENSIONS, RAW_COLUMNS

RAW_IMAGES = Path("data/raw/images")  # where manifest paths point (relative to the project root)


class FetchError(Exception):
    """The bytes of one item could not be obtained; the message is the manifest reason."""


@dataclass(frozen=True)
class RawItem:
    """One file a source found, before its bytes are read and checked."""

    key: str  # unique and stable across runs, e.g. "dff/text2img/00/123_1980_2009.jpg"
    label: str  # real | fake
    generator: str  # "real" for reals, else the fake generator name
    source: str  # dataset name, e.g. "dff", "hardfakevsreal", "synthetic"
    group: str  # identity / near-duplicate group: never split across
    origin: str  # where the bytes come from (path or zip member), for provenance
    ext: str  # lower-case file extension with the dot
    predefined_split: str = ""
    refused: str = ""  # non-empty: record as skipped with this reason, do not read

    @property
    def id(self) -> str:
        return stable_hash(self.key, 16)


@dataclass(frozen=True)
class Verdict:
    status: str
    reason: str
    mode: str = ""
    width: int = 0
    height: int = 0


Fetch = Callable[[RawItem], bytes]


def check_image(data: bytes, ext: str, min_side: int) -> Verdict:
    """Decide ok / converted / skipped for one file's bytes."""
    if ext not in IMAGE_EXTENSIONS:
        return Verdict("skipped", f"not an image file (extension {ext or 'none'!r})")
    if not data:
        return Verdict("skipped", "empty file (0 bytes)")
    try:
        decoded = decode_rgb(data)
    except ImageDecodeError as e:
        return Verdict("skipped", str(e))
    width, height = decoded.image.size
    if min(width, height) < min_side:
        return Verdict(
            "skipped", f"too small ({width}x{height}; data.min_side is {min_side})", decoded.mode, width, height
        )
    if decoded.note:
        return Verdict("converted", f"{decoded.note} at decode", decoded.mode, width, height)
    return Verdict("ok", "", decoded.mode, width, height)


def store_item(item: RawItem, fetch: Fetch, images_dir: Path, min_side: int) -> dict[str, Any]:
    """Fetch, check and (unless skipped) write one item; return its manifest row."""
    row: dict[str, Any] = {
        "id": item.id,
        "path": "",
        "label": item.label,
        "generator": item.generator,
        "source": item.source,
        "group": item.group,
        "predefined_split": item.predefined_split,
        "width": 0,
        "height": 0,
        "bytes": 0,
        "sha1": "",
        "mode": "",
        "status": "skipped",
        "reason": item.refused,
        "origin": item.origin,
    }
    if item.refused:
        return row
    if item.ext not in IMAGE_EXTENSIONS:  # never read non-images (they may be huge or anything)
        row["reason"] = check_image(b"", item.ext, min_side).reason
        return row
    try:
        data = fetch(item)
    except FetchError as e:
        row["reason"] = str(e)
        return row
    verdict = check_image(data, item.ext, min_side)
    row.update(
        bytes=len(data),
        sha1=sha1_bytes(data),
        mode=verdict.mode,
        width=verdict.width,
        height=verdict.height,
        status=verdict.status,
        reason=verdict.reason,
    )
    if verdict.status != "skipped":
        name = f"{item.id}{item.ext}"
        (images_dir / name).write_bytes(data)  # raw stays raw: the original bytes, unchanged
        row["path"] = (RAW_IMAGES / name).as_posix()
    return row


def store_all(
    items: Sequence[RawItem], fetch: Fetch, images_dir: Path, min_side: int, workers: int, desc: str
) -> list[dict[str, Any]]:
    """``store_item`` over all items in parallel threads; rows come back in item order."""
    ids = Counter(item.id for item in items)
    clash = [i for i, n in ids.items() if n > 1]
    if clash:
        keys = sorted(item.key for item in items if item.id in clash)[:4]
        raise ValueError(f"two files map to the same id (duplicate keys {keys}); this is a bug in the source")
    images_dir.mkdir(parents=True, exist_ok=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(store_item, item, fetch, images_dir, min_side) for item in items]
        for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="file"):
            future.result()  # re-raise the first fatal error (e.g. the network went away) at once
        rows = [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # stop queued work; finished reads stay cached
        raise
    pool.shutdown()
    return rows


CONFLICT_REASON = "identical bytes with conflicting labels"


@dataclass(frozen=True)
class DuplicateStats:
    """What ``merge_duplicates`` did (for summary.json)."""

    sha1_sets: int = 0  # distinct contents held by more than one kept file
    groups_merged: int = 0  # groups absorbed into another group because files share bytes
    conflict_skips: int = 0  # files skipped: the same bytes are labelled real in one place, fake in another


def merge_duplicates(rows: Sequence[dict[str, Any]], images_dir: Path) -> tuple[list[dict[str, Any]], DuplicateStats]:
    """One pass over every row of a source, after ``store_all``.

    * Files with identical bytes (same sha1, not skipped) end up in ONE group: the groups of all
      files sharing a sha1 are merged, transitively (union-find over group ids; the merged group is
      the smallest id), so identical bytes can never land in two splits. Same-label copies are all
      kept (both rows stay, in one group; ``summary.json`` counts them as ``duplicate_sha1_files``).
    * Identical bytes with conflicting labels (one copy under real, another under fake): every copy
      is recorded as ``skipped`` with reason ``identical bytes with conflicting labels (also
      <other origin>)`` and its stored image is removed.
    """
    out = [dict(r) for r in rows]
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(out):
        if row["sha1"] and row["status"] != "skipped":
            by_sha[row["sha1"]].append(i)
    shared = [idx for idx in by_sha.values() if len(idx) > 1]

    parent: dict[str, str] = {}

    def find(group: str) -> str:
        root = group
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(group, group) != root:  # path compression
            parent[group], group = root, parent[group]
        return root

    for idx in shared:
        roots = {find(out[i]["group"]) for i in idx}
        keep = min(roots)
        for r in roots:
            parent[r] = keep
    groups_before = {row["group"] for row in out}
    for row in out:
        row["group"] = find(row["group"])
    merged = len(groups_before) - len({row["group"] for row in out})

    conflicts = 0
    for idx in shared:
        if len({out[i]["label"] for i in idx}) < 2:
            continue
        for i in idx:
            others = [out[j]["origin"] for j in idx if j != i]
            also = others[0] + (f" and {len(others) - 1} more" if len(others) > 1 else "")
            row = out[i]
            if row["path"]:
                (images_dir / Path(row["path"]).name).unlink(missing_ok=True)
            row.update(status="skipped", path="", reason=f"{CONFLICT_REASON} (also {also})")
            conflicts += 1
    stats = DuplicateStats(
        sha1_sets=sum(1 for idx in shared if len({out[i]["label"] for i in idx}) == 1),
        groups_merged=merged,
        conflict_skips=conflicts,
    )
    return out, stats


def manifest_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows), columns=RAW_COLUMNS)
    return frame.sort_values(["source", "label", "generator", "group", "id"], kind="stable").reset_index(drop=True)


def summarise(frame: pd.DataFrame, duplicates: DuplicateStats) -> dict[str, Any]:
    """Counts by label x generator x status, totals, duplicates and the most common skip reasons."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (label, generator, status), n in frame.groupby(["label", "generator", "status"]).size().items():
        counts.setdefault(str(label), {}).setdefault(str(generator), {})[str(status)] = int(n)
    kept = frame[frame["status"] != "skipped"]
    dup = kept["sha1"].duplicated(keep=False)
    reasons = Counter(_reason_kind(r) for r in frame.loc[frame["status"] != "ok", "reason"])
    return {
        "total": len(frame),
        "by_status": {s: int(n) for s, n in frame["status"].value_counts().sort_index().items()},
        "by_label": {s: int(n) for s, n in kept["label"].value_counts().sort_index().items()},
        "counts": counts,
        "groups": int(kept["group"].nunique()),
        "duplicate_sha1_files": int(dup.sum()),
        "duplicate_sha1_sets": duplicates.sha1_sets,
        "duplicate_groups_merged": duplicates.groups_merged,
        "conflicting_label_skips": duplicates.conflict_skips,
        "reasons": dict(reasons.most_common(20)),
    }


def _reason_kind(reason: str) -> str:
    """A reason without its per-file details, so equal kinds count together."""
    return reason.split(" (")[0]


def metric_counts(summary: dict[str, Any]) -> dict[str, float]:
    """Flat MLflow metrics from a summary: n_total, n_<status>, n_<label>_<generator>_<status>."""
    out: dict[str, float] = {
        "n_total": summary["total"],
        "n_groups": summary["groups"],
        "n_duplicate_sha1_files": summary["duplicate_sha1_files"],
        "n_duplicate_groups_merged": summary["duplicate_groups_merged"],
        "n_conflicting_label_skips": summary["conflicting_label_skips"],
    }
    out.update({f"n_{s}": n for s, n in summary["by_status"].items()})
    for label, gens in summary["counts"].items():
        for gen, statuses in gens.items():
            for status, n in statuses.items():
                out[_metric_name(f"n_{label}_{gen}_{status}")] = n
    return out


def _metric_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
