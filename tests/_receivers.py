"""An HTTP receiver on 127.0.0.1 that keeps every POST (path, headers, body) and answers
`status`: the webhook end of the alert tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    port: int
    status: int = 200
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in list(self.got)]


@contextmanager
def receivers() -> Iterator[Callable[[int], Receiver]]:
    """Starts receivers (port 0: any free one); every one is stopped on leaving."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(port: int = 0) -> Receiver:
        record = Receiver(port)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                record.got.append((self.path, dict(self.headers.items()), body))
                self.send_response(record.status)
                if 300 <= record.status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        record.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        servers.append((server, thread))
        return record

    try:
        yield start
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
