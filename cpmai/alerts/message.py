"""What an alert says, as every channel sends it (schema `cpmai-alert/1`).

One message per lifecycle event of one alert: `firing` (it starts), `repeat` (still firing,
every `monitoring.alerts.repeat`), `resolved` (a check found it gone), or `test` (`cpmai alerts
test`). An alert is identified by its key, `ENV/KIND` or `ENV/KIND/FEATURE`: the same key never
fires twice while it is open. The webhook body is `to_json()`; `text` is Slack-compatible.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field

from cpmai.documents import Doc
from cpmai.manifest_watch import AlertKind

SCHEMA: Final = "cpmai-alert/1"

Event = Literal["firing", "repeat", "resolved", "test"]


class AlertMessage(Doc):
    """One lifecycle event of one alert, as sent."""

    schema_: str = Field(SCHEMA, alias="schema")
    id: str = Field(description="Unique per message: the alert's key, its start and the event.")
    event: Event
    status: Literal["firing", "resolved", "test"]
    text: str = Field(description="One line for people (Slack and compatible webhooks show it).")
    name: str
    env: str
    version: str | None
    kind: AlertKind
    feature: str | None = Field(
        description="The metric or feature the alert is about, when it is about one."
    )
    key: str = Field(description="ENV/KIND[/FEATURE]: what deduplicates alerts.")
    summary: str
    started_at: str
    resolved_at: str | None
    at: str = Field(description="When this event happened.")
    checks: int = Field(ge=0, description="Checks that found it so far.")
    details: dict[str, Any] = Field(description="The evidence: what the check measured.")


def alert_key(env: str, kind: str, feature: str | None) -> str:
    """What deduplicates alerts: one open alert per (environment, kind, feature)."""
    return f"{env}/{kind}" if not feature else f"{env}/{kind}/{feature}"


def text_of(
    event: Event, name: str, env: str, version: str | None, summary: str, started_at: str
) -> str:
    """The one line a person reads: `[FIRING] churn production 1.2.0: SLO missed: …`."""
    label = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED", "test": "TEST"}
    where = f"{name} {env}" + (f" {version}" if version else "")
    since = f" (since {started_at})" if event in ("repeat", "resolved") else ""
    return f"[{label[event]}] {where}: {summary}{since}"
