"""The image download step: image URLs into the local cache (``befa fetch-images``).

The only code in befa that opens a network connection. Everything else reads the cache
(``pipeline.data.image_cache``), so ingest and extraction stay offline.

- concurrent (``concurrency`` threads), at most ``per_host`` requests to one host at a time;
- a timeout per request, retries with exponential backoff for what may pass (timeouts,
  connection errors, HTTP 429 and 5xx); a 4xx other than 429 or a body that is not an
  image is final at once;
- redirects are followed (at most ``MAX_REDIRECTS``);
- bodies are capped at ``max_bytes`` (a runaway response is an error, not a full disk);
- a URL already in the cache is not fetched again;
- every failure is reported with its URL, the HTTP status or the error, and the file and
  row that named it.
"""

from __future__ import annotations

import io
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable
from urllib.parse import urlsplit

import httpx
from PIL import Image, UnidentifiedImageError

from pipeline.data.image_cache import ImageCache

MAX_REDIRECTS = 5
RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ImageRef:
    url: str
    file: str | None = None  # the file that named it
    row: int | None = None  # 1-based data row in that file


@dataclass(frozen=True)
class FetchOptions:
    concurrency: int = 16
    per_host: int = 4
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    max_bytes: int = 50 * 2**20

    def check(self) -> None:
        for name, flag in (("concurrency", "--concurrency"), ("per_host", "--per-host")):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {self.retries}")


@dataclass
class FetchFailure:
    url: str
    file: str | None
    row: int | None
    status: int | None
    error: str
    attempts: int


@dataclass
class FetchReport:
    requested: int = 0
    already_cached: int = 0
    downloaded: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failures: list[FetchFailure] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self, max_rows: int = 50) -> list[str]:
        out = [
            f"{self.requested} image URLs: {self.already_cached} already cached, {self.downloaded} downloaded "
            f"({self.bytes / 2**20:.1f} MB in {self.seconds:.1f} s), {len(self.failures)} failed"
        ]
        for f in self.failures[:max_rows]:
            where = f"{f.file}, data row {f.row}: " if f.file and f.row else (f"{f.file}: " if f.file else "")
            what = f"HTTP {f.status}" if f.status else "error"
            out.append(
                f"  {where}{f.url}: {what}: {f.error} (after {f.attempts} attempt{'s' if f.attempts > 1 else ''})"
            )
        if len(self.failures) > max_rows:
            out.append(f"  ... and {len(self.failures) - max_rows} more")
        return out


class _Final(Exception):
    def __init__(self, status: int | None, error: str):
        super().__init__(error)
        self.status, self.error = status, error


class _Retry(_Final):
    pass


def _image_problem(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except UnidentifiedImageError:
        return "the body is not an image"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"the body is not a readable image ({exc})"
    return None


class _Fetcher:
    def __init__(self, cache: ImageCache, options: FetchOptions):
        self.cache, self.options = cache, options
        self._hosts: dict[str, threading.Semaphore] = defaultdict(lambda: threading.Semaphore(options.per_host))
        self._lock = threading.Lock()
        self._local = threading.local()

    def _client(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(
                follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=self.options.timeout_s
            )
        return self._local.client

    def _host(self, url: str) -> threading.Semaphore:
        with self._lock:
            return self._hosts[urlsplit(url).netloc.lower()]

    def _once(self, url: str) -> tuple[bytes, str | None]:
        try:
            with self._host(url), self._client().stream("GET", url) as resp:
                if resp.status_code != 200:
                    cls = _Retry if resp.status_code in RETRY_STATUS else _Final
                    raise cls(resp.status_code, resp.reason_phrase or "unexpected status")
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.options.max_bytes:
                        raise _Final(200, f"body larger than {self.options.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), resp.headers.get("content-type")
        except httpx.TooManyRedirects:
            raise _Final(None, f"more than {MAX_REDIRECTS} redirects") from None
        except httpx.TimeoutException as exc:
            raise _Retry(None, f"timed out after {self.options.timeout_s:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retry(None, f"{type(exc).__name__}: {exc}") from None

    def fetch(self, ref: ImageRef) -> tuple[int, FetchFailure | None]:
        """(bytes stored, failure or None)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                data, content_type = self._once(ref.url)
                problem = _image_problem(data)
                if problem:
                    raise _Final(200, f"{problem} (content-type {content_type or 'none'})")
                self.cache.put(ref.url, data, content_type)
                return len(data), None
            except _Final as exc:
                if isinstance(exc, _Retry) and attempts <= self.options.retries:
                    time.sleep(self.options.backoff_s * 2 ** (attempts - 1))
                    continue
                return 0, FetchFailure(ref.url, ref.file, ref.row, exc.status, exc.error, attempts)


def fetch_images(
    refs: Iterable[ImageRef],
    cache: ImageCache,
    options: FetchOptions = FetchOptions(),
    progress: Callable[[int, int], None] | None = None,
) -> FetchReport:
    """Download every URL of ``refs`` that is not cached yet; one entry per distinct URL."""
    options.check()
    start = time.perf_counter()
    unique: dict[str, ImageRef] = {}
    for ref in refs:
        unique.setdefault(ref.url, ref)
    report = FetchReport(requested=len(unique))
    todo = [r for r in unique.values() if cache.lookup(r.url) is None]
    report.already_cached = report.requested - len(todo)
    fetcher = _Fetcher(cache, options)
    done = 0
    with ThreadPoolExecutor(max_workers=min(options.concurrency, max(1, len(todo)))) as pool:
        futures = [pool.submit(fetcher.fetch, r) for r in todo]
        for fut in as_completed(futures):
            size, failure = fut.result()
            done += 1
            if failure is None:
                report.downloaded += 1
                report.bytes += size
            else:
                report.failures.append(failure)
            if progress is not None:
                progress(done, len(todo))
    report.failures.sort(key=lambda f: (f.file or "", f.row or 0, f.url))
    report.seconds = time.perf_counter() - start
    return report
