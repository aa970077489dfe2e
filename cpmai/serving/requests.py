"""One prediction request's pieces: the call it becomes, what its headers say (id, synthetic
origin, probabilities asked), and how a model's refusal becomes the client's 422."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from cpmai.serving import origin
from cpmai.serving.validation import RequestError

if TYPE_CHECKING:
    from cpmai.runtime.signature import Signature

Reply = Callable[[int, bytes, list[tuple[bytes, bytes]]], None]
"""How an answer leaves: status, body, headers (Content-Length is added by the sender)."""

MODEL_ERRORS = (ValueError,)  # what scikit-learn raises for input it cannot score


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


class Call:
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


def as_request_error(exc: BaseException) -> BaseException:
    """The model refusing its input (scikit-learn's ValueError, ONNX Runtime's errors) is the
    client's 422; anything else stays what it is (a bug: 500)."""
    if isinstance(exc, MODEL_ERRORS) or type(exc).__module__.startswith("onnxruntime"):
        return RequestError(422, f"the model could not score this input: {exc}")
    return exc


def headers_of(scope: dict[str, Any]) -> dict[bytes, bytes]:
    return dict(scope["headers"])


def query_flag(scope: dict[str, Any]) -> bool:
    query = scope.get("query_string") or b""
    if not query:
        return False
    values = parse_qs(query.decode("latin-1")).get("probabilities", [])
    return any(v.lower() in ("1", "true", "yes") for v in values)


def wants_probabilities_oip(doc: dict[str, Any]) -> bool:
    params = doc.get("parameters")
    if isinstance(params, dict) and params.get("probabilities") is True:
        return True
    outputs = doc.get("outputs")
    return isinstance(outputs, list) and any(
        isinstance(o, dict) and o.get("name") == "probabilities" for o in outputs
    )


def label_datatype_of(signature: Signature) -> str:
    """The Open Inference Protocol datatype of the prediction: from a classifier's labels."""
    categories = signature.classes
    if not categories:
        return "FP64"
    if all(type(c) is int for c in categories):
        return "INT64"
    if all(type(c) is bool for c in categories):
        return "BOOL"
    if all(isinstance(c, int | float) for c in categories):
        return "FP64"
    return "BYTES"


def origin_of(headers: dict[bytes, bytes]) -> str | None:
    value = headers.get(origin.HEADER_KEY)
    if value is None:  # the usual case: one dict lookup
        return None
    try:
        return origin.parse(value)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None


def origin_or_none(headers: dict[bytes, bytes]) -> str | None:
    """The mark, for a request refused before it was read (one not understood: no source)."""
    try:
        return origin_of(headers)
    except RequestError:
        return ""


def client_id(value: bytes | None) -> str | None:
    """A client's X-Request-Id, if it is a sane one (printable ASCII, at most 200 bytes)."""
    if not value or len(value) > 200 or not value.isascii():
        return None
    text = value.decode()
    return text if text.isprintable() else None


def id_header(request_id: Any) -> bytes:
    text = request_id if isinstance(request_id, str) else orjson.dumps(request_id).decode()
    return text.encode("ascii", "replace")[:200] if text.isprintable() else b"-"


def small_enough(raw: dict[str, list[Any]] | None) -> bool:
    return raw is not None and sum(len(v) for v in raw.values()) <= 10_000


def authorize(headers: dict[bytes, bytes], token: bytes | None, token_sha256: bytes | None) -> None:
    """Refuse (401) a request without the bearer token: `token` itself, or one whose SHA-256
    (hex) is `token_sha256` (a restarted environment keeps only the digest)."""
    given = headers.get(b"authorization", b"")
    if given.startswith(b"Bearer "):
        if token is not None:
            if hmac.compare_digest(given[7:], token):
                return
        elif token_sha256 is not None and hmac.compare_digest(
            hashlib.sha256(given[7:]).hexdigest().encode(), token_sha256
        ):
            return
    raise RequestError(401, "missing or invalid bearer token")


async def read_body(headers: dict[bytes, bytes], receive: Any, limit: int) -> bytes:
    """The whole body from ASGI's `receive`, refused (413) past `limit` bytes, declared or sent;
    ClientGone when the client leaves first."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body of {int(declared):,} bytes; the limit is {limit:,}")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"body larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
