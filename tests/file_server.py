"""A tiny HTTP file server on 127.0.0.1 for download tests, with scripted failures."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Files:
    """What the server serves, and how it misbehaves."""

    content: dict[str, bytes] = field(default_factory=dict)
    cut_short: int = 0  # the next N responses send half the body, then close the connection
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve(files: Files) -> Iterator[str]:
    """Serve ``files`` until the block ends; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            files.requests.append(self.path)
            body = files.content.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if files.cut_short > 0:
                files.cut_short -= 1
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
