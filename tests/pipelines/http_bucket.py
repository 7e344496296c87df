"""A mock bucket: a folder served over HTTP on 127.0.0.1, like public object storage.

It answers GET and HEAD with byte ranges (``Range: bytes=a-b``, 206) and, like a bucket's public
HTTP endpoint, gives no folder listings; every request is logged so tests can see what was
fetched. Python's own ``SimpleHTTPRequestHandler`` serves files but ignores ``Range``, which is
why the handler below is written out.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Bucket:
    """A running mock bucket: its base URL and the requests it answered."""

    url: str
    root: Path
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, bytes sent)

    def bytes_sent(self, name: str) -> int:
        """The body bytes sent for one object (a path below the root)."""
        return sum(n for _, path, n in self.log if path.endswith(name))


@contextmanager
def serve(root: Path) -> Iterator[Bucket]:
    """Serve ``root`` on 127.0.0.1 (a free port) until the block ends."""
    bucket = Bucket("", root)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _target(self) -> Path | None:
            path = (root / self.path.split("?", 1)[0].lstrip("/")).resolve()
            inside = path == root.resolve() or root.resolve() in path.parents
            return path if inside and path.is_file() else None

        def do_HEAD(self) -> None:  # noqa: N802 - the http.server protocol
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = self._target()
            if path is None:
                self.send_error(404)
                bucket.log.append((self.command, self.path, 0))
                return
            data = path.read_bytes()
            start, end = 0, len(data) - 1
            match = _RANGE.match(self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
                end = min(int(match.group(2) or end), len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            sent = data[start : end + 1] if body else b""
            self.wfile.write(sent)
            bucket.log.append((self.command, self.path, len(sent)))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    bucket.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield bucket
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
