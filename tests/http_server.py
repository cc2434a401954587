"""A real HTTP file server on 127.0.0.1 for download tests, with scripted misbehaviour per path.

Use it as a context manager: `server.add(path, body, drop_first=1)` returns the file's URL, and
`server.ranges(path)` lists the Range header of each request the server saw for it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RANGE_REQUEST = re.compile(r"bytes=(\d+)-")
POLL_INTERVAL_S = 0.05


@dataclass
class Route:
    """One served file and how the server misbehaves on it; counters count down per request."""

    body: bytes
    status: int | None = None  # answer this error status instead of the file
    fail_first: int = 0  # answer 500 to this many requests first
    drop_first: int = 0  # promise the whole length, send half, close the socket
    stall_first: int = 0  # promise the whole length, send half, then go silent for stall_s
    stall_s: float = 0.0
    ignore_range: bool = False  # always answer 200 with the whole body


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    path: str
    query: str
    range: str | None


class FileServer:
    """A ThreadingHTTPServer on an ephemeral port that serves `Route`s and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.file_server = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL_S}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, path: str, body: bytes, **behaviour: object) -> str:
        """Serve `body` at `path` (with Route's misbehaviour options); return its URL."""
        self.routes[path] = Route(body, **behaviour)  # type: ignore[arg-type]
        return self.base_url + path

    def hits_for(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of each request for `path`, in order (None when absent)."""
        return [hit.range for hit in self.hits_for(path)]

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class _Handler(BaseHTTPRequestHandler):
    server_version = "DepthContrastTestServer/1"

    def do_GET(self) -> None:
        files: FileServer = self.server.file_server  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        range_header = self.headers.get("Range")
        with files.lock:
            files.hits.append(Hit(parts.path, parts.query, range_header))
            route = files.routes.get(parts.path)
            action = _next_action(route)
        if route is None:
            self.send_error(404)
            return
        if action == "fail":
            self.send_error(route.status or 500)
            return
        start = _range_start(range_header) if not route.ignore_range else None
        if start is not None and start >= len(route.body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(route.body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = route.body[start or 0 :]
        self.send_response(200 if start is None else 206)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(route.body) - 1}/{len(route.body)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if action == "send":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if action == "stall":
            time.sleep(route.stall_s)
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have hung up already
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


def _next_action(route: Route | None) -> str:
    """What to do with this request ('fail', 'drop', 'stall', 'send'); counts the scripted failures down."""
    if route is None:
        return "missing"
    if route.status is not None:
        return "fail"
    if route.fail_first:
        route.fail_first -= 1
        return "fail"
    if route.drop_first:
        route.drop_first -= 1
        return "drop"
    if route.stall_first:
        route.stall_first -= 1
        return "stall"
    return "send"


def _range_start(header: str | None) -> int | None:
    match = RANGE_REQUEST.fullmatch(header.strip()) if header else None
    return int(match.group(1)) if match else None
