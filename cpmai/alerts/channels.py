"""One attempt to deliver an alert through one channel (webhook, command, email, file).

`send` tries once and raises `DeliveryError` with a short reason when the channel did not take
the message; retrying is the outbox's business (`cpmai.alerts.outbox`). A reason, like a
`describe` text, never holds a secret: no signing secret, no SMTP password, no URL query
string or user info.

Webhook signatures mirror MLflow's webhooks (`X-MLflow-Signature`), under cpmai's names:

    X-Cpmai-Delivery-Id: the message's id (the same on every retry: receivers dedupe on it)
    X-Cpmai-Timestamp:   unix seconds when the attempt was made
    X-Cpmai-Signature:   v1,<base64 HMAC-SHA256(secret, f"{delivery_id}.{timestamp}.{body}")>

`body` is the exact bytes of the request body (UTF-8 JSON). A receiver recomputes the HMAC
(`verify_signature`), compares in constant time, and should refuse old timestamps (replays).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cpmai.manifest_watch import (
    Channel,
    CommandChannel,
    EmailChannel,
    FileChannel,
    WebhookChannel,
)

if TYPE_CHECKING:
    import urllib.request
    from email.message import Message
    from typing import IO

    from cpmai.alerts.message import AlertMessage

SIGNATURE_VERSION: Final = "v1"
SIGNATURE_HEADER: Final = "X-Cpmai-Signature"
DELIVERY_ID_HEADER: Final = "X-Cpmai-Delivery-Id"
TIMESTAMP_HEADER: Final = "X-Cpmai-Timestamp"
REASON_MAX: Final = 200
"""Reasons and quoted stderr lines are cut to this many characters."""
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class DeliveryError(Exception):
    """One attempt through one channel failed; `reason` says why, briefly and without secrets."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def body_of(message: AlertMessage) -> bytes:
    """The message as every channel sends it: compact UTF-8 JSON of `message.to_json()`."""
    return json.dumps(message.to_json(), ensure_ascii=False, separators=(",", ":")).encode()


def describe(channel: Channel) -> str:
    """A channel in a few words, safe to record and show (identifies it in the outbox too)."""
    if isinstance(channel, WebhookChannel):
        shown = channel.url if channel.url.startswith("env:") else _public_url(channel.url)
        return f"webhook {shown}"
    if isinstance(channel, CommandChannel):  # its program only: arguments may hold tokens
        words = channel.command.split()
        return f"command {words[0][:60]}{' …' if len(words) > 1 else ''}"
    if isinstance(channel, EmailChannel):
        return f"email to {', '.join(channel.to)} via {channel.smtp}"
    return f"file {channel.path}"


def send(channel: Channel, message: AlertMessage, *, base_dir: Path) -> None:
    """Make ONE attempt to deliver `message` through `channel`; `base_dir` (the manifest's
    folder) is where commands run and relative file paths start. Raises `DeliveryError`."""
    if isinstance(channel, WebhookChannel):
        _send_webhook(channel, message)
    elif isinstance(channel, CommandChannel):
        _run_command(channel, message, base_dir)
    elif isinstance(channel, EmailChannel):
        _send_email(channel, message)
    else:
        _append_file(channel, message, base_dir)


# --- webhook ---------------------------------------------------------------------------------


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-Cpmai-Signature` value: `v1,` + base64 of HMAC-SHA256 over `ID.TIMESTAMP.BODY`."""
    import base64
    import hashlib
    import hmac

    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify_signature(
    secret: str, delivery_id: str, timestamp: str, body: bytes, header: str
) -> bool:
    """Whether `header` (an `X-Cpmai-Signature` value) signs `body` with `secret` for this
    delivery id and timestamp; compared in constant time. Checking the timestamp's age (to
    refuse replays) is the receiver's call."""
    import hmac

    expected = sign(secret, delivery_id, timestamp, body)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def _public_url(url: str) -> str:
    """`scheme://host[:port]/first-segment/…`: no user info, query string, fragment or path
    beyond its first segment (they may hold tokens: a Slack webhook's path is its secret)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an invalid URL)"
    if ":" in host:
        host = f"[{host}]"
    segments = parts.path.split("/")
    path = "/".join(segments[:2]) + ("/…" if len(segments) > 2 and any(segments[2:]) else "")
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{path}"


def _opener(direct: bool) -> urllib.request.OpenerDirector:
    """An opener that never follows redirects (a redirected POST would become a GET and look
    delivered); `direct` skips any proxy (for this machine's own addresses)."""
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(
            self,
            req: urllib.request.Request,
            fp: IO[bytes],
            code: int,
            msg: str,
            headers: Message,
            newurl: str,
        ) -> None:
            return None

    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if direct:
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def _send_webhook(channel: WebhookChannel, message: AlertMessage) -> None:
    import http.client
    import time
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from cpmai import __version__

    body = body_of(message)
    headers = {"Content-Type": "application/json", "User-Agent": f"cpmai/{__version__}"}
    if channel.secret_env:
        secret = os.environ.get(channel.secret_env, "")
        if not secret:
            raise DeliveryError(
                f"${channel.secret_env} is unset or empty: it holds the signing secret "
                "(nothing sent unsigned)"
            )
        stamp = str(int(time.time()))
        headers |= {
            DELIVERY_ID_HEADER: message.id,
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret, message.id, stamp, body),
        }
    url = channel.url
    if url.startswith("env:"):  # the URL itself is a secret (a Slack webhook's is)
        url = os.environ.get(url[4:], "").strip()
        if not url.startswith(("http://", "https://")):
            raise DeliveryError(f"${channel.url[4:]} is unset or not an http(s) URL")
    try:
        host = urlsplit(url).hostname or ""
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    except ValueError:
        raise DeliveryError("the URL cannot be parsed") from None
    try:
        with _opener(host.lower() in _LOCAL_HOSTS).open(
            request, timeout=channel.timeout_s
        ) as reply:
            reply.read(1 << 16)
    except urllib.error.HTTPError as error:
        error.close()
        raise DeliveryError(f"HTTP {error.code} {_cut(str(error.reason))}".rstrip()) from None
    except urllib.error.URLError as error:
        raise DeliveryError(f"cannot connect: {_cut(str(error.reason))}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {channel.timeout_s:g}s") from None
    except http.client.InvalidURL:  # its text quotes the URL, whose path may be a secret
        raise DeliveryError("the URL is not valid for HTTP") from None
    except (http.client.HTTPException, OSError, ValueError) as error:
        raise DeliveryError(f"{type(error).__name__}: {_cut(str(error))}") from None


# --- command ---------------------------------------------------------------------------------


def _run_command(channel: CommandChannel, message: AlertMessage, base_dir: Path) -> None:
    """`/bin/sh -c COMMAND` in `base_dir`, the JSON on stdin; killed with its whole process
    group after `timeout_s`. Stdin and stderr are temporary files, not pipes: a background child
    that keeps stderr open cannot make a finished command look hung."""
    import contextlib
    import signal
    import subprocess
    import tempfile

    env = os.environ | {
        "CPMAI_ALERT_EVENT": message.event,
        "CPMAI_ALERT_KIND": message.kind,
        "CPMAI_ALERT_KEY": message.key,
        "CPMAI_ALERT_NAME": message.name,
        "CPMAI_ALERT_ENV": message.env,
        "CPMAI_ALERT_TEXT": message.text.replace("\0", ""),
    }
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stderr:
        stdin.write(body_of(message))
        stdin.seek(0)
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", channel.command],
                cwd=channel.cwd or base_dir,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            raise DeliveryError(f"cannot start /bin/sh in {base_dir}: {error.strerror}") from None
        try:
            code = process.wait(timeout=channel.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise DeliveryError(f"timed out after {channel.timeout_s:g}s (killed)") from None
        if code == 0:
            return
        stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4096))
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    raise DeliveryError(f"{status}: {_cut(lines[-1].strip())}" if lines else status)


# --- email -----------------------------------------------------------------------------------


def _email_text(message: AlertMessage) -> str:
    details = json.dumps(message.details, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (
        f"{message.summary}\n\n"
        f"alert:    {message.key} ({message.event})\n"
        f"model:    {message.name} {message.env}\n"
        f"version:  {message.version or '-'}\n"
        f"started:  {message.started_at}\n"
        f"resolved: {message.resolved_at or '-'}\n"
        f"at:       {message.at} (checks: {message.checks})\n\n"
        f"details:\n{details}\n"
    )


def _send_email(channel: EmailChannel, message: AlertMessage) -> None:
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    login: tuple[str, str] | None = None
    if channel.username_env:
        user = os.environ.get(channel.username_env, "")
        if not user:
            raise DeliveryError(f"${channel.username_env} is unset or empty (the SMTP user)")
        if not channel.password_env:
            raise DeliveryError("username_env is set but password_env is not (the SMTP password)")
        password = os.environ.get(channel.password_env, "")
        if not password:
            raise DeliveryError(f"${channel.password_env} is unset or empty (the SMTP password)")
        login = (user, password)
    email = EmailMessage()
    email["Subject"] = " ".join(message.text.split())[:REASON_MAX]
    email["From"] = channel.sender
    email["To"] = ", ".join(channel.to)
    email["Date"] = formatdate(localtime=False, usegmt=True)
    email["Message-ID"] = make_msgid(domain=channel.sender.rsplit("@", 1)[-1])
    email.set_content(_email_text(message))
    host, port = channel.smtp.rsplit(":", 1)
    host = host.strip("[]")
    try:
        with smtplib.SMTP(host, int(port), timeout=channel.timeout_s) as smtp:
            if channel.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if login is not None:
                smtp.login(*login)
            refused = smtp.send_message(email, channel.sender, channel.to)
    except smtplib.SMTPRecipientsRefused as error:
        raise DeliveryError(f"recipients refused: {', '.join(sorted(error.recipients))}") from None
    except smtplib.SMTPResponseException as error:
        said = error.smtp_error
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise DeliveryError(f"SMTP {error.smtp_code}: {_cut(text)}") from None
    except smtplib.SMTPException as error:
        raise DeliveryError(f"SMTP: {_cut(str(error))}") from None
    except TimeoutError:
        raise DeliveryError(
            f"no answer from {channel.smtp} within {channel.timeout_s:g}s"
        ) from None
    except OSError as error:
        raise DeliveryError(
            f"cannot reach {channel.smtp}: {_cut(error.strerror or str(error))}"
        ) from None
    if refused:
        raise DeliveryError(f"recipients refused: {', '.join(sorted(refused))}")


# --- file ------------------------------------------------------------------------------------


def _append_file(channel: FileChannel, message: AlertMessage, base_dir: Path) -> None:
    """One JSON line, appended with a single `write` (O_APPEND) and fsynced. Anything but a
    regular file at the path is refused before opening it (opening a FIFO would block)."""
    import stat

    from cpmai.fsutil import not_regular

    path = Path(channel.path).expanduser()
    path = path if path.is_absolute() else base_dir / path
    why = not_regular(path)
    if why:
        raise DeliveryError(f"{channel.path} {why}")
    line = body_of(message) + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NONBLOCK: a FIFO put there after the check fails to open instead of blocking
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, 0o644)
    except OSError as error:
        raise DeliveryError(f"cannot open {channel.path}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DeliveryError(f"{channel.path} is not a regular file")
        written = os.write(fd, line)
        if written != len(line):
            raise DeliveryError(f"short write to {channel.path} ({written} of {len(line)} bytes)")
        os.fsync(fd)
    except OSError as error:
        raise DeliveryError(f"cannot write {channel.path}: {error.strerror}") from None
    finally:
        os.close(fd)


def _cut(text: str) -> str:
    """One line of at most REASON_MAX characters."""
    line = " ".join(text.split())
    return line if len(line) <= REASON_MAX else line[: REASON_MAX - 1] + "…"
