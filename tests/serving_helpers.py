"""A real `cpmai serve` process on 127.0.0.1 for tests, and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """`cpmai serve REF` as a subprocess; stops by itself (SIGTERM, then SIGKILL) on close."""

    def __init__(
        self,
        home: Path,
        ref: str,
        *extra: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> None:
        self.port = free_port()
        self.home = home
        full_env = {**os.environ, "CPMAI_HOME": str(home), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cpmai", "serve", ref, "--port", str(self.port), *extra],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"server exited {self.proc.returncode}: {err}{out}")
            try:
                if self.get("/v2/health/ready").status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("server did not become ready in time")
            time.sleep(0.1)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, response.read(), dict(response.getheaders()))
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post_json(self, path: str, doc: Any, headers: dict[str, str] | None = None) -> Reply:
        return self.request(
            "POST", path, json.dumps(doc), {"Content-Type": "application/json", **(headers or {})}
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.communicate()
        return int(self.proc.returncode)

    def close(self) -> None:
        self.stop()
