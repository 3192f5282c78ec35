"""``data.source: hf`` — DeepFakeFace (``OpenRL/DeepFakeFace``) read straight out of its four zips.

The dataset is four zips at the repo root (``wiki.zip`` real; ``text2img.zip``, ``inpainting.zip``,
``insight.zip`` fake), 30k images each, members in the IMDB-WIKI layout
``[<top folder>/]<2-digit folder>/<person id>_<birth>_<year>.jpg``; the same relative path in every
zip is one real photo and its three fakes.

* ``per_source: N`` never downloads the zips: each is opened through an fsspec filesystem
  (``HfFileSystem``) with random access, ``zipfile`` reads only its central directory, N relative
  paths present in all four zips are drawn (seeded) and only those members are fetched, each with
  one or two HTTP range reads, in parallel, with retries. Reads are cached in
  ``data/cache/download/`` (atomic files), so a killed run resumes.
* ``per_source: all`` downloads the whole zips with ``hf_hub_download`` (resumable) into
  ``data/cache/download/hub/`` and reads every member out of the local files with the same code.
* Members pair on their path below the zip's single top folder (stripped when every image member
  of the zip sits under one); fewer than 90% of the real paths pairing with all three fakes stops
  the run. With the default repo and revision each zip's size is checked against ``DFF_ZIP_SIZES``.
* Hub requests are paced and HTTP 429s waited out by one ``HubThrottle`` shared by the worker
  threads (sources.hub; ``data.requests_per_minute``).

The filesystem is a parameter (``RangeFS``, sources.zips): tests run the same range-read path on local zips.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from core.io import stable_hash
from core.params import DataParams
from sources.hub import (
    MAX_RATE_LIMIT_WAITS,
    DownloadError,
    HubThrottle,
    SourceUnavailableError,
    first_line,
    is_connection_error,
    offline_message,
    rate_limited,
    with_retries,
)
from sources.rawset import IMAGE_EXTENSIONS, FetchError, RawItem, store_all
from sources.zips import RangeFS, UnsafeMemberError, ZipEntry, ZipSource, cached_read, list_entries, safe_member_path

DFF_ZIPS: dict[str, str] = {  # zip at the repo root -> generator ("real" for the real photos)
    "wiki.zip": "real",
    "text2img.zip": "text2img",
    "inpainting.zip": "inpainting",
    "insight.zip": "insight",
}
DFF_SOURCE = "dff"
# Byte sizes of the zips at the pinned default revision (DataParams().hf_revision of DataParams().hf_repo):
# the one table; checked only when data.hf_repo / data.hf_revision are the defaults.
DFF_ZIP_SIZES: dict[str, int] = {
    "wiki.zip": 1_766_572_515,
    "text2img.zip": 1_134_392_707,
    "inpainting.zip": 1_082_027_665,
    "insight.zip": 1_081_375_437,
}
MIN_PAIRED = 0.90  # share of the real paths that must have all three fakes at the same path
RETRIED_IN_CLIENT = (408, 500, 502, 503, 504)  # huggingface_hub's own retries minus 429 (handled here)

ZipFetcher = Callable[[str], Path]  # zip name at the repo root -> local path of the whole zip


def open_zip(fs: RangeFS, path: str, throttle: HubThrottle | None = None) -> ZipSource:
    """Size of a remote zip; the first request, so an unreachable Hub fails here, within seconds."""
    waits = 0
    while True:
        try:
            info = fs.info(path)
            break
        except FileNotFoundError as e:
            raise DownloadError(f"{path} not found ({first_line(e)}); check data.hf_repo and data.hf_revision") from e
        except Exception as e:
            if is_connection_error(e):
                raise SourceUnavailableError(offline_message(e)) from e
            hit = rate_limited(e)
            if hit is None or waits >= MAX_RATE_LIMIT_WAITS:
                raise DownloadError(f"{path}: {type(e).__name__}: {first_line(e)}") from e
            waits += 1
            (throttle or HubThrottle(60_000)).on_rate_limited(hit, path)
    return ZipSource(fs, path, int(info["size"]))


def known_sizes(params: DataParams) -> dict[str, int]:
    """``DFF_ZIP_SIZES`` when the params point at the default repo and pinned revision, else {}
    (another repo or revision is not held to these sizes)."""
    default = DataParams()
    if (params.hf_repo, params.hf_revision) == (default.hf_repo, default.hf_revision):
        return dict(DFF_ZIP_SIZES)
    return {}


def check_sizes(sources: Mapping[str, ZipSource], expected: Mapping[str, int], where: str) -> None:
    """A one-line ``DownloadError`` when a zip's size is not the expected one."""
    for name, src in sources.items():
        want = expected.get(name)
        if want is not None and src.size != want:
            raise DownloadError(
                f"{name} on {where} is {src.size:,} bytes, expected {want:,}: not the DeepFakeFace "
                f"files this pipeline was checked against (set data.hf_repo / data.hf_revision "
                f"to the dataset you mean; sizes are only checked for the defaults)"
            )


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def common_top(names: list[str]) -> str | None:
    """The single top folder every image member of a zip sits under (``wiki/``, ``DFF_text2img/``,
    ...), or None when they are not all under one folder. Non-images and ``__MACOSX``/dot entries
    do not count, so a README next to the folder does not hide it."""
    tops = {tuple(_parts(n)[:1]) if len(_parts(n)) > 1 else () for n in names if is_candidate("/".join(_parts(n)))}
    if len(tops) == 1 and (top := next(iter(tops))):
        return top[0]
    return None


def relative_key(name: str, top: str | None) -> str:
    """Member name without the zip's top folder ``top`` (see ``common_top``): the pairing key across zips."""
    parts = _parts(name)
    if top is not None and len(parts) > 1 and parts[0] == top:
        parts = parts[1:]
    return "/".join(parts)


def person_group(rel: str) -> str:
    """Group of a relative path: the IMDB-WIKI person id (file name before the first '_') when the
    name has one, so all photos of a person and their fakes stay together; else the path itself."""
    stem = PurePosixPath(rel).name.split("_", 1)[0]
    return f"{DFF_SOURCE}/person/{stem}" if stem.isdigit() else f"{DFF_SOURCE}/path/{rel}"


def is_candidate(rel: str) -> bool:
    parts = rel.split("/")
    return PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS and not any(
        p.startswith(".") or p == "__MACOSX" for p in parts
    )


def choose_common(rels: dict[str, set[str]], n: int, seed: int) -> list[str]:
    """``n`` relative paths (seeded) that exist in every zip, so each real comes with all its fakes."""
    common = sorted(set.intersection(*rels.values())) if rels else []
    if n >= len(common):
        return common
    return sorted(random.Random(f"{DFF_SOURCE}/{seed}").sample(common, n))


def check_pairing(candidates: dict[str, set[str]], origins: dict[str, str]) -> None:
    """``DownloadError`` unless at least ``MIN_PAIRED`` of the real (wiki) image paths have all three
    fakes at the same relative path: otherwise groups and pairs would be silently wrong."""
    real = next((z for z, g in DFF_ZIPS.items() if g == "real" and z in candidates), None)
    if real is None or len(candidates) < 2:
        return
    reals = candidates[real]
    if not reals:
        raise DownloadError(f"{origins.get(real, real)} has no image members: not the DeepFakeFace layout")
    paired = set.intersection(*candidates.values())
    share = len(paired) / len(reals)
    if share < MIN_PAIRED:
        example = min(reals - paired)
        missing = [z for z, c in candidates.items() if example not in c]
        fake_example = next((min(c) for z, c in candidates.items() if z != real and c), "none")
        raise DownloadError(
            f"only {len(paired):,} of the {len(reals):,} real paths in {real} ({share:.0%}, need "
            f"{MIN_PAIRED:.0%}) have all three fakes at the same path, e.g. {example!r} is not in "
            f"{', '.join(missing)} (a fake path looks like {fake_example!r}); the zips do not have "
            f"the DeepFakeFace layout"
        )


@dataclass(frozen=True)
class _Planned:
    item: RawItem
    src: ZipSource
    entry: ZipEntry | None
    cache_file: Path | None


def plan(
    sources: dict[str, ZipSource],
    listings: dict[str, list[ZipEntry]],
    per_source: int | str,
    seed: int,
    member_cache: dict[str, Path] | None,
    origins: dict[str, str],
) -> list[_Planned]:
    """The items to fetch: every member (``all``) or the chosen common paths of each zip.
    ``origins``: the zip's path as recorded in the manifest (the Hub path, also when read locally)."""
    keyed: dict[str, dict[str, ZipEntry]] = {}
    refused: dict[str, list[tuple[ZipEntry, str]]] = {}
    for zip_name, entries in listings.items():
        keyed[zip_name], refused[zip_name] = {}, []
        safe = []
        for entry in entries:
            try:
                safe_member_path(Path("."), entry.name)
            except UnsafeMemberError as e:
                refused[zip_name].append((entry, str(e)))
                continue
            safe.append(entry)
        top = common_top([e.name for e in safe])
        for entry in safe:
            rel = relative_key(entry.name, top)
            if rel in keyed[zip_name]:
                refused[zip_name].append((entry, f"duplicate zip member path (same as {keyed[zip_name][rel].name!r})"))
                continue
            keyed[zip_name][rel] = entry
    candidates = {z: {r for r in k if is_candidate(r)} for z, k in keyed.items()}
    check_pairing(candidates, origins)
    if per_source == "all":
        chosen = {z: sorted(k) for z, k in keyed.items()}
    else:
        chosen = {z: choose_common(candidates, int(per_source), seed) for z in keyed}
    out: list[_Planned] = []
    for zip_name, rels in chosen.items():
        generator, src = DFF_ZIPS[zip_name], sources[zip_name]
        label = "real" if generator == "real" else "fake"
        for rel in rels:
            entry = keyed[zip_name][rel]
            cache = member_cache[zip_name] if member_cache else None
            item = RawItem(
                key=f"{DFF_SOURCE}/{generator}/{rel}",
                label=label,
                generator=generator,
                source=DFF_SOURCE,
                group=person_group(rel),
                origin=f"{origins[zip_name]}::{entry.name}",
                ext=PurePosixPath(rel).suffix.lower(),
            )
            out.append(_Planned(item, src, entry, safe_member_path(cache, entry.name) if cache else None))
        if per_source == "all":  # unsafe/duplicate names get a skipped row (a subset never picks them)
            for entry, reason in refused[zip_name]:
                item = RawItem(
                    key=f"{DFF_SOURCE}/{generator}/refused/{entry.name}",
                    label=label,
                    generator=generator,
                    source=DFF_SOURCE,
                    group=f"{DFF_SOURCE}/refused/{entry.name}",
                    origin=f"{origins[zip_name]}::{entry.name}",
                    ext=PurePosixPath(entry.name).suffix.lower(),
                    refused=reason,
                )
                out.append(_Planned(item, src, None, None))
    return out


def hub_filesystem(endpoint: str | None = None, throttle: HubThrottle | None = None) -> RangeFS:
    """``HfFileSystem`` whose range reads go through ``throttle`` (paced) and surface an HTTP 429 as
    an ``HfHubHTTPError`` at once instead of sleeping inside the client (huggingface_hub's own
    backoff sleeps the reset time in each thread separately, unpaced, and gives up after 5 tries):
    ``with_retries`` waits, for every thread. Server errors and network errors are still retried by
    the client (``RETRIED_IN_CLIENT``); everything else (auth headers, URLs, redirects) is the
    client's own ``_fetch_range``."""
    from huggingface_hub import HfFileSystem, constants
    from huggingface_hub.hf_file_system import HfFileSystemFile
    from huggingface_hub.utils import hf_raise_for_status, http_backoff

    class PacedHubFile(HfFileSystemFile):
        def _fetch_range(self, start: int, end: int) -> bytes:
            if throttle is not None:
                throttle.before_request()
            headers = {"range": f"bytes={start}-{end - 1}", **self.fs._api._build_hf_headers()}
            response = http_backoff(
                "GET",
                self.url(),
                headers=headers,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                max_retries=3,
                retry_on_status_codes=RETRIED_IN_CLIENT,
            )
            hf_raise_for_status(response)
            return response.content

    class PacedHfFileSystem(HfFileSystem):
        def _open(
            self,
            path: str,
            mode: str = "rb",
            block_size: int | None = None,
            revision: str | None = None,
            **kwargs: Any,
        ) -> Any:
            block_size = block_size if block_size is not None else self.block_size
            if mode != "rb" or block_size == 0:
                return super()._open(path, mode, block_size=block_size, revision=revision, **kwargs)
            if block_size is not None:
                kwargs["block_size"] = block_size
            return PacedHubFile(self, path, mode=mode, revision=revision, **kwargs)

    return PacedHfFileSystem(endpoint=endpoint, skip_instance_cache=True)


def check_reachable(params: DataParams, endpoint: str | None = None) -> None:
    """One cheap Hub request (repo info + root listing); raises ``SourceUnavailableError`` offline."""
    from huggingface_hub import HfFileSystem

    open_zip(HfFileSystem(endpoint=endpoint), f"{hub_root(params.hf_repo, params.hf_revision)}/{next(iter(DFF_ZIPS))}")


def hub_root(repo: str, revision: str) -> str:
    return f"datasets/{repo}@{quote(revision, safe='')}"


def hub_fetcher(repo: str, revision: str, local_dir: Path, endpoint: str | None = None) -> ZipFetcher:
    """Whole-zip download with ``hf_hub_download`` (resumes a partial file on rerun)."""
    from huggingface_hub import hf_hub_download

    def fetch(name: str) -> Path:
        return Path(
            hf_hub_download(
                repo_id=repo,
                filename=name,
                repo_type="dataset",
                revision=revision,
                local_dir=local_dir,
                endpoint=endpoint,
            )
        )

    return fetch


def collect(
    params: DataParams,
    images_dir: Path,
    cache_root: Path,
    fs: RangeFS | None = None,
    root: str | None = None,
    fetch_zip: ZipFetcher | None = None,
    endpoint: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    expected_sizes: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Fetch the DFF subset (or everything) into ``images_dir``; one manifest row per member read.

    ``fs``/``root``/``fetch_zip`` default to the Hub (``endpoint``: another Hub URL, default the
    ``HF_ENDPOINT`` setting); tests pass a local fsspec filesystem, a folder holding the four zips and
    a fetcher that returns local paths, or a local fake Hub endpoint. ``sleep``/``clock``: the waits
    (backoff, pacing, 429) and the pacing clock. ``expected_sizes``: zip name -> bytes to check, default
    ``known_sizes(params)`` (the ``DFF_ZIP_SIZES`` table for the default repo and revision, else none).
    """
    throttle = HubThrottle(params.requests_per_minute, sleep=sleep, clock=clock)
    if fs is None:
        fs = hub_filesystem(endpoint, throttle)
    root = root if root is not None else hub_root(params.hf_repo, params.hf_revision)
    slug = f"{params.hf_repo.replace('/', '__')}@{quote(params.hf_revision, safe='')}"
    remote = {name: open_zip(fs, f"{root}/{name}", throttle) for name in DFF_ZIPS}  # fails fast when offline
    expected = known_sizes(params) if expected_sizes is None else dict(expected_sizes)
    check_sizes(remote, expected, f"{params.hf_repo}@{params.hf_revision}")
    if params.per_source == "all":
        fetch_zip = fetch_zip or hub_fetcher(params.hf_repo, params.hf_revision, cache_root / "hub" / slug, endpoint)
        from fsspec.implementations.local import LocalFileSystem

        local = LocalFileSystem()
        sources = {}
        for name in DFF_ZIPS:
            path = with_retries(functools.partial(fetch_zip, name), params.retries, name, sleep, throttle)
            if path.stat().st_size != remote[name].size:
                raise DownloadError(
                    f"{path}: {path.stat().st_size:,} bytes on disk, {remote[name].size:,} on "
                    f"the Hub; delete it and rerun"
                )
            sources[name] = ZipSource(local, str(path), path.stat().st_size)
    else:
        sources = remote
    zip_dirs = {
        name: cache_root / slug / f"{PurePosixPath(name).stem}-{stable_hash([s.path, s.size], 8)}"
        for name, s in sources.items()
    }
    listings = {}
    for name, src in sources.items():
        try:
            listings[name] = with_retries(
                functools.partial(list_entries, src, zip_dirs[name] / "entries.json"),
                params.retries,
                f"the central directory of {name}",
                sleep,
                throttle,
            )
        except FetchError as e:
            raise DownloadError(f"{src.path}: cannot read the zip directory: {e}") from e
    member_cache = None if params.per_source == "all" else {n: d / "members" for n, d in zip_dirs.items()}
    planned = plan(
        sources,
        listings,
        params.per_source,
        params.seed,
        member_cache,
        origins={name: src.path for name, src in remote.items()},
    )
    if params.per_source != "all" and len(planned) < len(DFF_ZIPS) * int(params.per_source):
        print(
            f"download: only {len(planned) // len(DFF_ZIPS)} paths are in all four zips "
            f"(data.per_source asked for {params.per_source})"
        )
    by_key = {p.item.key: p for p in planned}

    def fetch(item: RawItem) -> bytes:
        p = by_key[item.key]
        assert p.entry is not None
        return with_retries(
            functools.partial(cached_read, p.src, p.entry, p.cache_file), params.retries, p.item.origin, sleep, throttle
        )

    rows = store_all(
        [p.item for p in planned],
        fetch,
        images_dir,
        params.min_side,
        params.workers,
        desc=f"{DFF_SOURCE} {'all' if params.per_source == 'all' else params.per_source}/source",
    )
    throttle.report()
    return rows
