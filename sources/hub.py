"""Requests to the Hugging Face Hub: pacing, HTTP 429 waits, retries, and what a lost connection means.

* Hub requests are paced by one ``RateLimiter`` shared by the worker threads
  (``data.requests_per_minute``; anonymous users get about 3,000 resolve requests per 5 minutes,
  every range read is one). An HTTP 429 is honoured (``RateLimit`` / ``Retry-After`` headers):
  every thread waits, then retries; a wait is not a failed attempt. The first 429 prints a hint to
  set ``HF_TOKEN``.
* ``with_retries`` retries any other failure with exponential backoff; a lost connection stops the
  run (``SourceUnavailableError``: rerun to resume), anything else becomes a recorded skip (``FetchError``).
"""

from __future__ import annotations

import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from core.errors import PipelineError
from sources.rawset import FetchError

RATE_LIMIT_MARGIN_S = 1.0  # added to the server's reset time (it is rounded to whole seconds)
DEFAULT_RATE_LIMIT_WAIT_S = 30.0  # a 429 without RateLimit / Retry-After headers
MAX_RATE_LIMIT_WAIT_S = 900.0  # never trust a reset time longer than this
MAX_RATE_LIMIT_WAITS = 30  # 429s in a row for one read before the run stops (with the HF_TOKEN hint)
T = TypeVar("T")


class SourceUnavailableError(PipelineError, RuntimeError):
    """The Hub cannot be reached (offline, DNS, proxy, timeouts)."""


class DownloadError(PipelineError, RuntimeError):
    """The dataset on the Hub is not what this source expects."""


def offline_message(err: BaseException) -> str:
    return (
        f"cannot reach the Hugging Face Hub ({type(err).__name__}: {err}). Without network set "
        f"data.source: folder:<path> (a local real/ + fake/<generator>/ image folder, e.g. "
        f"folder:../shared/data/hardfakevsreal) or data.source: synthetic in params.yaml"
    )


_CONNECTION_ERROR_NAMES = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "ConnectionError",
        "NetworkError",
        "TimeoutException",
        "Timeout",
        "ReadTimeout",
        "ReadError",
        "ProxyError",
        "RemoteProtocolError",
        "OfflineModeIsEnabled",
    }
)


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


class RateLimiter:
    """A token bucket shared by all worker threads: on average ``per_minute`` requests a minute,
    bursts of up to ``burst``; ``pause(s)`` holds every thread back for ``s`` seconds (after a 429).

    Each ``acquire`` reserves the next free slot under a lock and sleeps outside it. ``clock`` and
    ``sleep`` are parameters so tests run on a fake clock.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"requests per minute must be positive, got {per_minute}")
        self.interval = 60.0 / per_minute
        self.burst = max(1, burst if burst is not None else min(int(per_minute) // 12, 50))  # <= 5 s of requests
        self.clock, self.sleep = clock, sleep
        self._tat = -math.inf  # theoretical arrival time of the next request at the steady rate
        self._paused_until = -math.inf
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting for slots, all threads together

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

    def __init__(
        self,
        per_minute: float,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        burst: int | None = None,
    ) -> None:
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
            print(
                f"download: the Hub answered HTTP 429 Too Many Requests while reading {what} ({hit.detail}); "
                f"waiting {hit.wait:.0f} s, then resuming (429 waits are not failed attempts). {token_hint()}",
                flush=True,
            )
        self.limiter.pause(hit.wait)
        self.sleep(hit.wait)

    def report(self) -> None:
        if self.hits:
            print(
                f"download: the Hub rate-limited {self.hits} requests; waited {self.waited:.0f} s for it in all. "
                f"{token_hint()}",
                flush=True,
            )


def token_hint() -> str:
    if _has_token():
        return "A Hugging Face token is set; lower data.requests_per_minute to stay under its limit."
    return (
        "Anonymous users get about 3,000 requests per 5 minutes: set HF_TOKEN to a Hugging Face access "
        "token (https://huggingface.co/settings/tokens) for higher limits, or lower data.requests_per_minute."
    )


def with_retries(
    fn: Callable[[], T], attempts: int, what: str, sleep: Callable[[float], None], throttle: HubThrottle | None = None
) -> T:
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
                    raise DownloadError(
                        f"still rate-limited by the Hub (HTTP 429) after {MAX_RATE_LIMIT_WAITS} waits "
                        f"while reading {what}; {token_hint()} Rerun to resume from "
                        f"data/cache/download/"
                    ) from e
                throttle.on_rate_limited(hit, what)
                continue
            last = e
            attempt += 1
            if attempt < attempts:
                sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
    if is_connection_error(last):
        raise SourceUnavailableError(
            f"lost the connection while reading {what} ({attempts} attempts: {last}); "
            f"rerun to resume from data/cache/download/"
        ) from last
    detail = f"{type(last).__name__}: {first_line(last)}" if last is not None else "no attempt made"
    raise FetchError(f"read failed after {attempts} attempts ({detail})")


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__
