"""The image download step against a local HTTP server on 127.0.0.1 started by the test:
good images, a 404, a slow response past the timeout, a non-image body, a redirect, a
flaky 503, and a per-host concurrency limit."""

from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from pipeline.data.fetch import FetchOptions, ImageRef, fetch_images
from pipeline.data.image_cache import ImageCache


def _jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="JPEG")
    return buf.getvalue()


RED, BLUE = _jpeg((255, 0, 0)), _jpeg((0, 0, 255))


class Server:
    def __init__(self):
        self.hits: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with state.lock:
                    state.hits[self.path] = state.hits.get(self.path, 0) + 1
                    state.active += 1
                    state.max_active = max(state.max_active, state.active)
                    hit = state.hits[self.path]
                try:
                    state.route(self, hit)
                finally:
                    with state.lock:
                        state.active -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _send(h, status, body=b"", ctype="image/jpeg", headers=()):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def route(self, h, hit):
        path = h.path
        if path.startswith("/good/"):
            self._send(h, 200, RED if path.endswith("red.jpg") else BLUE)
        elif path.startswith("/same/"):
            self._send(h, 200, RED)
        elif path == "/missing.jpg":
            self._send(h, 404, b"not found", "text/plain")
        elif path == "/slow.jpg":
            time.sleep(1.5)
            self._send(h, 200, RED)
        elif path == "/page.jpg":
            self._send(h, 200, b"<html>sign in</html>", "text/html")
        elif path == "/moved.jpg":
            self._send(h, 302, b"", "text/plain", [("Location", "/good/blue.jpg")])
        elif path == "/flaky.jpg":
            self._send(h, 503, b"busy", "text/plain") if hit == 1 else self._send(h, 200, BLUE)
        elif path.startswith("/slowish/"):
            time.sleep(0.2)
            self._send(h, 200, _jpeg((int(path[-5]) * 20, 0, 0)))
        else:
            self._send(h, 500, b"?", "text/plain")

    def close(self):
        self.httpd.shutdown()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


FAST = FetchOptions(concurrency=4, per_host=4, timeout_s=0.5, retries=1, backoff_s=0.01)


def test_good_bad_slow_redirect_and_flaky(server, tmp_path):
    cache = ImageCache(tmp_path / "cache")
    refs = [
        ImageRef(f"{server.url}/good/red.jpg", "items.csv", 1),
        ImageRef(f"{server.url}/missing.jpg", "items.csv", 2),
        ImageRef(f"{server.url}/slow.jpg", "items.csv", 3),
        ImageRef(f"{server.url}/page.jpg", "items.csv", 4),
        ImageRef(f"{server.url}/moved.jpg", "items.csv", 5),
        ImageRef(f"{server.url}/flaky.jpg", "items.csv", 6),
        ImageRef(f"{server.url}/good/red.jpg", "items.csv", 7),  # the same URL again: fetched once
    ]
    report = fetch_images(refs, cache, FAST)
    assert report.requested == 6 and report.downloaded == 3 and report.already_cached == 0
    failures = {f.row: f for f in report.failures}
    assert sorted(failures) == [2, 3, 4]
    assert failures[2].status == 404 and failures[2].attempts == 1  # a 404 is final at once
    assert failures[3].status is None and "timed out after 0.5 s" in failures[3].error and failures[3].attempts == 2
    assert failures[4].status == 200 and "not an image" in failures[4].error and "text/html" in failures[4].error
    assert server.hits["/flaky.jpg"] == 2  # the 503 was retried
    assert (
        cache.lookup(f"{server.url}/moved.jpg").path.read_bytes() == BLUE
    )  # the redirect's target, under the URL asked for
    assert cache.lookup(f"{server.url}/good/red.jpg").path.read_bytes() == RED
    assert cache.lookup(f"{server.url}/missing.jpg") is None
    text = "\n".join(report.lines())
    assert f"items.csv, data row 2: {server.url}/missing.jpg: HTTP 404" in text
    assert "6 image URLs: 0 already cached, 3 downloaded" in text

    again = fetch_images(refs, cache, FAST)  # the cached ones are not requested again
    assert again.already_cached == 3 and again.downloaded == 0
    assert server.hits["/good/red.jpg"] == 1 and server.hits["/moved.jpg"] == 1


def test_cache_is_content_addressed_and_hosts_are_limited(server, tmp_path):
    cache = ImageCache(tmp_path / "cache")
    report = fetch_images([ImageRef(f"{server.url}/same/{i}.jpg") for i in range(3)], cache, FAST)
    assert report.downloaded == 3
    blobs = [p for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == 1  # three URLs, one picture

    limited = FetchOptions(concurrency=8, per_host=2, timeout_s=5, retries=0)
    report = fetch_images([ImageRef(f"{server.url}/slowish/{i}.jpg") for i in range(8)], cache, limited)
    assert report.downloaded == 8
    assert server.max_active <= 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (FetchOptions(concurrency=0), "--concurrency must be at least 1"),
        (FetchOptions(per_host=0), "--per-host must be at least 1"),
        (FetchOptions(timeout_s=0), "--timeout must be > 0"),
        (FetchOptions(retries=-1), "--retries must be >= 0"),
    ],
)
def test_bad_options_are_refused_by_flag(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        fetch_images([ImageRef("http://127.0.0.1:9/x.jpg")], ImageCache(tmp_path), options)
