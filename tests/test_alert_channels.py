"""Alert delivery, against real things on 127.0.0.1: an HTTP receiver, an SMTP server
(aiosmtpd), shell commands, files and FIFOs; the outbox's retries, order and damaged files."""

from __future__ import annotations

import email
import email.policy
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from _receivers import Receiver, receivers

from cpmai.alerts.channels import DeliveryError, describe, send, verify_signature
from cpmai.alerts.message import AlertMessage, Event, alert_key, text_of
from cpmai.alerts.outbox import Attempt, Outbox, backoff
from cpmai.manifest_watch import CommandChannel, EmailChannel, FileChannel, WebhookChannel
from serving_helpers import free_port

SECRET = "s3cret-value-for-tests"


def alert(event: Event = "firing", *, feature: str | None = None) -> AlertMessage:
    started = "2026-11-26T10:00:00Z"
    key = alert_key("production", "slo", feature)
    summary = "p95 latency 180 ms over the 100 ms SLO"
    return AlertMessage(
        id=f"{key}@{started}#{event}",
        event=event,
        status="resolved" if event == "resolved" else "firing",
        text=text_of(event, "churn", "production", "1.2.0", summary, started),
        name="churn",
        env="production",
        version="1.2.0",
        kind="slo",
        feature=feature,
        key=key,
        summary=summary,
        started_at=started,
        resolved_at="2026-11-26T11:00:00Z" if event == "resolved" else None,
        at="2026-11-26T10:05:00Z",
        checks=3,
        details={"p95_ms": 180.0, "slo_ms": 100, "window": "1h"},
    )


@pytest.fixture
def receiver() -> Iterator[Callable[[int], Receiver]]:
    """Starts receivers (port 0: any free one); every one is stopped after the test."""
    with receivers() as start:
        yield start


@pytest.fixture
def no_proxy_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that does not exist: only a direct connection reaches 127.0.0.1."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_webhook_posts_signed_json(
    receiver: Callable[[int], Receiver], monkeypatch: pytest.MonkeyPatch, no_proxy_bypass: None
) -> None:
    monkeypatch.setenv("CPMAI_TEST_SECRET", SECRET)
    hook = receiver(0)
    message = alert()
    before = int(time.time())
    send(
        WebhookChannel(type="webhook", url=hook.url, secret_env="CPMAI_TEST_SECRET"),
        message,
        base_dir=Path("."),
    )

    [(path, headers, body)] = hook.got
    assert path == "/hook"
    data = json.loads(body)
    assert data["text"] == message.text and data == message.to_json()
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("cpmai/")
    delivery_id, stamp = headers["X-Cpmai-Delivery-Id"], headers["X-Cpmai-Timestamp"]
    signature = headers["X-Cpmai-Signature"]
    assert delivery_id == message.id
    assert before <= int(stamp) <= time.time() + 1
    assert signature.startswith("v1,")
    assert verify_signature(SECRET, delivery_id, stamp, body, signature)
    assert not verify_signature("another secret", delivery_id, stamp, body, signature)
    assert not verify_signature(SECRET, delivery_id, stamp, body.replace(b"180", b"181"), signature)
    assert not verify_signature(SECRET, delivery_id, str(int(stamp) + 1), body, signature)
    assert not verify_signature(SECRET, "another-id", stamp, body, signature)
    assert SECRET not in json.dumps(headers)


def test_webhook_unsigned_without_secret_env(receiver: Callable[[int], Receiver]) -> None:
    hook = receiver(0)
    send(WebhookChannel(type="webhook", url=hook.url), alert(), base_dir=Path("."))
    [(_, headers, _)] = hook.got
    assert "X-Cpmai-Signature" not in headers


def test_a_webhook_url_can_be_kept_in_the_environment(
    receiver: Callable[[int], Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = receiver(0)
    channel = WebhookChannel(type="webhook", url="env:CPMAI_TEST_HOOK")
    assert describe(channel) == "webhook env:CPMAI_TEST_HOOK"
    monkeypatch.setenv("CPMAI_TEST_HOOK", hook.url)
    send(channel, alert(), base_dir=Path("."))
    assert len(hook.got) == 1
    monkeypatch.setenv("CPMAI_TEST_HOOK", "not a url")
    with pytest.raises(DeliveryError, match=r"\$CPMAI_TEST_HOOK is unset or not an http"):
        send(channel, alert(), base_dir=Path("."))
    assert len(hook.got) == 1


@pytest.mark.parametrize("status", [500, 404, 302])
def test_webhook_non_2xx_is_a_failure_naming_the_status(
    receiver: Callable[[int], Receiver], status: int
) -> None:
    hook = receiver(0)
    hook.status = status
    with pytest.raises(DeliveryError, match=str(status)):
        send(WebhookChannel(type="webhook", url=hook.url), alert(), base_dir=Path("."))
    assert [p for p, _, _ in hook.got] == ["/hook"]  # a redirect is not followed


@pytest.mark.parametrize("value", [None, ""])
def test_webhook_refuses_to_send_unsigned_when_the_secret_is_missing(
    receiver: Callable[[int], Receiver], monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CPMAI_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("CPMAI_TEST_SECRET", value)
    hook = receiver(0)
    channel = WebhookChannel(type="webhook", url=hook.url, secret_env="CPMAI_TEST_SECRET")
    with pytest.raises(DeliveryError, match="CPMAI_TEST_SECRET is unset"):
        send(channel, alert(), base_dir=Path("."))
    assert hook.got == []


def test_describe_names_a_channel_without_its_secrets() -> None:
    url = "https://user:pw@hooks.example.com:8443/services/x?token=abc#frag"
    with pytest.raises(ValueError, match="credentials"):
        WebhookChannel(type="webhook", url=url)  # refused in a manifest; shown safely anyway:
    hook = WebhookChannel.model_construct(type="webhook", url=url, secret_env=None, timeout_s=5.0)
    assert describe(hook) == "webhook https://hooks.example.com:8443/services/…"
    slack = WebhookChannel(type="webhook", url="https://hooks.slack.com/services/T0/B0/SECRET")
    assert "SECRET" not in describe(slack) and describe(slack).endswith("/services/…")
    short = WebhookChannel(type="webhook", url="http://127.0.0.1:9000/hook")
    assert describe(short) == "webhook http://127.0.0.1:9000/hook"
    mail = EmailChannel(type="email", to=["a@x", "b@y"], smtp="mail.example.com:25")
    assert describe(mail) == "email to a@x, b@y via mail.example.com:25"
    command = CommandChannel(type="command", command="notify-send " + "x" * 100)
    assert describe(command) == "command notify-send …"  # arguments may hold tokens
    assert describe(FileChannel(type="file", path="alerts/out.jsonl")) == "file alerts/out.jsonl"


# --- the outbox ------------------------------------------------------------------------------


def run(
    box: Outbox, channels: list[Any], now: float, *, retries: int = 5, backoff_s: float = 2.0
) -> list[Attempt]:
    seen: list[Attempt] = []
    made = box.run_due(
        channels,
        base_dir=box.folder,
        retries=retries,
        backoff_s=backoff_s,
        now=now,
        record=seen.append,
    )
    assert made == seen
    return made


def test_backoff_doubles_up_to_five_minutes() -> None:
    assert [backoff(n, 2.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff(20, 2.0) == 300.0


def test_outbox_retries_until_the_receiver_is_up(
    tmp_path: Path, receiver: Callable[[int], Receiver]
) -> None:
    port = free_port()
    channel = WebhookChannel(type="webhook", url=f"http://127.0.0.1:{port}/hook", timeout_s=2)
    box = Outbox(tmp_path / "outbox")
    t0 = time.time()
    [delivery] = box.enqueue(alert(), [channel], now=t0)
    assert delivery.channel_desc == describe(channel) and box.due(t0) == box.pending()

    [first] = run(box, [channel], t0)
    assert (first.ok, first.attempt, first.final) == (False, 1, False)
    assert first.error and "cannot connect" in first.error
    [waiting] = box.pending()
    assert (waiting.attempts, waiting.next_at, waiting.last_error) == (1, t0 + 2.0, first.error)
    assert run(box, [channel], t0 + 1.9) == []  # not due yet

    hook = receiver(port)
    [second] = run(box, [channel], t0 + 2.0)
    assert (second.ok, second.attempt, second.final, second.error) == (True, 2, True, None)
    assert second.key == "production/slo" and second.channel == describe(channel)
    assert [b["id"] for b in hook.bodies()] == [alert().id]
    assert list(box.folder.iterdir()) == []


def test_outbox_gives_up_after_the_retries(tmp_path: Path) -> None:
    channel = WebhookChannel(type="webhook", url=f"http://127.0.0.1:{free_port()}/", timeout_s=2)
    box = Outbox(tmp_path / "outbox")
    t0 = time.time()
    box.enqueue(alert(), [channel], now=t0)
    made = [*run(box, [channel], t0, retries=2, backoff_s=1.0)]
    assert box.pending()[0].next_at == t0 + 1.0
    made += run(box, [channel], t0 + 1.0, retries=2, backoff_s=1.0)
    assert box.pending()[0].next_at == t0 + 1.0 + 2.0
    made += run(box, [channel], t0 + 3.0, retries=2, backoff_s=1.0)
    assert [(a.attempt, a.ok, a.final) for a in made] == [
        (1, False, False),
        (2, False, False),
        (3, False, True),
    ]
    assert box.pending() == [] and list(box.folder.iterdir()) == []
    assert run(box, [channel], t0 + 1000) == []


def test_a_damaged_outbox_file_is_set_aside_not_a_crash(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    channel = FileChannel(type="file", path=str(target))
    box = Outbox(tmp_path / "outbox")
    t0 = time.time()
    [truncated] = box.enqueue(alert(), [channel], now=t0)
    path = box.folder / truncated.file
    path.write_bytes(path.read_bytes()[:40])
    (box.folder / "0-garbage.json").write_text('{"format": "cpmai-outbox/1", "channel": -1}')
    [fine] = box.enqueue(alert(feature="x"), [channel], now=t0)
    assert box.pending() == [fine]  # the damaged ones are left out, without side effects

    made = run(box, [channel], t0)
    bad = [a for a in made if not a.ok]
    assert len(bad) == 2 and all(a.final for a in bad)
    assert all(a.error and "moved aside" in a.error for a in bad)
    assert any(a.error and "not valid JSON" in a.error for a in bad)
    assert (box.folder / f"{truncated.file}.bad").is_file()
    assert (box.folder / "0-garbage.json.bad").is_file()
    assert [a.ok for a in made if a.key] == [True]
    assert len(target.read_text().splitlines()) == 1
    assert sorted(p.suffix for p in box.folder.iterdir()) == [".bad", ".bad"]


def test_a_channel_gone_from_the_manifest_drops_its_deliveries(tmp_path: Path) -> None:
    one = FileChannel(type="file", path="one.jsonl")
    two = FileChannel(type="file", path="two.jsonl")
    box = Outbox(tmp_path / "outbox")
    t0 = time.time()
    box.enqueue(alert(), [one, two], now=t0)
    made = run(box, [two], t0)  # `one` was removed, `two` moved to index 0
    assert [(a.channel, a.ok, a.final) for a in made] == [
        ("file one.jsonl", False, True),
        ("file two.jsonl", True, True),
    ]
    assert made[0].error and "no longer" in made[0].error
    assert not (box.folder / "one.jsonl").exists() and (box.folder / "two.jsonl").is_file()
    assert box.pending() == []


def test_resolved_never_overtakes_its_firing(
    tmp_path: Path, receiver: Callable[[int], Receiver]
) -> None:
    port = free_port()
    channel = WebhookChannel(type="webhook", url=f"http://127.0.0.1:{port}/hook", timeout_s=2)
    box = Outbox(tmp_path / "outbox")
    t0 = time.time()
    box.enqueue(alert("firing"), [channel], now=t0)
    assert [a.event for a in run(box, [channel], t0)] == ["firing"]
    box.enqueue(alert("resolved"), [channel], now=t0 + 1)
    box.enqueue(alert("firing", feature="other"), [channel], now=t0 + 1)
    assert [d.message.id for d in box.due(t0 + 1)] == [alert("firing", feature="other").id]
    made = run(box, [channel], t0 + 1)  # only the other key's delivery: it fails too
    assert [(a.key, a.event) for a in made] == [("production/slo/other", "firing")]

    hook = receiver(port)
    made = run(box, [channel], t0 + 3)  # the firing goes, then the resolved it unblocked
    assert [(a.key, a.event, a.ok) for a in made] == [
        ("production/slo", "firing", True),
        ("production/slo/other", "firing", True),
        ("production/slo", "resolved", True),
    ]
    assert [(b["key"], b["event"]) for b in hook.bodies()] == [(a.key, a.event) for a in made]
    assert box.pending() == []


# --- e-mail ----------------------------------------------------------------------------------


@dataclass
class Mailbox:
    port: int
    envelopes: list[Any] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)


@pytest.fixture
def smtp_server() -> Iterator[Mailbox]:
    from aiosmtpd.controller import Controller

    box = Mailbox(free_port())

    class Handler:
        async def handle_RCPT(
            self, server: Any, session: Any, envelope: Any, address: str, options: Any
        ) -> str:
            if address in box.refuse:
                return "550 no such user here"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            box.envelopes.append(envelope)
            return "250 Message accepted"

    controller = Controller(Handler(), hostname="127.0.0.1", port=box.port, ready_timeout=10)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def test_email_through_a_local_smtp_server(smtp_server: Mailbox) -> None:
    channel = EmailChannel(
        type="email",
        to=["ops@example.com", "ml@example.com"],
        sender="cpmai@example.com",
        smtp=f"127.0.0.1:{smtp_server.port}",
    )
    message = alert("resolved")
    send(channel, message, base_dir=Path("."))

    [envelope] = smtp_server.envelopes
    assert envelope.mail_from == "cpmai@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "ml@example.com"]
    mail = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert mail["Subject"] == message.text
    assert mail["To"] == "ops@example.com, ml@example.com"
    body = mail.get_body().get_content()  # type: ignore[union-attr]
    assert message.summary in body and "production/slo" in body and "1.2.0" in body
    assert "2026-11-26T10:00:00Z" in body and "2026-11-26T11:00:00Z" in body
    assert '  "p95_ms": 180.0' in body  # the details, as pretty JSON


def test_email_refused_recipients_and_no_server_are_failures(smtp_server: Mailbox) -> None:
    smtp_server.refuse = {"ghost@example.com"}
    refused = EmailChannel(
        type="email", to=["ghost@example.com"], smtp=f"127.0.0.1:{smtp_server.port}"
    )
    with pytest.raises(DeliveryError, match=r"refused: ghost@example\.com"):
        send(refused, alert(), base_dir=Path("."))
    down = EmailChannel(type="email", to=["ops@example.com"], smtp=f"127.0.0.1:{free_port()}")
    with pytest.raises(DeliveryError, match="cannot reach"):
        send(down, alert(), base_dir=Path("."))
    assert smtp_server.envelopes == []


def test_email_login_needs_its_variables(
    smtp_server: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CPMAI_TEST_SMTP_USER", "alerts")
    monkeypatch.delenv("CPMAI_TEST_SMTP_PASSWORD", raising=False)
    channel = EmailChannel(
        type="email",
        to=["ops@example.com"],
        smtp=f"127.0.0.1:{smtp_server.port}",
        username_env="CPMAI_TEST_SMTP_USER",
        password_env="CPMAI_TEST_SMTP_PASSWORD",
    )
    with pytest.raises(DeliveryError, match="CPMAI_TEST_SMTP_PASSWORD is unset"):
        send(channel, alert(), base_dir=Path("."))
    assert smtp_server.envelopes == []


# --- commands --------------------------------------------------------------------------------


def test_command_gets_the_json_and_the_variables(tmp_path: Path) -> None:
    command = 'cat > got.json; printf "%s %s" "$CPMAI_ALERT_KIND" "$CPMAI_ALERT_EVENT" > env.txt'
    message = alert()
    send(CommandChannel(type="command", command=command), message, base_dir=tmp_path)
    assert json.loads((tmp_path / "got.json").read_text()) == message.to_json()
    assert (tmp_path / "env.txt").read_text() == "slo firing"


def test_command_failure_names_the_status_and_the_last_stderr_line(tmp_path: Path) -> None:
    command = "echo first >&2; echo 'the last words' >&2; exit 3"
    with pytest.raises(DeliveryError) as failed:
        send(CommandChannel(type="command", command=command), alert(), base_dir=tmp_path)
    assert failed.value.reason == "exit status 3: the last words"
    long = f"echo {'y' * 500} >&2; exit 1"
    with pytest.raises(DeliveryError) as failed:
        send(CommandChannel(type="command", command=long), alert(), base_dir=tmp_path)
    assert failed.value.reason.startswith("exit status 1: yyy") and len(failed.value.reason) < 230


def _gone(pid: int) -> bool:
    """No such process, or a zombie (killed; its new parent may never reap it here)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    channel = CommandChannel(
        type="command", command="sleep 30 & echo $! > pid; wait", timeout_s=0.5
    )
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"timed out after 0\.5s"):
        send(channel, alert(), base_dir=tmp_path)
    assert time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)


def test_a_finished_command_is_not_held_by_its_background_child(tmp_path: Path) -> None:
    channel = CommandChannel(type="command", command="sleep 30 & echo $! > pid", timeout_s=10)
    started = time.monotonic()
    try:
        send(channel, alert(), base_dir=tmp_path)
        assert time.monotonic() - started < 5
    finally:
        os.kill(int((tmp_path / "pid").read_text()), 9)


# --- files -----------------------------------------------------------------------------------


def test_file_channel_appends_one_json_line_per_message(tmp_path: Path) -> None:
    channel = FileChannel(type="file", path="alerts/sub/out.jsonl")
    send(channel, alert("firing"), base_dir=tmp_path)
    send(channel, alert("resolved"), base_dir=tmp_path)
    lines = (tmp_path / "alerts/sub/out.jsonl").read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["firing", "resolved"]


@pytest.mark.parametrize("kind", ["folder", "FIFO"])
def test_file_channel_refuses_what_is_not_a_file_without_hanging(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "out.jsonl"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            send(FileChannel(type="file", path="out.jsonl"), alert(), base_dir=tmp_path)
        except BaseException as error:
            errors.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # unblock it before failing
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("the file channel blocked")
    [error] = errors
    assert isinstance(error, DeliveryError) and kind in error.reason
