"""A real (tiny) HTTP server that answers from a script: for tests of the Python client."""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from typing import Any


class Script:
    """What the server answers, one entry per request: (status, content type, body, headers).
    With no entry left it answers ``200 {"result": 1}``. ``requests`` records (path, headers)."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()


@contextlib.contextmanager
def scripted_server() -> Iterator[tuple[str, Script]]:
    """``(base URL, script)`` of a server on a free port, stopped on exit."""
    script = Script()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            self.rfile.read(length)
            with script.lock:
                script.requests.append((self.path, dict(self.headers)))
                default = (200, "application/json", b'{"result":1}')
                answer = script.answers.pop(0) if script.answers else default
            status, ctype, body = answer[:3]
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            for name, value in (answer[3] if len(answer) > 3 else {}).items():  # type: ignore[misc]
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
