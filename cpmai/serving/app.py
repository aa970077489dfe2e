"""The ASGI application: one model, two protocols, metrics, and no 500 for bad input.

A plain ASGI callable rather than a web framework: the request path is the product here, and
every layer costs throughput (the serving benchmark compares it with a bare handler).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from cpmai import __version__
from cpmai.home import Home
from cpmai.predlog.entry import Entry
from cpmai.predlog.writer import PredictionLog
from cpmai.serving import origin, protocols
from cpmai.serving.batching import Batcher, Scored
from cpmai.serving.config import ServeConfig, resource_log
from cpmai.serving.metrics import CONTENT_TYPE, ServerMetrics
from cpmai.serving.requests import (
    Call,
    ClientGone,
    as_request_error,
    authorize,
    client_id,
    headers_of,
    id_header,
    label_datatype_of,
    origin_of,
    origin_or_none,
    query_flag,
    read_body,
    small_enough,
    wants_probabilities_oip,
)
from cpmai.serving.validation import RequestError, Validator

if TYPE_CHECKING:
    from cpmai.artifacts import Artifact
    from cpmai.serving.requests import Reply
    from cpmai.serving.resources import ResourceLog


class ShortWay(Protocol):
    """What uvicorn's protocol asks an app before answering a POST from the parser's callbacks
    (`cpmai.serving.fastpath`): which version and endpoint would take it, if any."""

    def short_way(self, path: str) -> tuple[InferenceApp, str] | None: ...


_JSON = [(b"content-type", b"application/json")]


def create_app_from_env() -> InferenceApp:
    """uvicorn's factory, in each worker process: verify and load the artifact named in
    $CPMAI_SERVE_CONFIG, then tune the process for serving (`cpmai.serving.server`)."""
    from cpmai.serving.server import tune_process

    app = build_app(ServeConfig.from_env())
    tune_process()
    return app


def build_app(config: ServeConfig, artifact: Artifact | None = None) -> InferenceApp:
    """Verify and load the artifact (unless `artifact`, already verified, is given); build the
    app. The process that serves it is tuned where it starts (`cpmai.serving.server`)."""
    from cpmai.artifacts import open_artifact
    from cpmai.runtime.predictor import Predictor

    if config.threads is not None:
        from cpmai.runtime import threads

        threads.limit(config.threads)
    if artifact is None:
        artifact = open_artifact(Path(config.home), config.name, config.version)
    predictor = Predictor.from_artifact(artifact, runtime=config.runtime)
    return InferenceApp(predictor, config)


class InferenceApp:
    def __init__(self, predictor: Any, config: ServeConfig) -> None:
        self.predictor = predictor
        self.config = config
        self.name, self.version = config.name, config.version
        self.validator = Validator(predictor.inputs)
        self.names = self.validator.names
        self.kinds = self.validator.kinds
        self.metrics = ServerMetrics(self.name, self.version, predictor.flavor)
        if config.home:  # the watcher's gauges of this environment, appended to /metrics
            self.metrics.add_gauges(Home(Path(config.home)).env(self.name, config.env).gauges)
        self.log = (
            PredictionLog(
                Home(Path(config.home)).env(self.name, config.env).logs,
                model=self.name,
                version=self.version,
                mode="loop",  # started on the event loop that serves (`start`)
                sample_rate=config.log_sample_rate,
                signature=predictor.signature,
            )
            if config.prediction_log
            else None
        )
        if self.log is not None:
            log = self.log
            self.metrics.log_dropped = lambda: log.dropped
        self.batcher = Batcher(
            predictor.run,
            max_rows=config.max_batch_rows,
            max_latency_s=config.max_latency_ms / 1000,
            inline=predictor.flavor == "onnx",
            on_batch=self.metrics.observe_batch,
            log=None if self.log is None else self.log.served,
        )
        models = f"/v2/models/{self.name}"
        infer = (f"{models}/infer", f"{models}/versions/{self.version}/infer")
        self._infer_paths = frozenset(infer)
        self.token = config.token.encode() if config.token else None
        self.token_sha256 = None if self.token else (config.token_sha256 or "").encode() or None
        self._ids = itertools.count(1)
        self._id_prefix = f"{secrets.token_hex(4)}-"
        self.resources: ResourceLog | None = None
        self.ready = False
        self.inflight = 0
        """Requests taken and not yet answered (an environment drains a retired version)."""
        self.label_datatype = label_datatype_of(predictor.signature)
        self.no_probabilities = f"probabilities were asked for, but {predictor.no_proba_reason}"
        self.metadata = orjson.dumps(
            protocols.model_metadata(self.name, self.version, predictor, self.label_datatype)
        )
        self.server_doc = orjson.dumps(
            {"name": "cpmai", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    # --- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start()
                self.resources = resource_log(self.config, lambda: self.version)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.close()
                if self.resources is not None:
                    self.resources.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        """Start the prediction log's writer (on the running event loop) and mark the model
        ready."""
        if self.log is not None:
            self.log.start()
        self.ready = True

    def close(self) -> None:
        """Not ready any more; flush the prediction log and stop the model thread."""
        self.ready = False
        if self.log is not None:
            self.log.close()
        self.batcher.close()

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path == "/invocations":
                await self._predict(scope, receive, send, "invocations", start)
                return
            if path.startswith("/v2/models/"):
                await self._models(path, method, scope, receive, send, start)
                return
            simple = _SIMPLE.get(path)
            if simple is None:
                await self._error(send, "other", 404, f"no route for {path}", start, oip=True)
                return
            if method not in ("GET", "HEAD"):
                await self._error(
                    send, simple, 405, f"{path} answers GET", start, oip=True, allow=b"GET"
                )
                return
            await self._simple(simple, send, start)
        except ClientGone:
            return

    async def _simple(self, endpoint: str, send: Any, start: float) -> None:
        if endpoint == "metrics":
            await _respond(
                send, 200, self.metrics.render(), [(b"content-type", CONTENT_TYPE.encode())]
            )
        elif endpoint == "server":
            await _respond(send, 200, self.server_doc)
        elif endpoint == "version":
            await _respond(
                send,
                200,
                orjson.dumps({"cpmai": __version__, "model": self.name, "version": self.version}),
            )
        elif endpoint == "live":
            await _respond(send, 200, b'{"live":true}')
        else:  # ready, ping, health
            status = 200 if self.ready else 503
            await _respond(send, status, b'{"ready":true}' if self.ready else b'{"ready":false}')
        self.metrics.observe(endpoint, 200, time.perf_counter() - start)

    async def _models(
        self, path: str, method: str, scope: dict[str, Any], receive: Any, send: Any, start: float
    ) -> None:
        parts = path.split("/")[3:]  # ["", "v2", "models", name, ...]
        name, rest = parts[0], parts[1:]
        if rest[:1] == ["versions"]:
            if len(rest) < 2:
                await self._error(send, "other", 404, "no version given", start, oip=True)
                return
            if rest[1] != self.version:
                await self._error(
                    send,
                    "other",
                    404,
                    f"model {name!r} has no version {rest[1]!r} here (serving {self.version})",
                    start,
                    oip=True,
                )
                return
            rest = rest[2:]
        if name != self.name:
            await self._error(
                send,
                "other",
                404,
                f"model {name!r} not found (serving {self.name!r})",
                start,
                oip=True,
            )
            return
        action = rest[0] if rest else ""
        if len(rest) > 1 or action not in ("", "ready", "infer"):
            await self._error(send, "other", 404, f"no route for {path}", start, oip=True)
            return
        if action == "infer":
            if method != "POST":
                await self._error(
                    send, "infer", 405, "infer answers POST", start, oip=True, allow=b"POST"
                )
                return
            await self._predict(scope, receive, send, "infer", start)
            return
        if method not in ("GET", "HEAD"):
            await self._error(
                send, "metadata", 405, f"{path} answers GET", start, oip=True, allow=b"GET"
            )
            return
        if action == "ready":
            body = orjson.dumps({"name": self.name, "ready": self.ready})
            await _respond(send, 200 if self.ready else 503, body)
            self.metrics.observe("ready", 200, time.perf_counter() - start)
            return
        await _respond(send, 200, self.metadata)
        self.metrics.observe("metadata", 200, time.perf_counter() - start)

    # --- predictions -----------------------------------------------------------------------

    def short_way(self, path: str) -> tuple[InferenceApp, str] | None:
        """This app and the endpoint, when a POST to `path` asks for predictions."""
        endpoint = self.prediction_endpoint(path)
        return None if endpoint is None else (self, endpoint)

    def prediction_endpoint(self, path: str) -> str | None:
        """The endpoint, "invocations" or "infer", when a POST to `path` asks for predictions."""
        if path == "/invocations":
            return "invocations"
        return "infer" if path in self._infer_paths else None

    def predict(
        self,
        endpoint: str,
        scope: dict[str, Any],
        headers: dict[bytes, bytes],
        body: bytes,
        start: float,
        reply: Reply,
    ) -> None:
        """Answer one prediction request whose body has arrived: check, parse, validate, queue
        for the model. `reply(status, body, headers)` is called exactly once, on the event
        loop's thread: now for a refused request, after the model call otherwise. Then the
        request is counted in the metrics and recorded in the prediction log. Never raises.

        The one request path of both ways in: the ASGI app below, and uvicorn's HTTP protocol
        taking the short way (`cpmai.serving.fastpath`)."""
        call = Call(endpoint, start, reply, self._request_id(headers))
        try:
            self._authorize(headers)
            call.origin = origin_of(headers)
            columns = self._parse(call, scope, headers, body)
        except RequestError as exc:
            if call.origin is None and origin.HEADER_KEY in headers:
                call.origin = origin_or_none(headers)  # refused before it was read (or bad)
            self._refuse(call, exc)
            return
        except Exception as exc:
            self._crash(call, exc)
            return
        self.batcher.submit_callback(
            columns, call.rows, call.want_proba, functools.partial(self._scored, call)
        )

    def _request_id(self, headers: dict[bytes, bytes]) -> Any:
        return client_id(headers.get(b"x-request-id")) or f"{self._id_prefix}{next(self._ids)}"

    def _parse(
        self, call: Call, scope: dict[str, Any], headers: dict[bytes, bytes], body: bytes
    ) -> dict[str, list[Any]]:
        if call.oip:
            doc, call.raw = protocols.oip_request(
                body,
                headers.get(b"inference-header-content-length", b"").decode() or None,
                self.names,
                self.kinds,
            )
            call.body_id = doc.get("id")
            if call.body_id is not None:
                call.request_id = call.body_id
            call.want_proba = wants_probabilities_oip(doc)
        else:
            content_type = headers.get(b"content-type", b"application/json").decode()
            call.raw, params = protocols.mlflow_request(body, content_type, self.names, self.kinds)
            call.want_proba = params.get("probabilities") is True or query_flag(scope)
        if call.want_proba and not self.predictor.has_proba:
            raise RequestError(400, self.no_probabilities)
        columns, call.rows, call.warnings = self.validator.columns(call.raw)
        return columns

    def _scored(self, call: Call, scored: Scored | None, exc: BaseException | None) -> Entry | None:
        """The batcher's answer for one request: reply, count; returns its log entry (the
        batcher hands it to the log with the batch), or None: refused, or no log."""
        try:
            if exc is not None or scored is None:
                raise as_request_error(exc or RuntimeError("no outcome"))
            batch, start = scored
            _, label_array, probabilities = batch
            if not call.want_proba:
                probabilities = None
            end = start + call.rows
            if start or end != len(label_array):  # numpy slices cost thousands of instructions
                label_array = label_array[start:end]
                if probabilities is not None:
                    probabilities = probabilities[start:end]
            labels = label_array.tolist()
            probs_list = None if probabilities is None else probabilities.tolist()
            if call.oip:
                payload = protocols.oip_response(
                    self.name, self.version, call.body_id, labels, self.label_datatype, probs_list
                )
            else:
                doc_out: dict[str, Any] = {"predictions": labels}
                if probs_list is not None:
                    doc_out["probabilities"] = probs_list
                    doc_out["classes"] = self.predictor.classes
                payload = orjson.dumps(doc_out)
        except RequestError as error:
            self._refuse(call, error)
            return None
        except Exception as error:
            self._crash(call, error)
            return None
        call.reply(200, payload, [*_JSON, (b"x-request-id", id_header(call.request_id))])
        elapsed = time.perf_counter() - call.start
        synthetic = call.origin
        self.metrics.observe(
            call.endpoint, 200, elapsed, origin.REAL if synthetic is None else origin.SYNTHETIC
        )
        if call.warnings:
            for warning in call.warnings:
                self.metrics.out_of_range_value(warning.split(":", 1)[0])
        if self.log is None:
            return None
        return (None, call.start, elapsed, call.endpoint, 200, call.rows, call.request_id,
                call.warnings, None, probabilities is not None, start, synthetic)  # fmt: skip

    def _refuse(self, call: Call, exc: RequestError) -> None:
        self._error_reply(
            call.reply,
            call.endpoint,
            exc.status,
            exc.message,
            call.start,
            oip=call.oip,
            raw=call.raw,
            request_id=call.request_id,
            extra=[(b"www-authenticate", b"Bearer")] if exc.status == 401 else None,
            source=call.origin,
        )

    def _crash(self, call: Call, exc: Exception) -> None:
        """A bug in cpmai: answer 500, say why on stderr, keep serving."""
        traceback.print_exception(exc, file=sys.stderr)
        self._error_reply(
            call.reply,
            call.endpoint,
            500,
            f"internal error: {type(exc).__name__}",
            call.start,
            oip=call.oip,
            raw=call.raw,
            request_id=call.request_id,
            source=call.origin,
        )

    async def _predict(
        self, scope: dict[str, Any], receive: Any, send: Any, endpoint: str, start: float
    ) -> None:
        oip = endpoint == "infer"
        if scope["method"] != "POST":
            await self._error(
                send, endpoint, 405, f"{scope['path']} answers POST", start, oip=oip, allow=b"POST"
            )
            return
        headers = headers_of(scope)
        try:
            self._authorize(headers)  # before reading the body: no buffering for strangers
            body = await read_body(headers, receive, self.config.max_body_bytes)
        except RequestError as exc:
            await self._error(
                send,
                endpoint,
                exc.status,
                exc.message,
                start,
                oip=oip,
                request_id=self._request_id(headers),
                extra=[(b"www-authenticate", b"Bearer")] if exc.status == 401 else None,
                source=origin_or_none(headers),
            )
            return
        answer: asyncio.Future[tuple[int, bytes, list[tuple[bytes, bytes]]]] = (
            asyncio.get_running_loop().create_future()
        )

        def reply(status: int, payload: bytes, extra: list[tuple[bytes, bytes]]) -> None:
            if not answer.done():
                answer.set_result((status, payload, extra))

        self.predict(endpoint, scope, headers, body, start, reply)
        await _respond(send, *(await answer))

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        if self.token is not None or self.token_sha256 is not None:
            authorize(headers, self.token, self.token_sha256)

    async def _error(
        self,
        send: Any,
        endpoint: str,
        status: int,
        message: str,
        start: float,
        **details: Any,
    ) -> None:
        answers: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self._error_reply(
            lambda *answer: answers.append(answer), endpoint, status, message, start, **details
        )
        await _respond(send, *answers[0])

    def _error_reply(
        self,
        reply: Reply,
        endpoint: str,
        status: int,
        message: str,
        start: float,
        *,
        oip: bool,
        raw: dict[str, list[Any]] | None = None,
        request_id: Any = None,
        allow: bytes | None = None,
        extra: list[tuple[bytes, bytes]] | None = None,
        source: str | None = None,
    ) -> None:
        """`source`: the request's synthetic-traffic mark (`cpmai.serving.origin`), if any."""
        if oip:
            body = orjson.dumps({"error": message})
        else:
            code = "BAD_REQUEST" if status in (400, 413) else "INVALID_PARAMETER_VALUE"
            body = orjson.dumps({"error_code": code, "message": message})
        headers = _JSON + list(extra or [])
        if allow is not None:
            headers.append((b"allow", allow))
        if request_id is not None:
            headers.append((b"x-request-id", id_header(request_id)))
        reply(status, body, headers)
        elapsed = time.perf_counter() - start
        self.metrics.observe(endpoint, status, elapsed, origin.label(source))
        if self.log is not None and endpoint in ("infer", "invocations"):
            self.log.record(
                endpoint,
                status,
                elapsed,
                0,
                raw if small_enough(raw) else None,
                None,
                error=message,
                request_id=request_id,
                origin=source,
            )


_SIMPLE = {
    "/v2/health/live": "live",
    "/v2/health/ready": "ready",
    "/v2": "server",
    "/ping": "ping",
    "/health": "health",
    "/version": "version",
    "/metrics": "metrics",
}


async def _respond(
    send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*(headers or _JSON), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
