"""An HTTP/1.1 load generator: closed loop (N requests in flight) or open loop (arrivals on a
schedule, constant or Poisson), over keep-alive connections, on uvloop where available.

Latency in the open loop is measured from each request's *intended* send time, so a stall of the
server delays every request scheduled during it and shows in the percentiles (no coordinated
omission); the uncorrected figure (from the actual send) is kept beside it. The generator's own
lag — how late it sent requests that found a connection free — is reported too: when it grows,
the generator, not the server, is the bottleneck.

Responses are parsed by hand (status line, Content-Length or chunked): the request path of the
generator is a handful of bytes operations, callbacks rather than coroutines. `workers` > 1 runs
that many processes, each with its share of the connections (and of the rate), their histograms
merged afterwards.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from cpmai.bench.recorder import LoadResult, Recorder

RECONNECT_S = 0.05


@dataclass
class LoadSpec:
    url: str
    """Base URL: http://host:port."""
    path: str
    bodies: list[bytes]
    """Request bodies, sent in turn."""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1
    """Connections (closed loop: requests in flight)."""
    rate: float | None = None
    """Open loop: requests per second (None: closed loop)."""
    arrival: str = "constant"
    seed: int = 0
    warmup_s: float = 1.0
    duration_s: float = 5.0
    min_requests: int = 0
    max_duration_s: float = 60.0
    """Measurement stops here even if `min_requests` was not reached (the result says so)."""


def request_bytes(spec: LoadSpec) -> list[bytes]:
    """Each body as a complete HTTP/1.1 request."""
    parts = urlsplit(spec.url)
    host = parts.netloc
    extra = "".join(f"{k}: {v}\r\n" for k, v in spec.headers.items())
    return [
        (
            f"POST {spec.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {spec.content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n"
        ).encode()
        + body
        for body in spec.bodies
    ]


_MAX_BUFFER = 64 * 1024 * 1024


def _response_end(buffer: bytes, end: int, status: int) -> int:
    """Where the response whose headers end at `end` ends, or -1 when it is not all here yet."""
    body = end + 4
    if status < 200 or status in (204, 304):
        return body
    head = buffer[:end].lower()
    encoding = _header(head, b"transfer-encoding")
    if encoding is not None and encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
        chunked = True  # RFC 9112: chunked wins over any Content-Length
    else:
        chunked = False
        length = _header(head, b"content-length")
        if length is not None:
            size = int(length)
            if size < 0:
                raise ValueError("negative Content-Length")
            total = body + size
            return total if len(buffer) >= total else -1
    if chunked:
        position = body
        while True:  # walk the chunks: size line, data, CRLF; a zero size ends (trailers after)
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return -1
            size = int(buffer[position:line_end].split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if buffer[line_end : line_end + 4] == b"\r\n\r\n":
                    return line_end + 4
                return -1 if trailer_end < 0 else trailer_end + 4
            position = line_end + 2 + size + 2
            if position > len(buffer):
                return -1
    return body  # no length and not chunked: a body-less answer as far as HTTP/1.1 keep-alive goes


def _header(head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` in a lower-cased header block (None when absent)."""
    mark = head.find(b"\r\n" + name + b":")
    if mark < 0:
        return None
    start = mark + len(name) + 3
    stop = head.find(b"\r\n", start)
    return head[start : stop if stop > 0 else len(head)].strip()


class _Connection(asyncio.Protocol):
    __slots__ = ("buffer", "gen", "intended", "sent", "transport")

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: Any = None
        self.buffer = b""
        self.sent = 0
        self.intended = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gen.connected(self)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while buffer:  # one read may hold several responses (or part of one)
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            try:
                status = int(buffer[9:12])
                total = _response_end(buffer, end, status)
            except ValueError:  # not an HTTP/1.1 response we can read: an error, a new connection
                self.buffer = b""
                self.gen.unreadable(self)
                return
            if total < 0:
                break
            buffer = buffer[total:]
            if self.sent and status >= 200:  # a 1xx (e.g. 103 Early Hints) is not the answer
                self.gen.answered(self, status)
        self.buffer = buffer
        if len(self.buffer) > _MAX_BUFFER:  # not HTTP as we know it: give up on this connection
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self, exc)


class _Generator:
    def __init__(self, spec: LoadSpec, start_ns: int, share: int, workers: int) -> None:
        self.spec = spec
        self.share = share
        self.workers = workers
        self.requests = request_bytes(spec)
        self.next_body = share
        self.start_ns = start_ns
        self.measure_from = start_ns + int(spec.warmup_s * 1e9)
        self.measure_until = self.measure_from + int(spec.duration_s * 1e9)
        self.hard_stop = self.measure_from + int(spec.max_duration_s * 1e9)
        self.min_requests = -(-spec.min_requests // workers)
        self.open_loop = spec.rate is not None
        self.recorder = Recorder(self.measure_from, open_loop=self.open_loop)
        self.result = self.recorder.result
        self.idle: list[_Connection] = []
        self.backlog: deque[int] = deque()
        self.stopping = False
        self.done: asyncio.Future[None] | None = None
        self.open = 0
        self.tasks: list[asyncio.Task[None]] = []
        parts = urlsplit(spec.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.rng = random.Random(spec.seed * 1000 + share)

    # --- connections ---------------------------------------------------------------------------

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            self._error(type(exc).__name__)
            if not self.stopping:
                loop.call_later(RECONNECT_S, self._reconnect)

    def _reconnect(self) -> None:
        if self._finished(time.perf_counter_ns()):  # e.g. a server that refuses every connection
            self._stop()
        else:
            self.tasks.append(asyncio.get_running_loop().create_task(self.connect()))

    def connected(self, conn: _Connection) -> None:
        self.open += 1
        if self.stopping:
            conn.transport.close()
        elif self.open_loop:
            self._free(conn)
        else:
            self._send(conn, time.perf_counter_ns())

    def lost(self, conn: _Connection, exc: Exception | None) -> None:
        self.open -= 1
        if conn in self.idle:
            self.idle.remove(conn)
        elif conn.sent and not self.stopping:
            self._error("ConnectionLost" if exc is None else type(exc).__name__)
        if self.stopping:
            if self.open == 0 and self.done is not None and not self.done.done():
                self.done.set_result(None)
            return
        asyncio.get_running_loop().call_later(RECONNECT_S, self._reconnect)

    # --- requests ------------------------------------------------------------------------------

    def _send(self, conn: _Connection, intended: int) -> None:
        body = self.requests[self.next_body % len(self.requests)]
        self.next_body += 1
        conn.intended = intended
        conn.sent = time.perf_counter_ns()
        conn.transport.write(body)

    def answered(self, conn: _Connection, status: int) -> None:
        now = time.perf_counter_ns()
        if conn.intended >= self.measure_from and not self.stopping:  # after the stop: not counted
            recorder = self.recorder
            recorder.tick(now)
            recorder.samples.append(now - conn.intended)
            if self.open_loop:
                recorder.raw.append(now - conn.sent)
            recorder.outcome(200 <= status < 300, str(status))
        conn.sent = 0
        if self._finished(now):
            self._stop()
            conn.transport.close()
        elif self.open_loop:
            self._free(conn)
        else:
            self._send(conn, now)

    def unreadable(self, conn: _Connection) -> None:
        self._error("UnreadableResponse")
        conn.sent = 0
        conn.transport.close()

    def _error(self, kind: str) -> None:
        now = time.perf_counter_ns()
        if now >= self.measure_from and not self.stopping:
            self.recorder.tick(now)
            self.recorder.outcome(False, kind)

    def _free(self, conn: _Connection) -> None:
        if self.backlog:
            self._send(conn, self.backlog.popleft())
        else:
            self.idle.append(conn)

    def _finished(self, now: int) -> bool:
        if self.stopping:
            return True
        if now >= self.hard_stop:
            return True
        return now >= self.measure_until and self.result.requests >= self.min_requests

    def _stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        # open-loop arrivals still waiting for a connection: reported, not timed
        self.result.not_sent = sum(1 for t in self.backlog if t >= self.measure_from)
        self.backlog.clear()
        self.recorder.fold()
        stopped = min(time.perf_counter_ns(), self.hard_stop)
        self.result.measured_s = max(stopped - self.measure_from, 0) / 1e9
        for conn in list(self.idle):
            conn.transport.close()
        if self.open == 0 and self.done is not None and not self.done.done():
            self.done.set_result(None)

    # --- open loop -----------------------------------------------------------------------------

    def _gap_ns(self) -> int:
        assert self.spec.rate is not None
        mean = 1e9 / self.spec.rate
        if self.spec.arrival == "poisson":
            return max(1, int(self.rng.expovariate(1.0) * mean))
        return max(1, int(mean))

    def schedule(self) -> None:
        loop = asyncio.get_running_loop()
        base_loop, base_ns = loop.time(), time.perf_counter_ns()
        # workers interleave their arrivals rather than all sending at the same instants
        next_due = self.start_ns + int(self.share * 1e9 / (self.spec.rate or 1) / self.workers)

        def fire() -> None:
            nonlocal next_due
            now = time.perf_counter_ns()
            if self._finished(now):
                self._stop()
                return
            while next_due <= now:
                conn = self.idle.pop() if self.idle else None
                if conn is not None:
                    if next_due >= self.measure_from:
                        self.recorder.lags.append(now - next_due)
                    self._send(conn, next_due)
                else:
                    self.backlog.append(next_due)
                next_due += self._gap_ns()
            loop.call_at(base_loop + (next_due - base_ns) / 1e9, fire)

        loop.call_at(base_loop + (next_due - base_ns) / 1e9, fire)

    async def run(self, connections: int) -> LoadResult:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        delay = (self.start_ns - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        self.tasks = [loop.create_task(self.connect()) for _ in range(connections)]
        if self.open_loop:
            self.schedule()
        watchdog = (self.hard_stop - time.perf_counter_ns()) / 1e9 + 5
        try:
            await asyncio.wait_for(asyncio.shield(self.done), timeout=max(watchdog, 1))
        except TimeoutError:
            self._stop()
        return self.result


def _run_in_this_process(
    spec: LoadSpec, start_ns: int, share: int, workers: int, connections: int
) -> LoadResult:
    generator = _Generator(spec, start_ns, share, workers)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it installs
        return asyncio.run(generator.run(connections))
    return uvloop.run(generator.run(connections))


def _worker(args: tuple[LoadSpec, int, int, int, int]) -> dict[str, Any]:
    return _run_in_this_process(*args).to_wire()


def run_load(spec: LoadSpec, workers: int = 1) -> LoadResult:
    """Drive `spec` with `workers` processes (never more than connections); returns the merged
    result. Workers are spawned, not forked: the parent runs threads (the resource sampler)."""
    workers = max(1, min(workers, spec.concurrency))
    if workers == 1:
        start_ns = time.perf_counter_ns() + int(0.3e9)
        return _run_in_this_process(spec, start_ns, 0, 1, spec.concurrency)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    shares = [spec.concurrency // workers + (1 if i < spec.concurrency % workers else 0)
              for i in range(workers)]  # fmt: skip
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm, range(workers)))  # the workers have started and imported
        start_ns = time.perf_counter_ns() + int(0.3e9)  # every worker starts on the same instant
        specs = []
        for i, connections in enumerate(shares):
            part = replace(spec, rate=None if spec.rate is None else spec.rate / workers)
            specs.append((part, start_ns, i, workers, connections))
        parts = [LoadResult.from_wire(w) for w in pool.map(_worker, specs)]
    merged = parts[0]
    for other in parts[1:]:
        merged.merge(other)
    return merged


def _warm(_: int) -> int:
    time.sleep(0.2)  # long enough that every process of the pool takes one of these
    return os.getpid()
