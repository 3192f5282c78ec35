"""``data.source: hf`` — DeepFakeFace (``OpenRL/DeepFakeFace``) read straight out of its four zips.

The dataset is four zips at the repo root (``wiki.zip`` real; ``text2img.zip``, ``inpainting.zip``,
``insight.zip`` fake), 30k images each, members in the IMDB-WIKI layout
``[<zip stem>/]<2-digit folder>/<person id>_<birth>_<year>.jpg``; the same relative path in every
zip is one real photo and its three fakes.

* ``per_source: N`` never downloads the zips: each is opened through an fsspec filesystem
  (``HfFileSystem``) with random access, ``zipfile`` reads only its central directory, N relative
  paths present in all four zips are drawn (seeded) and only those members are fetched, each with
  one or two HTTP range reads, in parallel, with retries. Reads are cached in
  ``data/cache/download/`` (atomic files), so a killed run resumes.
* ``per_source: all`` downloads the whole zips with ``hf_hub_download`` (resumable) into
  ``data/cache/download/hub/`` and reads every member out of the local files with the same code.

The filesystem is a parameter (``RangeFS``): tests run the same range-read path on local zips.
"""
from __future__ import annotations

import json
import random
import re
import socket
import struct
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from stages.common.io import atomic_write_bytes, stable_hash, write_json
from stages.common.params import DataParams
from stages.common.rawset import IMAGE_EXTENSIONS, FetchError, RawItem, store_all

DFF_ZIPS: dict[str, str] = {  # zip at the repo root -> generator ("real" for the real photos)
    "wiki.zip": "real", "text2img.zip": "text2img", "inpainting.zip": "inpainting", "insight.zip": "insight",
}
DFF_SOURCE = "dff"
RANGE_SLACK = 1024           # extra bytes read after a member's data, for a local extra field
LISTING_BLOCK = 1 << 16      # read-ahead while zipfile parses the central directory
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_DRIVE = re.compile(r"^[A-Za-z]:")
T = TypeVar("T")


class SourceUnavailableError(RuntimeError):
    """The Hub cannot be reached (offline, DNS, proxy, timeouts)."""


class DownloadError(RuntimeError):
    """The dataset on the Hub is not what this source expects."""


class UnsafeMemberError(ValueError):
    """A zip member name that would be written outside the output folder (zip slip)."""


class _CorruptMember(Exception):
    """Bytes read for a member do not check out (maybe a cut response): retried."""


class RangeFS(Protocol):
    """The part of an fsspec filesystem this module uses (HfFileSystem, LocalFileSystem, ...)."""

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any: ...


ZipFetcher = Callable[[str], Path]  # zip name at the repo root -> local path of the whole zip


@dataclass(frozen=True)
class ZipEntry:
    name: str
    header_offset: int
    compress_size: int
    file_size: int
    compress_type: int
    crc: int
    flag_bits: int
    extra_len: int


@dataclass(frozen=True)
class ZipSource:
    """One zip file reachable with random access through ``fs``."""

    fs: RangeFS
    path: str
    size: int


def offline_message(err: BaseException) -> str:
    return (f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}). Without network set "
            f"data.source: folder:<path> (a local real/ + fake/<generator>/ image folder, e.g. "
            f"folder:../shared/data/hardfakevsreal) or data.source: synthetic in params.yaml")


_CONNECTION_ERROR_NAMES = frozenset({
    "ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TimeoutException", "Timeout",
    "ReadTimeout", "ReadError", "ProxyError", "RemoteProtocolError", "OfflineModeIsEnabled",
})


def is_connection_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or its cause) means the server could not be reached, whatever HTTP library."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(cls.__name__ in _CONNECTION_ERROR_NAMES for cls in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def safe_member_path(root: Path, name: str) -> Path:
    """``root / name`` for a zip member name, refusing names that would land outside ``root``."""
    norm = name.replace("\\", "/")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if not name or "\x00" in name:
        raise UnsafeMemberError(f"unsafe zip member path {name!r}: empty or contains NUL")
    if norm.startswith("/") or _DRIVE.match(norm):
        raise UnsafeMemberError(f"unsafe zip member path {name!r}: absolute path or drive letter")
    if ".." in parts or not parts:
        raise UnsafeMemberError(f"unsafe zip member path {name!r}: '..' would escape the output folder")
    target = root.joinpath(*parts)
    if not target.resolve().is_relative_to(root.resolve()):
        raise UnsafeMemberError(f"unsafe zip member path {name!r}: resolves outside {root}")
    return target


def with_retries(fn: Callable[[], T], attempts: int, what: str, sleep: Callable[[float], None]) -> T:
    """``fn()`` with exponential backoff. A lost connection after the last attempt aborts the run
    (rerun to resume from the cache); any other persistent failure becomes a ``FetchError``."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except FetchError:
            raise  # deterministic (e.g. unsupported compression): retrying cannot help
        except Exception as e:  # noqa: BLE001 - every other failure is retried, then classified
            last = e
            if attempt + 1 < attempts:
                sleep(min(0.5 * 2 ** attempt, 8.0))
    if is_connection_error(last):
        raise SourceUnavailableError(f"lost the connection while reading {what} ({attempts} attempts: {last}); "
                                     f"rerun to resume from data/cache/download/") from last
    raise FetchError(f"read failed after {attempts} attempts ({type(last).__name__}: {last})")


def open_zip(fs: RangeFS, path: str) -> ZipSource:
    """Size of a remote zip; the first request, so an unreachable Hub fails here, within seconds."""
    try:
        info = fs.info(path)
    except FileNotFoundError as e:
        raise DownloadError(f"{path} not found ({e}); check data.hf_repo and data.hf_revision") from e
    except Exception as e:
        if is_connection_error(e):
            raise SourceUnavailableError(offline_message(e)) from e
        raise
    return ZipSource(fs, path, int(info["size"]))


def list_entries(src: ZipSource, cache_file: Path) -> list[ZipEntry]:
    """The zip's central directory (read once with a few range reads, then cached as JSON)."""
    if cache_file.exists():
        return [ZipEntry(**e) for e in json.loads(cache_file.read_text())]
    with src.fs.open(src.path, "rb", block_size=LISTING_BLOCK, cache_type="readahead", size=src.size) as f:
        with zipfile.ZipFile(f) as zf:
            entries = [ZipEntry(i.filename, i.header_offset, i.compress_size, i.file_size, i.compress_type,
                                i.CRC, i.flag_bits, len(i.extra)) for i in zf.infolist() if not i.is_dir()]
    write_json(cache_file, [asdict(e) for e in entries])
    return entries


def read_entry(src: ZipSource, entry: ZipEntry) -> bytes:
    """One member's bytes via range reads of its local header + data only; CRC-checked."""
    if entry.flag_bits & 0x1:
        raise FetchError("encrypted zip member")
    if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FetchError(f"unsupported zip compression method {entry.compress_type}")
    start = entry.header_offset
    guess = _LOCAL_HEADER.size + len(entry.name.encode()) + entry.extra_len + entry.compress_size + RANGE_SLACK
    with src.fs.open(src.path, "rb", block_size=LISTING_BLOCK, cache_type="none", size=src.size) as f:
        f.seek(start)
        buf = f.read(min(guess, src.size - start))
        if len(buf) < _LOCAL_HEADER.size:
            raise _CorruptMember("short read of the local header")
        sig, *_, name_len, extra_len = _LOCAL_HEADER.unpack_from(buf)
        if sig != b"PK\x03\x04":
            raise _CorruptMember("bad local header signature")
        data_start = _LOCAL_HEADER.size + name_len + extra_len
        data_end = data_start + entry.compress_size
        if data_end > len(buf):  # local extra field longer than the slack: fetch the rest
            buf += f.read(data_end - len(buf))
    raw = buf[data_start:data_end]
    data = raw if entry.compress_type == zipfile.ZIP_STORED else _inflate(raw)
    if len(data) != entry.file_size or zlib.crc32(data) != entry.crc:
        raise _CorruptMember("size or CRC-32 mismatch")
    return data


def _inflate(raw: bytes) -> bytes:
    try:
        d = zlib.decompressobj(-15)
        return d.decompress(raw) + d.flush()
    except zlib.error as e:
        raise _CorruptMember(f"inflate failed ({e})") from None


def cached_read(src: ZipSource, entry: ZipEntry, cache_file: Path | None) -> bytes:
    """``read_entry`` through a per-member cache file (written atomically, CRC-checked on reuse)."""
    if cache_file is not None and cache_file.exists():
        data = cache_file.read_bytes()
        if len(data) == entry.file_size and zlib.crc32(data) == entry.crc:
            return data
    data = read_entry(src, entry)
    if cache_file is not None:
        atomic_write_bytes(cache_file, data)
    return data


def relative_key(name: str, zip_stem: str) -> str:
    """Member name without a top-level folder named like the zip: the pairing key across zips."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if len(parts) > 1 and parts[0].lower() == zip_stem.lower():
        parts = parts[1:]
    return "/".join(parts)


def person_group(rel: str) -> str:
    """Group of a relative path: the IMDB-WIKI person id (file name before the first '_') when the
    name has one, so all photos of a person and their fakes stay together; else the path itself."""
    stem = PurePosixPath(rel).name.split("_", 1)[0]
    return f"{DFF_SOURCE}/person/{stem}" if stem.isdigit() else f"{DFF_SOURCE}/path/{rel}"


def is_candidate(rel: str) -> bool:
    parts = rel.split("/")
    return (PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS
            and not any(p.startswith(".") or p == "__MACOSX" for p in parts))


def choose_common(rels: dict[str, set[str]], n: int, seed: int) -> list[str]:
    """``n`` relative paths (seeded) that exist in every zip, so each real comes with all its fakes."""
    common = sorted(set.intersection(*rels.values())) if rels else []
    if n >= len(common):
        return common
    return sorted(random.Random(f"{DFF_SOURCE}/{seed}").sample(common, n))


@dataclass(frozen=True)
class _Planned:
    item: RawItem
    src: ZipSource
    entry: ZipEntry | None
    cache_file: Path | None


def plan(sources: dict[str, ZipSource], listings: dict[str, list[ZipEntry]], per_source: int | str,
         seed: int, member_cache: dict[str, Path] | None, origins: dict[str, str]) -> list[_Planned]:
    """The items to fetch: every member (``all``) or the chosen common paths of each zip.
    ``origins``: the zip's path as recorded in the manifest (the Hub path, also when read locally)."""
    keyed: dict[str, dict[str, ZipEntry]] = {}
    refused: dict[str, list[tuple[ZipEntry, str]]] = {}
    for zip_name, entries in listings.items():
        stem = PurePosixPath(zip_name).stem
        keyed[zip_name], refused[zip_name] = {}, []
        for entry in entries:
            try:
                safe_member_path(Path("."), entry.name)
            except UnsafeMemberError as e:
                refused[zip_name].append((entry, str(e)))
                continue
            rel = relative_key(entry.name, stem)
            if rel in keyed[zip_name]:
                refused[zip_name].append((entry, f"duplicate zip member path (same as {keyed[zip_name][rel].name!r})"))
                continue
            keyed[zip_name][rel] = entry
    if per_source == "all":
        chosen = {z: sorted(k) for z, k in keyed.items()}
    else:
        common = choose_common({z: {r for r in k if is_candidate(r)} for z, k in keyed.items()},
                               int(per_source), seed)
        chosen = {z: common for z in keyed}
    out: list[_Planned] = []
    for zip_name, rels in chosen.items():
        generator, src = DFF_ZIPS[zip_name], sources[zip_name]
        label = "real" if generator == "real" else "fake"
        for rel in rels:
            entry = keyed[zip_name][rel]
            cache = member_cache[zip_name] if member_cache else None
            item = RawItem(key=f"{DFF_SOURCE}/{generator}/{rel}", label=label, generator=generator,
                           source=DFF_SOURCE, group=person_group(rel), origin=f"{origins[zip_name]}::{entry.name}",
                           ext=PurePosixPath(rel).suffix.lower())
            out.append(_Planned(item, src, entry, safe_member_path(cache, entry.name) if cache else None))
        if per_source == "all":  # unsafe/duplicate names get a skipped row (a subset never picks them)
            for entry, reason in refused[zip_name]:
                item = RawItem(key=f"{DFF_SOURCE}/{generator}/refused/{entry.name}", label=label,
                               generator=generator, source=DFF_SOURCE, group=f"{DFF_SOURCE}/refused/{entry.name}",
                               origin=f"{origins[zip_name]}::{entry.name}",
                               ext=PurePosixPath(entry.name).suffix.lower(), refused=reason)
                out.append(_Planned(item, src, None, None))
    return out


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
        return Path(hf_hub_download(repo_id=repo, filename=name, repo_type="dataset", revision=revision,
                                    local_dir=local_dir, endpoint=endpoint))
    return fetch


def collect(params: DataParams, images_dir: Path, cache_root: Path, fs: RangeFS | None = None,
            root: str | None = None, fetch_zip: ZipFetcher | None = None, endpoint: str | None = None,
            sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Fetch the DFF subset (or everything) into ``images_dir``; one manifest row per member read.

    ``fs``/``root``/``fetch_zip`` default to the Hub (``endpoint``: another Hub URL, default the
    ``HF_ENDPOINT`` setting); tests pass a local fsspec filesystem, a folder holding the four zips and
    a fetcher that returns local paths, or a local fake Hub endpoint.
    """
    if fs is None:
        from huggingface_hub import HfFileSystem
        fs = HfFileSystem(endpoint=endpoint)
    root = root if root is not None else hub_root(params.hf_repo, params.hf_revision)
    slug = f"{params.hf_repo.replace('/', '__')}@{quote(params.hf_revision, safe='')}"
    remote = {name: open_zip(fs, f"{root}/{name}") for name in DFF_ZIPS}  # fails fast when offline
    if params.per_source == "all":
        fetch_zip = fetch_zip or hub_fetcher(params.hf_repo, params.hf_revision, cache_root / "hub" / slug, endpoint)
        from fsspec.implementations.local import LocalFileSystem
        local = LocalFileSystem()
        sources = {}
        for name in DFF_ZIPS:
            path = with_retries(lambda n=name: fetch_zip(n), params.retries, name, sleep)
            sources[name] = ZipSource(local, str(path), path.stat().st_size)
    else:
        sources = remote
    zip_dirs = {name: cache_root / slug / f"{PurePosixPath(name).stem}-{stable_hash([s.path, s.size], 8)}"
                for name, s in sources.items()}
    listings = {}
    for name, src in sources.items():
        try:
            listings[name] = with_retries(lambda s=src, n=name: list_entries(s, zip_dirs[n] / "entries.json"),
                                          params.retries, f"the central directory of {name}", sleep)
        except FetchError as e:
            raise DownloadError(f"{src.path}: cannot read the zip directory: {e}") from e
    member_cache = None if params.per_source == "all" else {n: d / "members" for n, d in zip_dirs.items()}
    planned = plan(sources, listings, params.per_source, params.seed, member_cache,
                   origins={name: src.path for name, src in remote.items()})
    if params.per_source != "all" and len(planned) < len(DFF_ZIPS) * int(params.per_source):
        print(f"download: only {len(planned) // len(DFF_ZIPS)} paths are in all four zips "
              f"(data.per_source asked for {params.per_source})")
    by_key = {p.item.key: p for p in planned}

    def fetch(item: RawItem) -> bytes:
        p = by_key[item.key]
        assert p.entry is not None
        return with_retries(lambda: cached_read(p.src, p.entry, p.cache_file), params.retries, p.item.origin, sleep)

    return store_all([p.item for p in planned], fetch, images_dir, params.min_side, params.workers,
                     desc=f"{DFF_SOURCE} {'all' if params.per_source == 'all' else params.per_source}/source")
