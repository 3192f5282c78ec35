"""Stage download: folder source with bad files, DFF zips read by range requests, zip slip, offline."""

from __future__ import annotations

import json
import random
import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, Self

import pandas as pd
import pytest
from fsspec.implementations.local import LocalFileSystem

from core.io import read_csv, sha1_file
from core.params import DataParams
from core.schema import RAW_COLUMNS
from sources import folder as source_folder
from sources import hf as source_hf
from sources import hub as source_hub
from sources import zips as source_zips
from sources.rawset import FetchError
from sources.synthetic import write_bad_files
from tests.helpers import noise_jpeg, set_params, write_file

# ---- folder source -----------------------------------------------------------------------------


def test_folder_stage_records_every_file_with_a_reason(in_tmp_project: Path) -> None:
    from stages import download

    col = in_tmp_project / "col"
    for i in range(3):
        write_file(col / "real" / "sub" / f"r{i}.jpg", noise_jpeg(i))
        write_file(col / "fake" / "genA" / f"f{i}.jpg", noise_jpeg(100 + i))
    write_file(col / "fake" / "loose.jpg", noise_jpeg(200))
    expected = write_bad_files(col / "real" / "bad")
    set_params(in_tmp_project / "params.yaml", "data", source="folder:col", per_source="all", min_side=64)

    download.main()

    frame = read_csv(Path("data/raw/manifest.csv"))
    assert list(frame.columns) == RAW_COLUMNS
    n_files = sum(1 for p in col.rglob("*") if p.is_file())
    assert len(frame) == n_files and frame["id"].is_unique
    by_name = {Path(o).name: row for o, (_, row) in zip(frame["origin"], frame.iterrows())}
    for name, (status, reason) in expected.items():
        row = by_name[name]
        assert row["status"] == status, (name, row["reason"])
        assert reason in row["reason"], (name, row["reason"])
        if status == "skipped":
            assert row["path"] == ""
        else:  # converted: the original bytes are kept unchanged, conversion happens at decode
            assert sha1_file(Path(row["path"])) == sha1_file(col / "real" / "bad" / name) == row["sha1"]
    assert by_name["loose.jpg"]["generator"] == "unknown"
    assert set(frame.loc[frame["label"] == "fake", "generator"]) == {"genA", "unknown"}
    assert set(frame.loc[frame["label"] == "real", "generator"]) == {"real"}
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == 7 and all(Path(p).exists() for p in ok["path"])
    assert len(list(Path("data/raw/images").iterdir())) == int((frame["status"] != "skipped").sum())
    summary = json.loads(Path("data/raw/summary.json").read_text())
    assert summary["total"] == len(frame)
    assert summary["counts"]["real"]["real"]["skipped"] == sum(s == "skipped" for s, _ in expected.values())
    assert summary["counts"]["real"]["real"]["converted"] == sum(s == "converted" for s, _ in expected.values())


def test_predefined_split_layout(tmp_path: Path) -> None:
    col = tmp_path / "rf"
    for i, split in enumerate(("train", "valid", "test")):
        write_file(col / split / "real" / f"r{i}.jpg", noise_jpeg(i))
        write_file(col / split / "fake" / f"f{i}.jpg", noise_jpeg(10 + i))
    params = DataParams(source=f"folder:{col}", per_source="all")
    rows = pd.DataFrame(source_folder.collect(params, tmp_path / "images"))
    assert sorted(rows["predefined_split"]) == ["test", "test", "train", "train", "val", "val"]
    assert set(rows.loc[rows["label"] == "fake", "generator"]) == {"unknown"}
    assert (rows["status"] == "ok").all()


def test_mixed_layout_is_refused(tmp_path: Path) -> None:
    write_file(tmp_path / "c" / "train" / "real" / "a.jpg", noise_jpeg(0))
    write_file(tmp_path / "c" / "real" / "b.jpg", noise_jpeg(1))
    with pytest.raises(source_folder.FolderLayoutError, match="use one layout"):
        source_folder.scan_folder(tmp_path / "c")


def test_near_dup_group_from_manifest_and_own_group_otherwise(tmp_path: Path) -> None:
    col = tmp_path / "set"
    for name in ("real/a.jpg", "real/b.jpg", "fake/g/c.jpg", "fake/g/d.jpg"):
        write_file(col / name, noise_jpeg(hash(name) % 1000))
    pd.DataFrame({"file": ["real/a.jpg", "real/b.jpg", "fake/g/c.jpg"], "near_dup_group": ["G1", "G1", "G2"]}).to_csv(
        col / "manifest.csv", index=False
    )
    rows = pd.DataFrame(
        source_folder.collect(DataParams(source=f"folder:{col}", per_source="all"), tmp_path / "images")
    )
    group = dict(zip(rows["origin"].map(lambda o: o.split("/set/")[1]), rows["group"]))
    assert group == {"real/a.jpg": "G1", "real/b.jpg": "G1", "fake/g/c.jpg": "G2", "fake/g/d.jpg": "fake/g/d.jpg"}


def test_folder_sampling_is_per_label_generator_and_seeded(tmp_path: Path) -> None:
    col = tmp_path / "s"
    for i in range(6):
        write_file(col / "real" / f"r{i}.jpg", noise_jpeg(i))
        write_file(col / "fake" / "g1" / f"a{i}.jpg", noise_jpeg(20 + i))
    write_file(col / "fake" / "g2" / "only.jpg", noise_jpeg(40))
    write_file(col / "real" / "readme.txt", b"notes")
    files = source_folder.scan_folder(col)
    picked = source_folder.sample_files(files, 2, seed=3)
    counts = pd.Series([(f.label, f.generator) for f in picked if f.rel.endswith(".jpg")]).value_counts()
    assert counts.to_dict() == {("real", "real"): 2, ("fake", "g1"): 2, ("fake", "g2"): 1}
    assert any(f.rel == "real/readme.txt" for f in picked)  # non-images are recorded, never sampled away
    assert picked == source_folder.sample_files(files, 2, seed=3)


# ---- DFF zips through a local fsspec filesystem -------------------------------------------------


class _CountingFile:
    """A file object that records every read (offset, length) into a shared list."""

    def __init__(self, f: Any, path: str, log: list[tuple[str, int, int]]) -> None:
        self._f, self._path, self._log = f, path, log

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        pos = self._f.tell()
        data = self._f.read(n)
        self._log.append((self._path, pos, len(data)))
        return data

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingFS:
    """LocalFileSystem standing in for HfFileSystem, counting what is read."""

    def __init__(self, fail_first_reads: int = 0) -> None:
        self.fs = LocalFileSystem()
        self.reads: list[tuple[str, int, int]] = []
        self._fail = fail_first_reads
        self._lock = threading.Lock()

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.fs.info(path)

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> _CountingFile:
        with self._lock:
            if self._fail > 0:
                self._fail -= 1
                raise OSError("simulated flaky read")
        return _CountingFile(self.fs.open(path, mode), path, self.reads)


PERSONS = [f"{10000 + 37 * i}_1970-01-0{1 + i % 9}_2009" for i in range(12)]


def _rel(i: int) -> str:
    return f"{PERSONS[i][3:5]}/{PERSONS[i]}.jpg"


def build_dff_zips(
    folder: Path, extra_members: dict[str, bytes] | None = None, tops: dict[str, str] | None = None, n_common: int = 11
) -> dict[str, Path]:
    """Four DFF-like zips: ``n_common`` common paths, wiki has all 12; text2img nests under 'text2img/'
    (``tops``: zip stem -> top folder instead); one zip is stored, the others deflated (both
    decompression paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    tops = {"text2img": "text2img/"} if tops is None else tops
    out = {}
    for z, name in enumerate(source_hf.DFF_ZIPS):
        stem = name[:-4]
        n = 12 if stem == "wiki" else n_common
        method = zipfile.ZIP_STORED if stem == "inpainting" else zipfile.ZIP_DEFLATED
        path = folder / name
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            for i in range(n):
                zf.writestr(tops.get(stem, "") + _rel(i), noise_jpeg(1000 * z + i, size=96))
            for member, data in (extra_members or {}).items():
                zf.writestr(member, data)
        out[name] = path
    return out


def _offsets(path: Path) -> dict[int, str]:
    with zipfile.ZipFile(path) as zf:
        return {i.header_offset: i.filename for i in zf.infolist()}


def test_subset_reads_only_the_chosen_members_and_keeps_pairs(tmp_path: Path) -> None:
    zips = build_dff_zips(tmp_path / "zips")
    fs = CountingFS()
    params = DataParams(source="hf", per_source=3, seed=1, workers=4)
    rows = pd.DataFrame(
        source_hf.collect(
            params,
            tmp_path / "images",
            tmp_path / "cache",
            fs=fs,
            root=str(tmp_path / "zips"),
            sleep=lambda s: None,
            expected_sizes={},
        )
    )
    assert len(rows) == 4 * 3 and (rows["status"] == "ok").all()
    rows["rel"] = rows["origin"].str.split("::").str[1].str.replace("text2img/", "", regex=False)
    # pairs: each chosen path appears once per source, all four in one group; paths only in wiki never chosen
    per_rel = rows.groupby("rel")
    assert per_rel["generator"].apply(frozenset).eq(frozenset(source_hf.DFF_ZIPS.values())).all()
    assert (per_rel["group"].nunique() == 1).all()
    assert _rel(11) not in set(rows["rel"])
    for name, path in zips.items():
        offsets = _offsets(path)
        reads = [(pos, n) for p, pos, n in fs.reads if p.endswith(name)]
        members_read = {offsets[pos] for pos, _ in reads if pos in offsets}
        chosen = {o.split("::")[1] for o in rows["origin"] if o.split("::")[0].endswith("/" + name)}
        assert members_read == chosen and len(chosen) == 3
        data_end = max(offsets) + 1
        assert all(pos in offsets or pos >= data_end for pos, _ in reads)  # else: central directory only
        assert sum(n for _, n in reads) < 0.5 * path.stat().st_size
    # the images are the members' bytes, unchanged
    first = rows.iloc[0]
    with zipfile.ZipFile(
        tmp_path / "zips" / next(n for n, g in source_hf.DFF_ZIPS.items() if g == first["generator"])
    ) as zf:
        assert (
            zf.read(first["origin"].split("::")[1])
            == Path(tmp_path, first["path"].replace("data/raw/images", "images")).read_bytes()
        )

    # a rerun (e.g. after a kill) is served from data/cache/download: no reads at all
    fs.reads.clear()
    again = source_hf.collect(
        params,
        tmp_path / "images2",
        tmp_path / "cache",
        fs=fs,
        root=str(tmp_path / "zips"),
        sleep=lambda s: None,
        expected_sizes={},
    )
    assert fs.reads == []
    assert [r["sha1"] for r in again] == list(rows["sha1"])


def test_retries_then_records_a_skip(tmp_path: Path) -> None:
    build_dff_zips(tmp_path / "zips")
    params = DataParams(source="hf", per_source=2, workers=1, retries=3)
    flaky = CountingFS(fail_first_reads=2)  # the central-directory read of wiki.zip fails twice
    rows = source_hf.collect(
        params,
        tmp_path / "a",
        tmp_path / "cache_a",
        fs=flaky,
        root=str(tmp_path / "zips"),
        sleep=lambda s: None,
        expected_sizes={},
    )
    assert all(r["status"] == "ok" for r in rows) and len(rows) == 8

    wiki = source_hf.open_zip(LocalFileSystem(), str(tmp_path / "zips" / "wiki.zip"))
    entry = source_zips.list_entries(wiki, tmp_path / "entries.json")[0]
    broken = source_zips.ZipSource(CountingFS(fail_first_reads=10**6), wiki.path, wiki.size)
    with pytest.raises(FetchError, match="read failed after 3 attempts"):
        source_hub.with_retries(lambda: source_zips.read_entry(broken, entry), 3, "x", lambda s: None)


def test_all_mode_extracts_every_member_and_refuses_zip_slip(tmp_path: Path) -> None:
    extra = {"../../evil.jpg": noise_jpeg(7), "/abs/evil2.jpg": noise_jpeg(8), "README.txt": b"hello"}
    zips = build_dff_zips(tmp_path / "zips", extra)
    # flip one data byte of a member of the stored (uncompressed) zip: its CRC-32 no longer matches
    stored = zips["inpainting.zip"]
    with zipfile.ZipFile(stored) as zf:
        victim = zf.getinfo(_rel(0))
    raw = bytearray(stored.read_bytes())
    raw[victim.header_offset + 30 + len(victim.filename) + len(victim.extra) + 20] ^= 0xFF
    stored.write_bytes(bytes(raw))

    params = DataParams(source="hf", per_source="all", workers=2, retries=2)
    rows = pd.DataFrame(
        source_hf.collect(
            params,
            tmp_path / "out" / "images",
            tmp_path / "cache",
            fs=CountingFS(),
            root=str(tmp_path / "zips"),
            fetch_zip=lambda n: zips[n],
            sleep=lambda s: None,
            expected_sizes={},
        )
    )
    n_members = 12 + 11 * 3 + 4 * len(extra)
    assert len(rows) == n_members and rows["id"].is_unique
    unsafe = rows[rows["origin"].str.contains("evil")]
    assert len(unsafe) == 8 and (unsafe["status"] == "skipped").all()
    assert unsafe["reason"].str.startswith("unsafe zip member path").all()
    assert not list(tmp_path.rglob("evil*.jpg"))
    txt = rows[rows["origin"].str.endswith("README.txt")]
    assert (txt["status"] == "skipped").all() and txt["reason"].str.contains("not an image file").all()
    bad = rows[rows["origin"].str.endswith(f"inpainting.zip::{_rel(0)}")].iloc[0]
    assert bad["status"] == "skipped" and "CRC-32 mismatch" in bad["reason"]
    assert (rows["status"] == "ok").sum() == n_members - 8 - 4 - 1


@pytest.mark.parametrize(
    "name",
    [
        "../evil.jpg",
        "a/../../evil.jpg",
        "/etc/passwd",
        "C:\\evil.jpg",
        "c:/evil.jpg",
        "..\\..\\evil.jpg",
        "",
        "a/\x00.jpg",
        "./",
    ],
)
def test_safe_member_path_refuses_escapes(tmp_path: Path, name: str) -> None:
    with pytest.raises(source_zips.UnsafeMemberError, match="unsafe zip member path"):
        source_zips.safe_member_path(tmp_path, name)


def test_safe_member_path_accepts_nested_names(tmp_path: Path) -> None:
    assert source_zips.safe_member_path(tmp_path, "wiki/00/1_2_3.jpg") == tmp_path / "wiki" / "00" / "1_2_3.jpg"
    assert source_zips.safe_member_path(tmp_path, "a\\b.jpg") == tmp_path / "a" / "b.jpg"


def test_relative_key_and_group() -> None:
    assert source_hf.relative_key("text2img/00/123_1980_2009.jpg", "text2img") == "00/123_1980_2009.jpg"
    assert source_hf.relative_key("00/123_1980_2009.jpg", "wiki") == "00/123_1980_2009.jpg"
    # the same person (id before the first '_') in two photos shares a group
    assert source_hf.person_group("00/123_1980_2009.jpg") == source_hf.person_group("00/123_1980_2012.jpg")
    assert source_hf.person_group("00/123_1980_2009.jpg") != source_hf.person_group("00/124_1980_2009.jpg")


# ---- the real Hub client (HfFileSystem, hf_hub_download) against a local fake Hub -------------


class FakeClock:
    """A clock that only moves when someone sleeps on it: waits cost no wall time and are recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@dataclass
class HubLimit:
    """The Hub's 'resolvers' limit, scaled down: ``allowance`` resolve requests per fixed ``window``
    seconds of ``clock``; over it, HTTP 429 with Retry-After and the IETF RateLimit headers."""

    allowance: int
    window: int
    clock: FakeClock
    count: int = 0
    window_start: float = 0.0
    sent: list[int] | None = None  # the reset times sent with each 429
    served: int = 0  # resolve requests answered normally

    def __post_init__(self) -> None:
        self.sent = []
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """None: go ahead; else the seconds until the window resets (answer 429)."""
        with self._lock:
            now = self.clock()
            if now >= self.window_start + self.window:
                self.window_start, self.count = now, 0
            if self.count >= self.allowance:
                reset = max(1, int(-(-(self.window_start + self.window - now) // 1)))
                assert self.sent is not None
                self.sent.append(reset)
                return reset
            self.count += 1
            self.served += 1
            return None


class _FakeHub(BaseHTTPRequestHandler):
    """The three Hub endpoints the client uses (repo info, tree listing, file resolve with Range),
    serving the zips of ``root``; every request is logged as (method, file, Range header).
    With ``limit``, resolve requests over its allowance get HTTP 429."""

    root: ClassVar[Path] = Path(".")
    log: ClassVar[list[tuple[str, str, str | None]]] = []
    limit: ClassVar[HubLimit | None] = None

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.log.append((self.command, path.rsplit("/", 1)[-1], self.headers.get("range")))
        if re.fullmatch(r"/api/datasets/[^/]+/[^/]+/revision/[^/]+", path):
            body = {"id": "OpenRL/DeepFakeFace", "sha": "0" * 40}
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if re.match(r"/api/datasets/[^/]+/[^/]+/tree/", path):
            body = [
                {"type": "file", "oid": "1" * 40, "size": f.stat().st_size, "path": f.name}
                for f in sorted(self.root.glob("*.zip"))
            ]
            return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        m = re.fullmatch(r"/datasets/[^/]+/[^/]+/resolve/[^/]+/(.+)", path)
        if not m or not (self.root / m.group(1)).exists():
            return self._send(404, b"not found", {})
        if self.limit is not None and (reset := self.limit.take()) is not None:
            return self._send(
                429,
                b"Too Many Requests",
                {
                    "Retry-After": str(reset),
                    "RateLimit": f'"resolvers";r=0;t={reset}',
                    "RateLimit-Policy": f'"fixed window";"resolvers";q={self.limit.allowance};w={self.limit.window}',
                },
            )
        data = (self.root / m.group(1)).read_bytes()
        headers = {"ETag": '"e"', "X-Repo-Commit": "0" * 40, "Accept-Ranges": "bytes"}
        if self.headers.get("range"):
            a, b = self.headers["range"].split("=")[1].split("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers)
        return self._send(200, data, headers)


@dataclass
class Hub:
    endpoint: str
    zips: dict[str, Path]
    log: list[tuple[str, str, str | None]]

    @property
    def sizes(self) -> dict[str, int]:
        return {name: path.stat().st_size for name, path in self.zips.items()}


@contextmanager
def serve_hub(folder: Path, limit: HubLimit | None = None) -> Iterator[Hub]:
    zips = build_dff_zips(folder)
    log: list[tuple[str, str, str | None]] = []
    handler = type("Handler", (_FakeHub,), {"root": folder, "log": log, "limit": limit})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Hub(f"http://127.0.0.1:{server.server_address[1]}", zips, log)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[Hub]:
    with serve_hub(tmp_path / "hub") as hub:
        yield hub


def test_hub_client_subset_uses_range_requests_only(tmp_path: Path, fake_hub: Hub) -> None:
    rows = source_hf.collect(
        DataParams(source="hf", per_source=2, workers=2),
        tmp_path / "images",
        tmp_path / "cache",
        endpoint=fake_hub.endpoint,
        expected_sizes=fake_hub.sizes,
    )
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    log = [entry for entry in fake_hub.log if entry[1].endswith(".zip")]
    assert log and all(rng is not None for _, _, rng in log)  # never a whole-file GET
    for name, path in fake_hub.zips.items():
        offsets = _offsets(path)
        starts = {int(rng.split("=")[1].split("-")[0]) for _, f, rng in log if f == name}
        assert len(starts & set(offsets)) == 2  # one range request per chosen member


def test_hub_client_all_downloads_whole_zips(tmp_path: Path, fake_hub: Hub) -> None:
    rows = source_hf.collect(
        DataParams(source="hf", per_source="all", workers=2),
        tmp_path / "images",
        tmp_path / "cache",
        endpoint=fake_hub.endpoint,
        expected_sizes=fake_hub.sizes,
    )
    assert len(rows) == 12 + 3 * 11 and all(r["status"] == "ok" for r in rows)
    downloaded = sorted(p.name for p in (tmp_path / "cache" / "hub").rglob("*.zip"))
    assert downloaded == sorted(fake_hub.zips)
    assert any(rng is None for _, f, rng in fake_hub.log if f.endswith(".zip"))  # whole-file GETs


# ---- HTTP 429 and pacing ------------------------------------------------------------------------


def _resolve_reads(hub: Hub) -> int:
    return sum(1 for _, f, rng in hub.log if f.endswith(".zip") and rng is not None)


def test_hub_429_is_waited_out_and_every_file_is_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(source_hub, "_has_token", lambda: False)
    clock = FakeClock()
    limit = HubLimit(allowance=5, window=40, clock=clock)
    with serve_hub(tmp_path / "hub", limit) as hub:
        # a burst well over the allowance (4 workers, pacing effectively off); one attempt per file:
        # a 429 counted as a failed attempt would turn into a skipped row
        params = DataParams(source="hf", per_source=8, workers=4, retries=1, requests_per_minute=100_000)
        rows = source_hf.collect(
            params,
            tmp_path / "images",
            tmp_path / "cache",
            endpoint=hub.endpoint,
            sleep=clock.sleep,
            clock=clock,
            expected_sizes=hub.sizes,
        )
    assert len(rows) == 4 * 8 and all(r["status"] == "ok" for r in rows), [r["reason"] for r in rows]
    assert limit.sent, "the fake Hub never answered 429: the test did not exercise throttling"
    # every reset time the server sent was waited out, on the injected sleep, plus the margin
    waited = set(clock.sleeps)
    assert {t + source_hub.RATE_LIMIT_MARGIN_S for t in limit.sent} <= waited
    assert clock.now >= limit.window * (limit.served // limit.allowance - 1)
    out = capsys.readouterr().out
    assert "HTTP 429" in out and "HF_TOKEN" in out and "'resolvers' limit" in out
    assert out.count("set HF_TOKEN") == 2  # the hint once at the first 429, once in the closing line


def test_pacing_keeps_under_the_hub_limit(tmp_path: Path) -> None:
    clock = FakeClock()
    limit = HubLimit(allowance=6, window=30, clock=clock)  # 12 a minute
    with serve_hub(tmp_path / "hub", limit) as hub:
        # one worker: the fake clock then moves exactly as the requests are paced (threads sharing the
        # limiter: test_rate_limiter_is_shared_by_threads)
        params = DataParams(source="hf", per_source=3, workers=1, requests_per_minute=10)  # 1 every 6 s
        rows = source_hf.collect(
            params,
            tmp_path / "images",
            tmp_path / "cache",
            endpoint=hub.endpoint,
            sleep=clock.sleep,
            clock=clock,
            expected_sizes=hub.sizes,
        )
        reads = _resolve_reads(hub)
    assert len(rows) == 12 and all(r["status"] == "ok" for r in rows)
    assert limit.sent == []  # never throttled
    assert reads >= 12 and sum(clock.sleeps) >= (reads - 1) * 6.0


def test_rate_limiter_paces_bursts_and_pauses() -> None:
    clock = FakeClock()
    limiter = source_hub.RateLimiter(60, burst=2, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        limiter.acquire()
    assert clock.sleeps == [1.0, 1.0, 1.0] and clock.now == 3.0  # 2 at once, then one a second
    limiter.pause(10)
    limiter.acquire()
    assert clock.now == 13.0  # everyone waits out a 429's reset time
    with pytest.raises(ValueError):
        source_hub.RateLimiter(0)


def test_rate_limiter_is_shared_by_threads() -> None:
    clock = FakeClock()
    limiter = source_hub.RateLimiter(120, burst=3, clock=clock, sleep=clock.sleep)  # a slot every 0.5 s
    slots: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(6):
            at = limiter.acquire()
            with lock:
                slots.append(at)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots.sort()
    assert len(slots) == 24
    # whatever the interleaving: k+1 slots span at least (k - burst + 1) intervals (a burst of 3, then 2 a second)
    assert all(slots[i + k] - slots[i] >= (k - 2) * 0.5 - 1e-9 for k in range(3, 24) for i in range(24 - k))
    assert slots[-1] - slots[0] >= (24 - 3) * 0.5 - 1e-9


def test_rate_limit_headers_are_parsed() -> None:
    hit = source_hub.rate_limit_wait(
        {"RateLimit": '"resolvers";r=0;t=120', "RateLimit-Policy": '"fixed window";"resolvers";q=3000;w=300'}
    )
    assert hit.wait == 120 + source_hub.RATE_LIMIT_MARGIN_S
    assert "'resolvers' limit, reset in 120 s" in hit.detail and "3000 requests per 300 s" in hit.detail
    assert source_hub.rate_limit_wait({"retry-after": "7"}).wait == 7 + source_hub.RATE_LIMIT_MARGIN_S
    # remaining > 0: the RateLimit header is not the reason for this 429; Retry-After (the longer) wins
    both = source_hub.rate_limit_wait({"ratelimit": '"api";r=5;t=50', "Retry-After": "3"})
    assert both.wait == 3 + source_hub.RATE_LIMIT_MARGIN_S
    date = source_hub.rate_limit_wait(
        {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=lambda: 1445412480.0 - 60
    )  # 60 s before that date
    assert date.wait == pytest.approx(60 + source_hub.RATE_LIMIT_MARGIN_S)
    assert source_hub.rate_limit_wait({}).wait == source_hub.DEFAULT_RATE_LIMIT_WAIT_S
    assert source_hub.rate_limit_wait({"Retry-After": "99999"}).wait == (
        source_hub.MAX_RATE_LIMIT_WAIT_S + source_hub.RATE_LIMIT_MARGIN_S
    )


class _Response:
    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code, self.headers = status_code, headers


class _HTTPError(OSError):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.response = _Response(status, headers)


def test_429_does_not_use_up_attempts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(source_hub, "_has_token", lambda: False)
    clock = FakeClock()
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 4:  # wrapped, as zipfile wraps an OSError from a read into BadZipFile
            try:
                raise _HTTPError(429, {"Retry-After": "2"})
            except OSError:
                raise zipfile.BadZipFile("File is not a zip file")  # noqa: B904 - implicit chaining keeps __context__, as zipfile does
        return "data"

    throttle = source_hub.HubThrottle(600, sleep=clock.sleep, clock=clock)
    assert source_hub.with_retries(flaky, 1, "x", clock.sleep, throttle) == "data"
    assert throttle.hits == 4 and clock.sleeps.count(2 + source_hub.RATE_LIMIT_MARGIN_S) == 4
    assert "set HF_TOKEN" in capsys.readouterr().out

    monkeypatch.setattr(source_hub, "MAX_RATE_LIMIT_WAITS", 3)
    with pytest.raises(source_hub.DownloadError, match="still rate-limited by the Hub .* after 3 waits"):
        source_hub.with_retries(lambda: (_ for _ in ()).throw(_HTTPError(429, {})), 2, "x", clock.sleep, throttle)
    # other HTTP errors still use up attempts and end as a recorded skip (FetchError)
    with pytest.raises(FetchError, match="read failed after 2 attempts"):
        source_hub.with_retries(lambda: (_ for _ in ()).throw(_HTTPError(503, {})), 2, "x", clock.sleep, throttle)


# ---- what the zips must look like: sizes, pairing ----------------------------------------------


def test_zip_sizes_are_checked_for_the_default_revision_only(tmp_path: Path) -> None:
    zips = build_dff_zips(tmp_path / "zips")
    sizes = {name: path.stat().st_size for name, path in zips.items()}
    params = DataParams(source="hf", per_source=2, workers=1)
    assert source_hf.known_sizes(params) == source_hf.DFF_ZIP_SIZES  # the defaults: the pinned DFF commit
    assert params.hf_revision == "eb2a54fbf2567790bd3dc61d09fdaade6bb6c31c"
    assert source_hf.known_sizes(DataParams(hf_revision="main")) == {}
    assert source_hf.known_sizes(DataParams(hf_repo="me/my-dff-copy")) == {}
    wrong = dict(sizes, **{"insight.zip": sizes["insight.zip"] + 1})
    with pytest.raises(source_hub.DownloadError) as info:
        source_hf.collect(
            params,
            tmp_path / "images",
            tmp_path / "cache",
            fs=LocalFileSystem(),
            root=str(tmp_path / "zips"),
            expected_sizes=wrong,
        )
    message = str(info.value)
    assert "\n" not in message and "insight.zip" in message and f"expected {wrong['insight.zip']:,}" in message
    assert not (tmp_path / "images").exists()
    # the default revision holds the local zips to the real DFF sizes: refused before any member is read
    with pytest.raises(source_hub.DownloadError, match="wiki.zip .* expected 1,766,572,515"):
        source_hf.collect(
            params, tmp_path / "images", tmp_path / "cache", fs=LocalFileSystem(), root=str(tmp_path / "zips")
        )
    # another revision: no size table, the same zips are read
    rows = source_hf.collect(
        DataParams(source="hf", per_source=2, workers=1, hf_revision="main"),
        tmp_path / "images",
        tmp_path / "cache",
        fs=LocalFileSystem(),
        root=str(tmp_path / "zips"),
    )
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)


def test_members_pair_below_any_single_top_folder(tmp_path: Path) -> None:
    tops = {"wiki": "DFF_wiki_v1/", "text2img": "sd-text2img/", "inpainting": "", "insight": "x/"}
    build_dff_zips(tmp_path / "zips", extra_members={"README.txt": b"about"}, tops=tops)
    rows = pd.DataFrame(
        source_hf.collect(
            DataParams(source="hf", per_source=4, workers=2),
            tmp_path / "images",
            tmp_path / "cache",
            fs=LocalFileSystem(),
            root=str(tmp_path / "zips"),
            expected_sizes={},
        )
    )
    assert len(rows) == 16 and (rows["status"] == "ok").all()
    rels = rows["origin"].str.split("::").str[1].str.split("/").str[-2:].str.join("/")
    assert (rows.groupby(rels)["generator"].nunique() == 4).all()
    assert (rows.groupby(rels)["group"].nunique() == 1).all()
    assert source_hf.common_top(["a/1.jpg", "a/b/2.jpg", "notes.txt", "__MACOSX/a/._1.jpg"]) == "a"
    assert source_hf.common_top(["a/1.jpg", "b/2.jpg"]) is None
    assert source_hf.common_top(["1.jpg", "a/2.jpg"]) is None


@pytest.mark.parametrize("case", ["nested_twice", "few_common"])
def test_unpaired_zips_fail_loudly(tmp_path: Path, case: str) -> None:
    if case == "nested_twice":  # text2img under two folders: its paths never match wiki's
        build_dff_zips(tmp_path / "zips", tops={"text2img": "data/text2img/"})
    else:  # 9 of the 12 real paths have fakes: 75% < 90%
        build_dff_zips(tmp_path / "zips", n_common=9)
    for per_source in (3, "all"):
        with pytest.raises(source_hub.DownloadError) as info:
            source_hf.collect(
                DataParams(source="hf", per_source=per_source, workers=1),
                tmp_path / "images",
                tmp_path / f"cache{per_source}",
                fs=LocalFileSystem(),
                root=str(tmp_path / "zips"),
                fetch_zip=lambda n: tmp_path / "zips" / n,
                expected_sizes={},
            )
        message = str(info.value)
        assert "\n" not in message and "have all three fakes at the same path" in message
        assert ("(0%" if case == "nested_twice" else "(75%") in message
    assert not (tmp_path / "images").exists()


def test_missing_zip_on_the_hub_is_one_line(tmp_path: Path, fake_hub: Hub) -> None:
    fake_hub.zips["insight.zip"].unlink()
    with pytest.raises(source_hub.DownloadError) as info:
        source_hf.collect(
            DataParams(source="hf", per_source=2, workers=1),
            tmp_path / "images",
            tmp_path / "cache",
            endpoint=fake_hub.endpoint,
            expected_sizes={},
        )
    message = str(info.value)
    assert "insight.zip not found" in message and "check data.hf_repo and data.hf_revision" in message
    assert "\n" not in message


# ---- offline ----------------------------------------------------------------------------------


class _NoNetworkFS:
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        raise ConnectionError("[Errno -2] Name or service not known")

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        raise AssertionError("must not get this far")


@pytest.mark.parametrize("make_fs", ["fake", "hub_client", "paced_hub_client"])
def test_offline_hf_fails_fast_with_the_way_out(tmp_path: Path, make_fs: str) -> None:
    endpoint = None
    if make_fs == "fake":
        fs: Any = _NoNetworkFS()
        root = None
    elif make_fs == "hub_client":  # the real HfFileSystem client against a closed local port: refused, no network
        from huggingface_hub import HfFileSystem

        fs, root = HfFileSystem(endpoint="http://127.0.0.1:9"), None
    else:  # the paced client collect() builds itself
        fs, root, endpoint = None, None, "http://127.0.0.1:9"
    with pytest.raises(source_hub.SourceUnavailableError) as info:
        source_hf.collect(
            DataParams(source="hf"), tmp_path / "images", tmp_path / "cache", fs=fs, root=root, endpoint=endpoint
        )
    message = str(info.value)
    assert "data.source: folder:<path>" in message and "data.source: synthetic" in message
    assert not (tmp_path / "images").exists()


def test_offline_stage_exits_before_touching_outputs(in_tmp_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from stages import download

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # closed port: refused
    set_params(in_tmp_project / "params.yaml", "data", source="hf", per_source=5)
    db_before = Path("mlflow.db").read_bytes()
    with pytest.raises(source_hub.SourceUnavailableError, match="data.source: synthetic"):
        download.main()
    assert not Path("data").exists() and Path("mlflow.db").read_bytes() == db_before  # no MLflow run either


def test_is_connection_error_recognises_wrapped_errors() -> None:
    try:
        try:
            raise ConnectionRefusedError("refused")
        except ConnectionRefusedError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as outer:
        assert source_hub.is_connection_error(outer)
    assert not source_hub.is_connection_error(FileNotFoundError("x"))
    assert not source_hub.is_connection_error(ValueError(random.random()))
