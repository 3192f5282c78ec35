"""Zip files read with random access: the central directory once, then each member by range reads.

The filesystem is a parameter (``RangeFS``: any fsspec filesystem, e.g. ``HfFileSystem`` or a local
one), so tests run the same range-read path on local zips. Member bytes are CRC-checked; member names
that would land outside the output folder are refused (zip slip).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from core.io import atomic_write_bytes, write_json
from sources.rawset import FetchError

RANGE_SLACK = 1024  # extra bytes read after a member's data, for a local extra field
LISTING_BLOCK = 1 << 16  # read-ahead while zipfile parses the central directory
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # zip local file header, 30 bytes
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeMemberError(ValueError):
    """A zip member name that would be written outside the output folder (zip slip)."""


class _CorruptMember(Exception):
    """Bytes read for a member do not check out (maybe a cut response): retried."""


class RangeFS(Protocol):
    """The part of an fsspec filesystem this module uses (HfFileSystem, LocalFileSystem, ...)."""

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any: ...


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


def list_entries(src: ZipSource, cache_file: Path) -> list[ZipEntry]:
    """The zip's central directory (read once with a few range reads, then cached as JSON)."""
    if cache_file.exists():
        return [ZipEntry(**e) for e in json.loads(cache_file.read_text())]
    with (
        src.fs.open(src.path, "rb", block_size=LISTING_BLOCK, cache_type="readahead", size=src.size) as f,
        zipfile.ZipFile(f) as zf,
    ):
        entries = [
            ZipEntry(
                i.filename,
                i.header_offset,
                i.compress_size,
                i.file_size,
                i.compress_type,
                i.CRC,
                i.flag_bits,
                len(i.extra),
            )
            for i in zf.infolist()
            if not i.is_dir()
        ]
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
