"""The ASGI application: one model, two protocols, metrics, and no 500 for bad input.

A plain ASGI callable rather than a web framework: the request path is the product here, and
every layer costs throughput (the serving benchmark compares it with a bare handler).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import hmac
import itertools
import json
import os
import secrets
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs

import orjson

from cpmai import __version__
from cpmai.serving import origin, protocols
from cpmai.serving.batching import Batch, Batcher, Scored
from cpmai.serving.metrics import CONTENT_TYPE, ServerMetrics
from cpmai.serving.predlog import PredictionLog
from cpmai.serving.validation import RequestError, Validator

if TYPE_CHECKING:
    from collections.abc import Callable

    from cpmai.artifacts import Artifact
    from cpmai.serving.resources import ResourceLog

    Reply = Callable[[int, bytes, list[tuple[bytes, bytes]]], None]
    """How an answer leaves: status, body, headers (Content-Length is added by the sender)."""


class ShortWay(Protocol):
    """What uvicorn's protocol asks an app before answering a POST from the parser's callbacks
    (`cpmai.serving.fastpath`): which version and endpoint would take it, if any."""

    def short_way(self, path: str) -> tuple[InferenceApp, str] | None: ...


CONFIG_ENV = "CPMAI_SERVE_CONFIG"
_JSON = [(b"content-type", b"application/json")]
_MODEL_ERRORS = (ValueError,)  # what scikit-learn raises for input it cannot score


@dataclass
class ServeConfig:
    """Everything a server process needs; passed to uvicorn workers as JSON in the environment."""

    home: str
    name: str
    version: str
    env: str = "default"
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    token: str | None = None
    token_sha256: str | None = None
    """Without `token`: the SHA-256 (hex) of the token to require (a restarted environment's,
    recorded by the local target: the token itself is kept nowhere)."""
    runtime: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    max_batch_rows: int = 64
    max_latency_ms: float = 0.0
    log_sample_rate: float = 1.0
    prediction_log: bool = True
    sample_interval_s: float = 5.0
    """How often the server samples its own CPU and memory (`monitoring.sample_interval_s`)."""
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    """Stalled clients are cut off (`serving.header_timeout_s`, `serving.body_timeout_s`)."""
    threads: int | None = None
    """OpenMP/BLAS threads the model may use in this process (`cpmai.runtime.threads`)."""

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    def for_artifact(self, artifact: Artifact) -> ServeConfig:
        """This config for `artifact`: its version, and batching, logging and body limits from
        the `serving:` section of the manifest packaged with it."""
        manifest = artifact.manifest()
        settings = manifest.serving
        return replace(
            self,
            version=artifact.version,
            max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
            max_batch_rows=settings.max_batch_size,
            max_latency_ms=settings.max_latency_ms,
            log_sample_rate=settings.log_sample_rate,
            sample_interval_s=manifest.monitoring.sample_interval_s,
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            threads=settings.threads or self._cpu_share(manifest),
        )

    def _cpu_share(self, manifest: Any) -> int:
        from cpmai.runtime import threads

        environment = manifest.environments.get(self.env)
        if environment is not None:
            return threads.share(environment.resources.cpu)
        return threads.share(None, self.workers)

    @classmethod
    def from_env(cls) -> ServeConfig:
        return cls(**json.loads(os.environ[CONFIG_ENV]))


def resource_log(config: ServeConfig, version: Callable[[], str | None]) -> ResourceLog | None:
    """The process's resource sampler (started), unless the prediction log is off."""
    if not config.prediction_log:
        return None
    from cpmai.serving.resources import ResourceLog

    log = ResourceLog(
        Path(config.home) / "logs" / config.name / config.env, config.sample_interval_s, version
    )
    log.start()
    return log


def create_app_from_env() -> InferenceApp:
    """uvicorn's factory: verify and load the artifact named in $CPMAI_SERVE_CONFIG."""
    return build_app(ServeConfig.from_env())


def build_app(config: ServeConfig, artifact: Artifact | None = None) -> InferenceApp:
    """Verify and load the artifact (unless `artifact`, already verified, is given); build the
    app.

    Also shortens the interpreter's thread switch interval (5 ms by default) to 0.5 ms, so the
    prediction-log thread can never hold the request path for milliseconds."""
    from cpmai.artifacts import open_artifact
    from cpmai.runtime.predictor import Predictor

    sys.setswitchinterval(0.0005)
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
        self.log = (
            PredictionLog(
                Path(config.home) / "logs" / self.name / config.env,
                model=self.name,
                version=self.version,
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
            on_delivered=None if self.log is None else self._log_batch,
        )
        self._entries: list[tuple[Any, ...]] = []  # the log entries of the batch being answered
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
        self.label_datatype = _label_datatype(predictor.signature)
        self.no_probabilities = f"probabilities were asked for, but {predictor.no_proba_reason}"
        self.metadata = orjson.dumps(self._metadata())
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
        """Start the prediction log's writer and mark the model ready."""
        if self.log is not None:
            self.log.start()
        gc.freeze()  # the model and libraries are long-lived: keep them out of GC scans
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
        except _ClientGone:
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
        call = _Call(endpoint, start, reply, self._request_id(headers))
        try:
            self._authorize(headers)
            call.origin = _origin(headers)
            columns = self._parse(call, scope, headers, body)
        except RequestError as exc:
            if call.origin is None and origin.HEADER_KEY in headers:
                call.origin = _origin_or_none(headers)  # refused before it was read (or bad)
            self._refuse(call, exc)
            return
        except Exception as exc:
            self._crash(call, exc)
            return
        self.batcher.submit_callback(
            columns, call.rows, call.want_proba, functools.partial(self._scored, call)
        )

    def _request_id(self, headers: dict[bytes, bytes]) -> Any:
        return _client_id(headers.get(b"x-request-id")) or f"{self._id_prefix}{next(self._ids)}"

    def _parse(
        self, call: _Call, scope: dict[str, Any], headers: dict[bytes, bytes], body: bytes
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
            call.want_proba = _wants_probabilities_oip(doc)
        else:
            content_type = headers.get(b"content-type", b"application/json").decode()
            call.raw, params = protocols.mlflow_request(body, content_type, self.names, self.kinds)
            call.want_proba = params.get("probabilities") is True or _query_flag(scope)
        if call.want_proba and not self.predictor.has_proba:
            raise RequestError(400, self.no_probabilities)
        columns, call.rows, call.warnings = self.validator.columns(call.raw)
        return columns

    def _scored(self, call: _Call, scored: Scored | None, exc: BaseException | None) -> None:
        """The batcher's answer for one request: reply, count, log."""
        try:
            if exc is not None or scored is None:
                raise _as_request_error(exc or RuntimeError("no outcome"))
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
            return
        except Exception as error:
            self._crash(call, error)
            return
        call.reply(200, payload, [*_JSON, (b"x-request-id", _id_header(call.request_id))])
        elapsed = time.perf_counter() - call.start
        synthetic = call.origin
        self.metrics.observe(
            call.endpoint, 200, elapsed, origin.REAL if synthetic is None else origin.SYNTHETIC
        )
        if call.warnings:
            for warning in call.warnings:
                self.metrics.out_of_range_value(warning.split(":", 1)[0])
        if self.log is not None:  # the log takes the entries with the batch (_log_batch)
            self._entries.append((None, call.start, elapsed, call.endpoint, 200, call.rows,
                                  call.request_id, call.warnings, None, probabilities is not None,
                                  start, synthetic))  # fmt: skip

    def _log_batch(self, batch: Batch) -> None:
        """The batcher's word that all of `batch`'s requests were answered."""
        entries, self._entries = self._entries, []
        if entries and self.log is not None:
            self.log.served(batch, entries)

    def _refuse(self, call: _Call, exc: RequestError) -> None:
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

    def _crash(self, call: _Call, exc: Exception) -> None:
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
        headers = _headers(scope)
        try:
            self._authorize(headers)  # before reading the body: no buffering for strangers
            body = await self._body(headers, receive)
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
                source=_origin_or_none(headers),
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
        if self.token is None and self.token_sha256 is None:
            return
        given = headers.get(b"authorization", b"")
        if given.startswith(b"Bearer "):
            if self.token is not None:
                if hmac.compare_digest(given[7:], self.token):
                    return
            elif self.token_sha256 is not None and hmac.compare_digest(
                hashlib.sha256(given[7:]).hexdigest().encode(), self.token_sha256
            ):
                return
        raise RequestError(401, "missing or invalid bearer token")

    async def _body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {int(declared):,} bytes; the limit is {limit:,}")
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise RequestError(413, f"body larger than the limit of {limit:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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
            headers.append((b"x-request-id", _id_header(request_id)))
        reply(status, body, headers)
        elapsed = time.perf_counter() - start
        self.metrics.observe(endpoint, status, elapsed, origin.label(source))
        if self.log is not None and endpoint in ("infer", "invocations"):
            self.log.record(
                endpoint,
                status,
                elapsed,
                0,
                raw if _small(raw) else None,
                None,
                error=message,
                request_id=request_id,
                origin=source,
            )

    def _metadata(self) -> dict[str, Any]:
        inputs = [
            {
                "name": spec["name"],
                "datatype": protocols.OIP_DATATYPES[spec["type"]],
                "shape": [-1, 1],
            }
            for spec in self.predictor.inputs
        ]
        outputs = [{"name": "prediction", "datatype": self.label_datatype, "shape": [-1]}]
        if self.predictor.has_proba and self.predictor.classes:
            outputs.append(
                {
                    "name": "probabilities",
                    "datatype": "FP64",
                    "shape": [-1, len(self.predictor.classes)],
                }
            )
        platform = "onnxruntime_onnx" if self.predictor.flavor == "onnx" else "sklearn"
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": platform,
            "inputs": inputs,
            "outputs": outputs,
            "parameters": {"classes": self.predictor.classes} if self.predictor.classes else {},
        }


class _ClientGone(Exception):
    """The client disconnected before sending its whole body."""


class _Call:
    """One prediction request, from its body to its answer."""

    __slots__ = (
        "body_id",
        "endpoint",
        "oip",
        "origin",
        "raw",
        "reply",
        "request_id",
        "rows",
        "start",
        "want_proba",
        "warnings",
    )

    def __init__(self, endpoint: str, start: float, reply: Reply, request_id: Any) -> None:
        self.endpoint = endpoint
        self.oip = endpoint == "infer"
        self.start = start
        self.reply = reply
        self.request_id = request_id
        self.raw: dict[str, list[Any]] | None = None
        self.rows = 0
        self.warnings: list[str] | None = None
        self.body_id: Any = None
        self.want_proba = False
        self.origin: str | None = None
        """None for real traffic; the source of synthetic traffic (`cpmai.serving.origin`)."""


def _as_request_error(exc: BaseException) -> BaseException:
    """The model refusing its input (scikit-learn's ValueError, ONNX Runtime's errors) is the
    client's 422; anything else stays what it is (a bug: 500)."""
    if isinstance(exc, _MODEL_ERRORS) or type(exc).__module__.startswith("onnxruntime"):
        return RequestError(422, f"the model could not score this input: {exc}")
    return exc


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


def _headers(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def _query_flag(scope: dict[str, Any]) -> bool:
    query = scope.get("query_string") or b""
    if not query:
        return False
    values = parse_qs(query.decode("latin-1")).get("probabilities", [])
    return any(v.lower() in ("1", "true", "yes") for v in values)


def _wants_probabilities_oip(doc: dict[str, Any]) -> bool:
    params = doc.get("parameters")
    if isinstance(params, dict) and params.get("probabilities") is True:
        return True
    outputs = doc.get("outputs")
    return isinstance(outputs, list) and any(
        isinstance(o, dict) and o.get("name") == "probabilities" for o in outputs
    )


def _label_datatype(signature: dict[str, Any]) -> str:
    first = signature["outputs"][0]
    categories = first.get("categories")
    if not categories:
        return "FP64"
    if all(type(c) is int for c in categories):
        return "INT64"
    if all(type(c) is bool for c in categories):
        return "BOOL"
    if all(isinstance(c, int | float) for c in categories):
        return "FP64"
    return "BYTES"


def _origin(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(origin.HEADER_KEY)
    if value is None:  # the usual case: one dict lookup
        return None
    try:
        return origin.parse(value)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def _origin_or_none(headers: dict[bytes, bytes]) -> str | None:
    """The mark, for a request refused before it was read (one not understood: no source)."""
    try:
        return _origin(headers)
    except RequestError:
        return ""


def _client_id(value: bytes | None) -> str | None:
    """A client's X-Request-Id, if it is a sane one (printable ASCII, at most 200 bytes)."""
    if not value or len(value) > 200 or not value.isascii():
        return None
    text = value.decode()
    return text if text.isprintable() else None


def _id_header(request_id: Any) -> bytes:
    text = request_id if isinstance(request_id, str) else orjson.dumps(request_id).decode()
    return text.encode("ascii", "replace")[:200] if text.isprintable() else b"-"


def _small(raw: dict[str, list[Any]] | None) -> bool:
    return raw is not None and sum(len(v) for v in raw.values()) <= 10_000
