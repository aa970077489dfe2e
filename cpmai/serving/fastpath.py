"""uvicorn's httptools protocol with a short way for predictions.

Through ASGI, every request costs an asyncio task, message dictionaries, a `receive` and two
`send` coroutines, two socket writes and uvicorn's header checks: about as much as the whole
rest of a one-row prediction. So a POST to this model's `/invocations` or `.../infer` whose
body is declared by Content-Length and small (at most 64 KiB, uvicorn's read buffer) is
answered from the parser's callbacks: the body goes to the same `InferenceApp.predict` the
ASGI path calls (the same checks, batching, metrics, prediction log and answers), and the
answer leaves in one write. Everything else — other routes, chunked or large bodies,
`Expect: 100-continue`, a server over its concurrency limit — takes uvicorn's ASGI path
unchanged.

uvicorn's own machinery is kept: its parser, its request cycle objects (so keep-alive,
pipelined requests in order, `Connection: close`, disconnects and graceful shutdown work as for
any request), its `Date` header. This relies on uvicorn's HttpToolsProtocol internals
(`_start_asgi_task`, `RequestResponseCycle`'s fields); the serving tests exercise each case.
"""

from __future__ import annotations

import time
from asyncio import TimerHandle
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application

    from cpmai.serving.app import InferenceApp, ShortWay


class InferenceHttpProtocol(HttpToolsProtocol):
    """One HTTP connection to a `cpmai serve` process (or an environment's server).

    A client that stalls is cut off: its request's headers must arrive within
    `header_timeout_s` of the connection (or of the request's first byte), its body within
    `body_timeout_s` of the headers; otherwise it gets 408 and the connection is closed. Idle
    time between requests is uvicorn's keep-alive timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app: Any = self.app
        # an InferenceApp (`cpmai serve`) or an EnvironmentApp (a deployed environment)
        self._front: ShortWay | None = app if hasattr(app, "short_way") else None
        self._waiting: tuple[RequestResponseCycle, InferenceApp, str] | None = None
        config = getattr(app, "config", None)
        self._header_s = float(getattr(config, "header_timeout_s", 10.0))
        self._body_s = float(getattr(config, "body_timeout_s", 60.0))
        self._deadline: TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm(self._header_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._header_s)

    def on_headers_complete(self) -> None:
        self._arm(self._body_s)
        super().on_headers_complete()

    def _arm(self, seconds: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(seconds, self._stalled)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _stalled(self) -> None:
        """The client did not finish sending its request in time: 408, then close."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            self.transport.write(_TIMED_OUT)
        if cycle is not None:
            cycle.disconnected = True
        self.transport.close()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """uvicorn starts every request here (pipelined ones when their turn comes)."""
        front = self._front
        if front is not None and app is self.app:  # not the over-the-limit 503 app
            way = _short_way(cycle, front)
            if way is not None:
                slot, endpoint = way
                slot.inflight += 1  # until answered: a version being retired waits for it
                if cycle.more_body:  # the body is still arriving: on_message_complete
                    self._waiting = (cycle, slot, endpoint)
                else:
                    self._predict(cycle, slot, endpoint)
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
        waiting = self._waiting
        if waiting is not None and waiting[0] is self.cycle:
            self._waiting = None
            self._predict(*waiting)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._waiting is not None:
            self._waiting[1].inflight -= 1
            self._waiting = None
        self._disarm()
        super().connection_lost(exc)

    def _predict(self, cycle: RequestResponseCycle, slot: InferenceApp, endpoint: str) -> None:
        scope: Any = cycle.scope

        def reply(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
            slot.inflight -= 1
            _answer(cycle, status, body, headers)

        slot.predict(
            endpoint, scope, dict(scope["headers"]), bytes(cycle.body), time.perf_counter(), reply
        )


_TIMED_OUT_BODY = b'{"error":"the request did not arrive in time"}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


def _short_way(cycle: RequestResponseCycle, front: ShortWay) -> tuple[InferenceApp, str] | None:
    """The version and prediction endpoint, when this request may take the short way."""
    scope: Any = cycle.scope
    if scope["method"] != "POST" or cycle.waiting_for_100_continue:
        return None
    way = front.short_way(scope["path"])
    if way is None:
        return None
    length = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            return None
    if length is None or not length.isdigit():
        return None
    limit = min(HIGH_WATER_LIMIT, way[0].config.max_body_bytes)
    return way if int(length) <= limit else None


def _answer(
    cycle: RequestResponseCycle, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Write the whole response at once and close the cycle as uvicorn's `send` would.

    Flow control is not awaited: the response is one small write, and a client that does not
    read can have at most one more request parsed (uvicorn stops reading while a response is
    pending)."""
    if cycle.disconnected or cycle.response_complete:
        return
    cycle.response_started = True
    parts = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"content-length: %d\r\n" % len(body))
    if not cycle.keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", body)
    cycle.transport.write(b"".join(parts))
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
