"""The manifest's watching settings: `monitoring.schedule` (the watcher's checks) and
`monitoring.alerts` (who hears of a breach, and how), assembled by `cpmai.manifest`."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from cpmai.clock import parse_duration
from cpmai.errors import UsageError
from cpmai.manifest_base import Strict

_DURATION = r"^\s*\d+\s*[smhd]\s*$"


def _positive(text: str) -> str:
    try:
        if not re.fullmatch(_DURATION, text):
            raise UsageError(text)
        parse_duration(text)
    except UsageError:
        raise ValueError("a whole number above zero and a unit, e.g. 30s, 5m, 1h, 7d") from None
    return text.strip()


Duration = Annotated[
    str,
    Field(examples=["30s", "5m", "1h", "7d"], json_schema_extra={"pattern": _DURATION}),
    AfterValidator(_positive),
]
"""A length of time: a whole number and a unit (s, m, h, d), as Prometheus writes them."""
EnvVar = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]

AlertKind = Literal["drift", "quality", "slo", "errors", "age", "check", "rollback"]
"""What an alert is about: dataset drift, model quality under its bound, a latency SLO missed,
the error-rate SLO missed, a version past `max_age_days`, a check the watcher could not make,
an automatic rollback."""
ALERT_KINDS: tuple[AlertKind, ...] = (
    "drift", "quality", "slo", "errors", "age", "check", "rollback"
)  # fmt: skip


class Schedule(Strict):
    """When the watcher checks a deployed environment (the same checks as `cpmai monitor`)."""

    every: Duration = "5m"
    """How often a check runs."""
    window: Duration = "1h"
    """How far back each check looks (never before the live version went live)."""
    min_requests: Annotated[int, Field(ge=1, le=10_000_000)] = 20
    """Fewer requests in the window: the SLO and error rate are not judged (no alert fires or
    resolves on them)."""

    @model_validator(mode="after")
    def _sensible(self) -> Schedule:
        if parse_duration(self.window) < parse_duration(self.every):
            raise ValueError(f"window ({self.window}) is shorter than every ({self.every}): "
                             "rows logged between two checks would never be judged")  # fmt: skip
        return self


class WebhookChannel(Strict):
    """POST the alert as JSON (with a Slack-compatible `text`) to a URL."""

    type: Literal["webhook"]
    url: Annotated[str, Field(max_length=2000, examples=["https://hooks.example.com/x", "env:VAR"])]
    """Where to POST, or `env:VAR` to read the URL from $VAR when it is a secret (a Slack
    webhook's is: the manifest is copied into every artifact)."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if not re.fullmatch(
            r"https?://[^\s/?#]+[^\s]*|env:[A-Za-z_][A-Za-z0-9_]{0,127}", url
        ) or any(ord(c) < 32 or ord(c) == 127 for c in url):
            raise ValueError("an http:// or https:// URL, or env:VAR to read it from $VAR")
        if not url.startswith("env:"):
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if "@" in parts.netloc:
                raise ValueError(
                    "the URL holds credentials, and the manifest is copied into every "
                    "artifact: sign with secret_env, or keep the URL in $VAR (env:VAR)"
                )
            try:
                parts.port  # noqa: B018 (raises on a port out of range)
            except ValueError:
                raise ValueError("the URL's port is not a port (1-65535)") from None
        return url

    secret_env: EnvVar | None = None
    """An environment variable holding the secret the body is signed with (HMAC-SHA256, header
    `X-Cpmai-Signature`); the secret itself never belongs in the manifest."""
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    """How long one attempt may take."""


class CommandChannel(Strict):
    """Run a command with the alert as JSON on its standard input."""

    type: Literal["command"]
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    """Run through the shell with CPMAI_ALERT_* variables set."""
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    """The folder it runs in (default: the manifest's folder)."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    """How long it may run before it is killed (and the attempt counted failed)."""


class EmailChannel(Strict):
    """Send the alert as an e-mail over SMTP."""

    type: Literal["email"]
    to: Annotated[list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]], Field(min_length=1)]
    """Recipients."""
    sender: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")] = "cpmai@localhost"
    """The From address."""
    smtp: Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")] = "localhost:25"
    """HOST:PORT of the SMTP server."""
    starttls: bool = False
    """Upgrade the connection with STARTTLS before logging in."""
    username_env: EnvVar | None = None
    """An environment variable holding the SMTP user name (no login without it)."""
    password_env: EnvVar | None = None
    """An environment variable holding the SMTP password."""
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    """How long one attempt may take."""


class FileChannel(Strict):
    """Append the alert as one JSON line to a file."""

    type: Literal["file"]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    """The file (relative paths: from the manifest's folder)."""


Channel = Annotated[
    WebhookChannel | CommandChannel | EmailChannel | FileChannel, Field(discriminator="type")
]


class Alerts(Strict):
    """Alerts with a lifecycle (firing, repeated while it lasts, resolved), sent to channels."""

    channels: list[Channel] = []
    """Where alerts go (webhook, command, email, file); none: kept and shown only."""
    on: list[AlertKind] = list(ALERT_KINDS)
    """Which kinds are sent (every kind is still kept and shown by `cpmai alerts`)."""
    repeat: Duration = "4h"
    """A firing alert is sent again this often while it lasts."""
    retries: Annotated[int, Field(ge=0, le=20)] = 5
    """Attempts after the first when a channel fails."""
    backoff_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    """Wait before the first retry; doubled after each (at most 5 minutes)."""

    @field_validator("on")
    @classmethod
    def _unique(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError("each kind once")
        return kinds
