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
* Hub requests are paced by one ``RateLimiter`` shared by the worker threads
  (``data.requests_per_minute``; anonymous users get about 3,000 resolve requests per 5 minutes,
  every range read is one). An HTTP 429 is honoured (``RateLimit`` / ``Retry-After`` headers):
  every thread waits, then retries; a wait is not a failed attempt. The first 429 prints a hint to
  set ``HF_TOKEN``.

The filesystem is a parameter (``RangeFS``): tests run the same range-read path on local zips.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from core.io import atomic_write_bytes, stable_hash, write_json
from core.params import DataParams
from sources.rawset import IMAGE_EXTENSIONS, FetchError, RawItem, store_all

DFF_ZIPS: dict[str, str] = {  # zip at the repo root -> generator ("real" for the real photos)
    "wiki.zip": "real", "text2img.zip": "text2img", "inpainting.zip": "inpainting", "insight.zip": "insight",
}
DFF_SOURCE = "dff"
# Byte sizes of the zips at the pinned default revision (DataParams().hf_revision of DataParams().hf_repo):
# the one table; checked only when data.hf_repo / data.hf_revision are the defaults.
DFF_ZIP_SIZES: dict[str, int] = {
    "wiki.zip": 1_766_572_515, "text2img.zip": 1_134_392_707,
    "inpainting.zip": 1_082_027_665, "insight.zip": 1_081_375_437,
}
MIN_PAIRED = 0.90            # share of the real paths that must have all three fakes at the same path
RATE_LIMIT_MARGIN_S = 1.0    # added to the server's reset time (it is rounded to whole seconds)
DEFAULT_RATE_LIMIT_WAIT_S = 30.0  # a 429 without RateLimit / Retry-After headers
MAX_RATE_LIMIT_WAIT_S = 900.0     # never trust a reset time longer than this
MAX_RATE_LIMIT_WAITS = 30    # 429s in a row for one read before the run stops (with the HF_TOKEN hint)
RETRIED_IN_CLIENT = (408, 500, 502, 503, 504)  # huggingface_hub's own retries minus 429 (handled here)
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


# ---- pacing and HTTP 429 -----------------------------------------------------------------------

class RateLimiter:
    """A token bucket shared by all worker threads: on average ``per_minute`` requests a minute,
    bursts of up to ``burst``; ``pause(s)`` holds every thread back for ``s`` seconds (after a 429).

    Each ``acquire`` reserves the next free slot under a lock and sleeps outside it. ``clock`` and
    ``sleep`` are parameters so tests run on a fake clock.
    """

    def __init__(self, per_minute: float, burst: int | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_minute <= 0:
            raise ValueError(f"requests per minute must be positive, got {per_minute}")
        self.interval = 60.0 / per_minute
        self.burst = max(1, burst if burst is not None else min(int(per_minute) // 12, 50))  # <= 5 s of requests
        self.clock, self.sleep = clock, sleep
        self._tat = -math.inf          # theoretical arrival time of the next request at the steady rate
        self._paused_until = -math.inf
        self._lock = threading.Lock()
        self.waited = 0.0              # seconds spent waiting for slots, all threads together

    def acquire(self) -> float:
        """Reserve the next free slot and wait for it; returns the slot's time on ``clock``."""
        with self._lock:
            now = self.clock()
            tat = max(self._tat, now)
            at = max(now, tat - (self.burst - 1) * self.interval, self._paused_until)
            self._tat = max(tat, at) + self.interval
            self.waited += at - now
        if at > now:
            self.sleep(at - now)
        return at

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self.clock() + seconds)


@dataclass(frozen=True)
class RateLimited:
    """An HTTP 429: how long to wait and what the server said."""

    wait: float
    detail: str


_RATELIMIT_NAME = re.compile(r'"([^"]*)"')
_RATELIMIT_PARAM = re.compile(r"\b([a-z]+)\s*=\s*(\d+)", re.IGNORECASE)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key in headers:
        if str(key).lower() == name:
            return str(headers[key])
    return None


def rate_limit_wait(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> RateLimited:
    """Seconds to wait after a 429, from the IETF ``RateLimit`` header (``"resolvers";r=0;t=120``:
    0 left, reset in 120 s) and/or ``Retry-After`` (seconds or an HTTP date); the longer one wins,
    plus ``RATE_LIMIT_MARGIN_S``. Without either: ``DEFAULT_RATE_LIMIT_WAIT_S``."""
    waits: list[float] = []
    notes: list[str] = []
    ratelimit = _header(headers, "ratelimit")
    if ratelimit:
        params = {k.lower(): int(v) for k, v in _RATELIMIT_PARAM.findall(ratelimit)}
        name = _RATELIMIT_NAME.search(ratelimit)
        if "t" in params and params.get("r", 0) == 0:
            waits.append(float(params["t"]))
            notes.append(f"{name.group(1) if name else 'rate'!r} limit, reset in {params['t']} s")
    policy = _header(headers, "ratelimit-policy")
    if policy:
        q = {k.lower(): int(v) for k, v in _RATELIMIT_PARAM.findall(policy)}
        if "q" in q and "w" in q:
            notes.append(f"{q['q']} requests per {q['w']} s")
    retry_after = (_header(headers, "retry-after") or "").strip()
    if retry_after.isdigit():
        waits.append(float(retry_after))
        notes.append(f"Retry-After {retry_after} s")
    elif retry_after:
        try:
            waits.append(max(0.0, parsedate_to_datetime(retry_after).timestamp() - now()))
            notes.append(f"Retry-After {retry_after}")
        except (TypeError, ValueError):
            pass
    if not waits:
        return RateLimited(DEFAULT_RATE_LIMIT_WAIT_S, "no reset time given")
    return RateLimited(min(max(waits), MAX_RATE_LIMIT_WAIT_S) + RATE_LIMIT_MARGIN_S, "; ".join(notes))


def rate_limited(exc: BaseException | None) -> RateLimited | None:
    """The wait for an HTTP 429 anywhere in ``exc``'s chain (``HfHubHTTPError``/httpx/requests errors
    carry ``.response``; aiohttp errors ``.status`` and ``.headers``); None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or getattr(exc, "status", None)
        if status == 429:
            headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
            return rate_limit_wait(headers)
        exc = exc.__cause__ or exc.__context__
    return None


def _has_token() -> bool:
    if os.environ.get("HF_TOKEN"):
        return True
    try:
        from huggingface_hub import get_token
        return bool(get_token())
    except Exception:  # noqa: BLE001 - only for the wording of a hint
        return False


class HubThrottle:
    """Pacing and 429 handling shared by every thread of one run: ``before_request`` paces,
    ``on_rate_limited`` makes all threads wait and prints the ``HF_TOKEN`` hint once."""

    def __init__(self, per_minute: float, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, burst: int | None = None) -> None:
        self.limiter = RateLimiter(per_minute, burst, clock, sleep)
        self.sleep = sleep
        self.hits = 0
        self.waited = 0.0
        self._lock = threading.Lock()

    def before_request(self) -> None:
        self.limiter.acquire()

    def on_rate_limited(self, hit: RateLimited, what: str) -> None:
        with self._lock:
            self.hits += 1
            first = self.hits == 1
            self.waited += hit.wait
        if first:
            print(f"download: the Hub answered HTTP 429 Too Many Requests while reading {what} ({hit.detail}); "
                  f"waiting {hit.wait:.0f} s, then resuming (429 waits are not failed attempts). {token_hint()}",
                  flush=True)
        self.limiter.pause(hit.wait)
        self.sleep(hit.wait)

    def report(self) -> None:
        if self.hits:
            print(f"download: the Hub rate-limited {self.hits} requests; waited {self.waited:.0f} s for it in all. "
                  f"{token_hint()}", flush=True)


def token_hint() -> str:
    if _has_token():
        return ("A Hugging Face token is set; lower data.requests_per_minute to stay under its limit.")
    return ("Anonymous users get about 3,000 requests per 5 minutes: set HF_TOKEN to a Hugging Face access "
            "token (https://huggingface.co/settings/tokens) for higher limits, or lower data.requests_per_minute.")


def with_retries(fn: Callable[[], T], attempts: int, what: str, sleep: Callable[[float], None],
                 throttle: HubThrottle | None = None) -> T:
    """``fn()`` with exponential backoff. A lost connection after the last attempt aborts the run
    (rerun to resume from the cache); any other persistent failure becomes a ``FetchError``.
    An HTTP 429 is not an attempt: wait for the server's reset time (every thread, through
    ``throttle``) and try again; ``MAX_RATE_LIMIT_WAITS`` in a row stop the run with a ``DownloadError``."""
    throttle = throttle if throttle is not None else HubThrottle(60_000, sleep=sleep)
    last: Exception | None = None
    attempt = waits = 0
    while attempt < attempts:
        try:
            return fn()
        except FetchError:
            raise  # deterministic (e.g. unsupported compression): retrying cannot help
        except Exception as e:  # noqa: BLE001 - every other failure is retried, then classified
            hit = rate_limited(e)
            if hit is not None:
                waits += 1
                if waits > MAX_RATE_LIMIT_WAITS:
                    raise DownloadError(f"still rate-limited by the Hub (HTTP 429) after {MAX_RATE_LIMIT_WAITS} waits "
                                        f"while reading {what}; {token_hint()} Rerun to resume from "
                                        f"data/cache/download/") from e
                throttle.on_rate_limited(hit, what)
                continue
            last = e
            attempt += 1
            if attempt < attempts:
                sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
    if is_connection_error(last):
        raise SourceUnavailableError(f"lost the connection while reading {what} ({attempts} attempts: {last}); "
                                     f"rerun to resume from data/cache/download/") from last
    raise FetchError(f"read failed after {attempts} attempts ({type(last).__name__}: {_first_line(last)})")


def open_zip(fs: RangeFS, path: str, throttle: HubThrottle | None = None) -> ZipSource:
    """Size of a remote zip; the first request, so an unreachable Hub fails here, within seconds."""
    waits = 0
    while True:
        try:
            info = fs.info(path)
            break
        except FileNotFoundError as e:
            raise DownloadError(f"{path} not found ({_first_line(e)}); check data.hf_repo and data.hf_revision") from e
        except Exception as e:
            if is_connection_error(e):
                raise SourceUnavailableError(offline_message(e)) from e
            hit = rate_limited(e)
            if hit is None or waits >= MAX_RATE_LIMIT_WAITS:
                raise DownloadError(f"{path}: {type(e).__name__}: {_first_line(e)}") from e
            waits += 1
            (throttle or HubThrottle(60_000)).on_rate_limited(hit, path)
    return ZipSource(fs, path, int(info["size"]))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


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
            raise DownloadError(f"{name} on {where} is {src.size:,} bytes, expected {want:,}: not the DeepFakeFace "
                                f"files this pipeline was checked against (set data.hf_repo / data.hf_revision "
                                f"to the dataset you mean; sizes are only checked for the defaults)")


def list_entries(src: ZipSource, cache_file: Path) -> list[ZipEntry]:
    """The zip's central directory (read once with a few range reads, then cached as JSON)."""
    if cache_file.exists():
        return [ZipEntry(**e) for e in json.loads(cache_file.read_text())]
    with (src.fs.open(src.path, "rb", block_size=LISTING_BLOCK, cache_type="readahead", size=src.size) as f,
          zipfile.ZipFile(f) as zf):
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
    return (PurePosixPath(rel).suffix.lower() in IMAGE_EXTENSIONS
            and not any(p.startswith(".") or p == "__MACOSX" for p in parts))


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
        raise DownloadError(f"only {len(paired):,} of the {len(reals):,} real paths in {real} ({share:.0%}, need "
                            f"{MIN_PAIRED:.0%}) have all three fakes at the same path, e.g. {example!r} is not in "
                            f"{', '.join(missing)} (a fake path looks like {fake_example!r}); the zips do not have "
                            f"the DeepFakeFace layout")


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
            response = http_backoff("GET", self.url(), headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
                                    max_retries=3, retry_on_status_codes=RETRIED_IN_CLIENT)
            hf_raise_for_status(response)
            return response.content

    class PacedHfFileSystem(HfFileSystem):
        def _open(self, path: str, mode: str = "rb", block_size: int | None = None,  # type: ignore[override]
                  revision: str | None = None, **kwargs: Any) -> Any:
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
        return Path(hf_hub_download(repo_id=repo, filename=name, repo_type="dataset", revision=revision,
                                    local_dir=local_dir, endpoint=endpoint))
    return fetch


def collect(params: DataParams, images_dir: Path, cache_root: Path, fs: RangeFS | None = None,
            root: str | None = None, fetch_zip: ZipFetcher | None = None, endpoint: str | None = None,
            sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
            expected_sizes: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
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
            path = with_retries(lambda n=name: fetch_zip(n), params.retries, name, sleep, throttle)
            if path.stat().st_size != remote[name].size:
                raise DownloadError(f"{path}: {path.stat().st_size:,} bytes on disk, {remote[name].size:,} on "
                                    f"the Hub; delete it and rerun")
            sources[name] = ZipSource(local, str(path), path.stat().st_size)
    else:
        sources = remote
    zip_dirs = {name: cache_root / slug / f"{PurePosixPath(name).stem}-{stable_hash([s.path, s.size], 8)}"
                for name, s in sources.items()}
    listings = {}
    for name, src in sources.items():
        try:
            listings[name] = with_retries(lambda s=src, n=name: list_entries(s, zip_dirs[n] / "entries.json"),
                                          params.retries, f"the central directory of {name}", sleep, throttle)
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
        return with_retries(lambda: cached_read(p.src, p.entry, p.cache_file), params.retries, p.item.origin,
                            sleep, throttle)

    rows = store_all([p.item for p in planned], fetch, images_dir, params.min_side, params.workers,
                     desc=f"{DFF_SOURCE} {'all' if params.per_source == 'all' else params.per_source}/source")
    throttle.report()
    return rows
