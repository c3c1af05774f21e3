"""The notifier against a real local SMTP server process (aiosmtpd) and a real HTTP receiver.

Unit tests send through ``deliver`` without a database; the integration tests record deliveries in
PostgreSQL and read the alerts topic from the test broker.
"""

from __future__ import annotations

import json
import mailbox
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cityos.alerting.destinations import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    EmailDestination,
    SmtpConfig,
    WebhookDestination,
    body,
    sign,
    subject,
    verify_signature,
    webhook_name,
)
from cityos.alerting.events import Alert, AlertEvent
from cityos.alerting.notify import (
    DeliveryLedger,
    Notifier,
    NotifierConfig,
    RetryPolicy,
    Stopped,
    deliver,
)
from cityos.errors import ConfigError

FAST = RetryPolicy(max_attempts=4, backoff_s=0.01, backoff_max_s=0.05, max_elapsed_s=30.0)
SECRET = "s3cret-for-tests"


def make_event(kind: str = "firing", alert_id: str | None = None, **alert: object) -> AlertEvent:
    at = datetime.now(UTC).replace(microsecond=0)
    fields: dict[str, object] = {
        "alert_id": alert_id or f"alr_{uuid.uuid4().hex[:12]}",
        "kind": "air_quality",
        "severity": "critical",
        "status": "resolved" if kind == "resolved" else "firing",
        "city_id": "beijing",
        "zone_id": "dongsi",
        "sensor_id": "beijing-aq-dongsi",
        "metric": "pm25",
        "value": 183.0,
        "threshold": 150.0,
        "message": "PM2.5 in Dongsi above 150",
        "started_at": at - timedelta(minutes=30),
        "updated_at": at,
        "resolved_at": at if kind == "resolved" else None,
    }
    fields.update(alert)
    return AlertEvent(type=kind, alert=Alert(**fields), at=at)  # type: ignore[arg-type]


# --- a real HTTP receiver ---------------------------------------------------------------------


@dataclass
class Receiver:
    """Answers by path: /ok 200, /flaky/N 503 for the first N requests then 200, /gone 404,
    /slow holds the request until the test ends. Keeps every request it got."""

    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def got(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        return [(headers, raw) for p, headers, raw in self.requests if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    lock = threading.Lock()
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            rec = holder["r"]
            with lock:
                rec.requests.append((self.path, dict(self.headers), raw))
                seen = len(rec.got(self.path))
            if self.path == "/slow":
                rec.release.wait(30)
                status = 200
            elif self.path.startswith("/flaky/"):
                status = 503 if seen <= int(self.path.rsplit("/", 1)[1]) else 200
            else:
                status = {"/ok": 200, "/gone": 404}.get(self.path.split("?")[0], 404)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["r"] = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder["r"]
    holder["r"].release.set()
    server.shutdown()
    server.server_close()


# --- a real SMTP server process ---------------------------------------------------------------


@dataclass
class SmtpServer:
    host: str
    port: int
    maildir: Path

    def messages(self) -> list[Message]:
        return list(mailbox.Maildir(self.maildir, create=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[bytes], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SMTP server exited: {process.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def run_smtp_server(folder: Path, *options: str) -> Iterator[SmtpServer]:
    """``python -m aiosmtpd`` with its Maildir handler: every message received lands in a folder."""
    maildir, port = folder / "maildir", free_port()
    mailbox.Maildir(maildir, create=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", *options]
        + ["-c", "aiosmtpd.handlers.Mailbox", str(maildir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_listening(port, process)
        yield SmtpServer("127.0.0.1", port, maildir)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServer]:
    with run_smtp_server(tmp_path) as server:
        yield server


@pytest.fixture
def tls_smtp_server(tmp_path: Path) -> Iterator[tuple[SmtpServer, Path]]:
    """The same server offering STARTTLS with a self-signed certificate for 127.0.0.1; the
    certificate is the CA file a client must trust."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    with run_smtp_server(tmp_path, "--tlscert", str(cert), "--tlskey", str(key)) as server:
        yield server, cert


def relay(server: SmtpServer) -> SmtpConfig:
    return SmtpConfig(server.host, server.port, "cityos@example.org", security="none")


# --- unit: one destination, retries, formats --------------------------------------------------


def test_webhook_retries_503_then_delivers_signed_body(receiver: Receiver) -> None:
    event = make_event()
    hook = WebhookDestination(f"{receiver.url}/flaky/2", secret=SecretStr(SECRET), timeout_s=5)

    delivery = deliver(hook, event, FAST, rng=random.Random(1))

    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, None)
    requests = receiver.got("/flaky/2")
    assert len(requests) == 3
    headers, raw = requests[-1]
    assert AlertEvent.from_json(raw) == event
    assert json.loads(raw)["event_id"] == event.event_id == headers[EVENT_HEADER]
    assert verify_signature(raw, SECRET, headers[SIGNATURE_HEADER])
    assert headers[SIGNATURE_HEADER] == sign(raw, SECRET)
    assert not verify_signature(raw, "another secret", headers[SIGNATURE_HEADER])
    assert not verify_signature(raw + b" ", SECRET, headers[SIGNATURE_HEADER])


def test_webhook_without_secret_sends_no_signature(receiver: Receiver) -> None:
    delivery = deliver(WebhookDestination(f"{receiver.url}/ok"), make_event(), FAST)
    assert delivery.status == "delivered"
    [(headers, _)] = receiver.got("/ok")
    assert SIGNATURE_HEADER not in headers


def test_webhook_4xx_fails_at_once_and_5xx_gives_up_after_max_attempts(receiver: Receiver) -> None:
    gone = deliver(WebhookDestination(f"{receiver.url}/gone"), make_event(), FAST)
    assert (gone.status, gone.attempts) == ("failed", 1)
    assert gone.last_error == "HTTP 404 Not Found"

    down = deliver(WebhookDestination(f"{receiver.url}/flaky/99"), make_event(), FAST)
    assert (down.status, down.attempts) == ("failed", FAST.max_attempts)
    assert down.last_error is not None
    assert down.last_error.startswith("HTTP 503")
    assert "gave up after 4 attempts" in down.last_error
    assert len(receiver.got("/flaky/99")) == FAST.max_attempts


def test_slow_webhook_times_out_and_fails_with_the_reason(receiver: Receiver) -> None:
    hook = WebhookDestination(f"{receiver.url}/slow", timeout_s=0.3)
    delivery = deliver(hook, make_event(), RetryPolicy(max_attempts=2, backoff_s=0.01))
    assert (delivery.status, delivery.attempts) == ("failed", 2)
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("no answer within 0.3 s (ReadTimeout)")


def test_retries_stop_within_the_total_time_budget(receiver: Receiver) -> None:
    policy = RetryPolicy(max_attempts=50, backoff_s=0.2, backoff_max_s=10, max_elapsed_s=0.5)
    delivery = deliver(WebhookDestination(f"{receiver.url}/flaky/99"), make_event(), policy)
    assert delivery.status == "failed"
    assert 1 < delivery.attempts < 50
    assert "within 0.5 s" in (delivery.last_error or "")


def test_unreachable_webhook_fails_without_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/hooks/T0/B0/token-in-path"
    delivery = deliver(WebhookDestination(url, timeout_s=2), make_event(), FAST)
    assert (delivery.status, delivery.attempts) == ("failed", FAST.max_attempts)
    assert "ConnectError" in (delivery.last_error or "")
    assert "token-in-path" not in (delivery.last_error or "")
    assert "token-in-path" not in delivery.destination
    assert delivery.destination == webhook_name(url)
    assert delivery.destination.startswith("webhook:127.0.0.1:")


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(backoff_s=1.0, backoff_max_s=8.0)
    rng = random.Random(7)
    waits = [policy.delay(n, rng) for n in range(1, 7)]
    caps = [1, 2, 4, 8, 8, 8]
    assert all(cap / 2 <= wait <= cap for wait, cap in zip(waits, caps, strict=True))
    assert len({round(w, 6) for w in waits[3:]}) == 3  # jittered, not in lockstep
    assert policy.delay(1, rng, asked_s=5.0) == 5.0
    assert policy.delay(1, rng, asked_s=600.0) == 8.0  # never above backoff_max_s


def test_email_arrives_at_a_real_smtp_server(smtp_server: SmtpServer) -> None:
    event = make_event()
    mail = EmailDestination(relay(smtp_server), "ops@example.org", timeout_s=5)

    delivery = deliver(mail, event, FAST)

    assert (delivery.status, delivery.attempts, delivery.destination) == (
        "delivered",
        1,
        "mailto:ops@example.org",
    )
    [message] = smtp_server.messages()
    assert message["Subject"] == "[CityOS critical] PM2.5 in Dongsi above 150"
    assert message["To"] == "ops@example.org"
    assert message["From"] == "cityos@example.org"
    assert message[EVENT_HEADER] == event.event_id
    assert message.get_content_type() == "text/plain"
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    assert "Value:" in text and "183" in text and "Threshold:" in text and "150" in text
    assert "Zone:         dongsi" in text
    assert "Resolved:" not in text  # a firing alert has no resolved_at


def test_smtp_server_down_is_retried_then_failed() -> None:
    mail = EmailDestination(SmtpConfig("127.0.0.1", free_port(), "c@example.org", "none"), "a@b.c")
    delivery = deliver(mail, make_event(), FAST)
    assert (delivery.status, delivery.attempts) == ("failed", FAST.max_attempts)
    assert "ConnectionRefusedError" in (delivery.last_error or "")


def test_starttls_refused_by_a_relay_without_it_fails_at_once(smtp_server: SmtpServer) -> None:
    config = SmtpConfig(smtp_server.host, smtp_server.port, "c@example.org", "starttls")
    delivery = deliver(EmailDestination(config, "a@example.org"), make_event(), FAST)
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert "STARTTLS" in (delivery.last_error or "")
    assert smtp_server.messages() == []


def test_starttls_with_a_private_ca(tls_smtp_server: tuple[SmtpServer, Path]) -> None:
    server, cert = tls_smtp_server
    config = SmtpConfig(server.host, server.port, "c@example.org", "starttls", ca_file=cert)
    delivery = deliver(EmailDestination(config, "a@example.org"), make_event(), FAST)
    assert (delivery.status, delivery.attempts) == ("delivered", 1)
    [message] = server.messages()
    assert message["To"] == "a@example.org"

    untrusted = SmtpConfig(server.host, server.port, "c@example.org", "starttls")
    refused = deliver(EmailDestination(untrusted, "b@example.org"), make_event(), FAST)
    assert refused.status == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in (refused.last_error or "")
    assert len(server.messages()) == 1


def test_subject_and_body_read_well() -> None:
    resolved = make_event("resolved", message="Congestion on Ring 2 for 20 min\nmore detail")
    assert subject(resolved) == "[CityOS resolved] Congestion on Ring 2 for 20 min"
    assert subject(make_event(severity="warning")) == "[CityOS warning] PM2.5 in Dongsi above 150"
    assert subject(make_event("updated")).startswith("[CityOS critical, updated] ")
    assert len(subject(make_event(message="x" * 500))) == 120
    text = body(resolved)
    assert text.startswith(f"Alert resolved at {resolved.at:%Y-%m-%d %H:%M:%S} UTC:")
    assert f"Resolved:     {resolved.at:%Y-%m-%d %H:%M:%S} UTC" in text
    assert resolved.event_id in text


def test_config_refuses_unknown_events_recipients_without_relay_and_twice_listed() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_EVENTS"):
        NotifierConfig(events=frozenset({"firing", "exploded"}))
    with pytest.raises(ConfigError, match="NOTIFY_SMTP_HOST"):
        NotifierConfig(email_to=("a@example.org",))
    with pytest.raises(ConfigError, match="twice"):
        NotifierConfig(webhooks=("http://h/x", "http://h/x")).destinations()


def test_config_from_settings() -> None:
    from cityos.settings import load_settings

    settings = load_settings(
        kafka_bootstrap="localhost:9092",
        database_url="postgresql://u:p@localhost/db",
        notify_webhooks=["https://hooks.example.org/a"],
        notify_webhook_secret="k",
        notify_smtp_host="smtp.example.org",
        notify_email_from="cityos@example.org",
        notify_email_to=["ops@example.org"],
        notify_max_attempts=3,
        notify_resend_batch=20,
        notify_resend_interval_s=5,
    )
    config = NotifierConfig.from_settings(settings)
    assert (config.resend_batch, config.resend_interval_s) == (20, 5.0)
    assert [d.name for d in config.destinations()] == [
        webhook_name("https://hooks.example.org/a"),
        "mailto:ops@example.org",
    ]
    assert config.retry.max_attempts == 3
    assert config.webhook_secret is not None
    assert config.webhook_secret.get_secret_value() == "k"


# --- integration: the ledger in PostgreSQL, the alerts topic in Kafka -------------------------


def deliveries(database_url: str, schema: str) -> dict[tuple[str, str], dict[str, Any]]:
    from psycopg.rows import dict_row

    from cityos.db import connect

    with connect(database_url, schema) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM alert_deliveries")
        return {(r["event_id"], r["destination"]): r for r in cur.fetchall()}


def ledger(database_url: str, schema: str) -> DeliveryLedger:
    from cityos.db import connect

    return DeliveryLedger(lambda: connect(database_url, schema))


@pytest.mark.integration
def test_a_dead_destination_holds_up_no_other_and_each_outcome_is_recorded(
    receiver: Receiver, smtp_server: SmtpServer, database_url: str, pg_schema: str
) -> None:
    config = NotifierConfig(
        webhooks=(f"{receiver.url}/flaky/1", f"{receiver.url}/slow", f"{receiver.url}/gone"),
        webhook_secret=SecretStr(SECRET),
        smtp=relay(smtp_server),
        email_to=("ops@example.org",),
        retry=RetryPolicy(max_attempts=3, backoff_s=0.01, max_elapsed_s=30),
        timeout_s=0.5,
    )
    notifier = Notifier(config, ledger(database_url, pg_schema))
    flaky, slow, gone, mail = (d.name for d in notifier.destinations)
    event = make_event()

    outcomes = {d.destination: d for d in notifier.handle(event)}

    assert {name: d.status for name, d in outcomes.items()} == {
        flaky: "delivered",
        slow: "failed",
        gone: "failed",
        mail: "delivered",
    }
    assert outcomes[flaky].attempts == 2
    assert outcomes[slow].attempts == 3
    assert (outcomes[slow].last_error or "").startswith("no answer within 0.5 s")
    assert (outcomes[gone].attempts, outcomes[gone].last_error) == (1, "HTTP 404 Not Found")
    rows = deliveries(database_url, pg_schema)
    assert {key[1]: row["status"] for key, row in rows.items()} == {
        name: d.status for name, d in outcomes.items()
    }
    assert rows[(event.event_id, slow)]["last_error"] == outcomes[slow].last_error
    # no answer may pass: sent again later; a 404 is a refusal for good: not sent again
    assert (rows[(event.event_id, slow)]["resend"], rows[(event.event_id, gone)]["resend"]) == (
        True,
        False,
    )
    assert rows[(event.event_id, mail)]["delivered_at"] is not None
    assert rows[(event.event_id, mail)]["event"]["alert"]["alert_id"] == event.alert.alert_id
    assert len(smtp_server.messages()) == 1

    # the same event again: only the failed ones are tried, once each (they are failing now)
    again = {d.destination: d for d in notifier.handle(event)}
    assert set(again) == {slow, gone}
    assert again[slow].attempts == 1
    rows = deliveries(database_url, pg_schema)
    assert rows[(event.event_id, slow)]["attempts"] == 4  # 3 + 1, over both tries
    assert rows[(event.event_id, flaky)]["attempts"] == 2  # delivered: left as it was
    assert len(receiver.got("/flaky/1")) == 2
    assert len(smtp_server.messages()) == 1
    notifier.close()


@pytest.mark.integration
def test_a_destination_down_for_a_while_gets_every_event_in_order_once_it_answers(
    receiver: Receiver, database_url: str, pg_schema: str
) -> None:
    config = NotifierConfig(webhooks=(f"{receiver.url}/flaky/6",), retry=FAST)  # 6 x 503
    notifier = Notifier(config, ledger(database_url, pg_schema))
    [hook] = (d.name for d in notifier.destinations)
    alert_a = f"alr_{uuid.uuid4().hex[:12]}"
    firing_a, resolved_a = make_event("firing", alert_a), make_event("resolved", alert_a)
    firing_b, firing_c = make_event("firing", severity="warning"), make_event("firing")

    [failed] = notifier.handle(firing_a)  # the outage begins: the whole retry budget, 4 x 503
    assert (failed.status, failed.attempts) == ("failed", 4)
    # while it is down, an event tries the oldest waiting one once and waits behind it
    assert [(d.event_id, d.status, d.attempts) for d in notifier.handle(firing_b)] == [
        (firing_a.event_id, "failed", 1),
        (firing_b.event_id, "failed", 0),
    ]
    assert [d.attempts for d in notifier.handle(resolved_a)] == [1, 0]  # the 6th 503
    assert (notifier.stats.failed, notifier.stats.held) == (3, 2)
    # it answers again: the next event brings the backlog first, oldest first, then itself
    outcomes = notifier.handle(firing_c)

    in_order = [firing_a, firing_b, resolved_a, firing_c]
    assert [(d.event_id, d.status) for d in outcomes] == [
        (e.event_id, "delivered") for e in in_order
    ]
    sent = [raw for _, raw in receiver.got("/flaky/6")[6:]]
    assert [AlertEvent.from_json(raw) for raw in sent] == in_order  # the same bodies, in order
    rows = deliveries(database_url, pg_schema)
    assert {key: (row["status"], row["resend"]) for key, row in rows.items()} == {
        (e.event_id, hook): ("delivered", False) for e in in_order
    }
    assert rows[(firing_a.event_id, hook)]["attempts"] == 4 + 1 + 1 + 1
    assert rows[(firing_b.event_id, hook)]["attempts"] == 1
    # a restarted notifier has nothing left to send again
    assert Notifier(config, ledger(database_url, pg_schema)).catch_up() == []
    assert len(receiver.got("/flaky/6")) == 6 + len(in_order)
    notifier.close()


@pytest.mark.integration
def test_cityos_alerts_deliveries_tells_a_final_failure_from_one_to_be_sent_again(
    receiver: Receiver, database_url: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from cityos.cli import alerts as alerts_cli
    from cityos.settings import get_settings

    config = NotifierConfig(
        webhooks=(f"{receiver.url}/flaky/1000", f"{receiver.url}/gone"), retry=FAST
    )
    notifier = Notifier(config, ledger(database_url, pg_schema))
    down, gone = (d.name for d in notifier.destinations)
    first, second = make_event("firing"), make_event("firing", severity="warning")
    notifier.handle(first)  # down: its whole retry budget; gone: a 404, final
    notifier.handle(second)  # down: held back behind the first; gone: a 404 again
    notifier.close()

    app = typer.Typer()
    alerts_cli.register(app)
    monkeypatch.setenv("CITYOS_DATABASE_URL", database_url)
    monkeypatch.setenv("CITYOS_DATABASE_SCHEMA", pg_schema)
    monkeypatch.setenv("CITYOS_KAFKA_BOOTSTRAP", "127.0.0.1:9")  # required; not used here
    monkeypatch.setattr(alerts_cli.console, "width", 400)  # one line per row
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        listed = runner.invoke(app, ["alerts", "deliveries"])
        pending = runner.invoke(app, ["alerts", "deliveries", "--status", "pending"])
        final = runner.invoke(app, ["alerts", "deliveries", "--status", "failed"])
        bad = runner.invoke(app, ["alerts", "deliveries", "--status", "lost"])
    finally:
        get_settings.cache_clear()

    def rows(output: str) -> set[tuple[str, str]]:
        """(alert id, status) of each row that names one of the two alerts."""
        found = set()
        for line in output.splitlines():
            cells = [c.strip() for c in line.split("│")]
            for event in (first, second):
                if event.alert.alert_id in cells:
                    found.add((event.alert.alert_id, cells[cells.index(event.alert.alert_id) + 2]))
        return found

    assert listed.exit_code == 0, listed.output
    assert rows(listed.output) == {
        (first.alert.alert_id, "failed, to resend"),
        (second.alert.alert_id, "failed, to resend"),
        (first.alert.alert_id, "failed"),
        (second.alert.alert_id, "failed"),
    }
    assert "held back behind earlier events" in listed.output
    assert pending.exit_code == 0 and down in pending.output and gone not in pending.output
    assert len(rows(pending.output)) == 2
    assert final.exit_code == 0 and gone in final.output  # failed, resent or not
    assert bad.exit_code == 2 and "--status 'lost': one of delivered, failed" in bad.output


@pytest.mark.integration
def test_same_event_twice_is_delivered_once(
    receiver: Receiver, smtp_server: SmtpServer, database_url: str, pg_schema: str
) -> None:
    config = NotifierConfig(
        webhooks=(f"{receiver.url}/ok",), smtp=relay(smtp_server), email_to=("a@example.org",)
    )
    event = make_event()
    first = Notifier(config, ledger(database_url, pg_schema))
    assert [d.status for d in first.handle(event)] == ["delivered", "delivered"]
    first.close()
    restarted = Notifier(config, ledger(database_url, pg_schema))  # e.g. after a restart
    assert restarted.handle(event) == []
    assert restarted.stats.duplicates == 2
    assert len(receiver.got("/ok")) == 1
    assert len(smtp_server.messages()) == 1
    assert len(deliveries(database_url, pg_schema)) == 2


@pytest.mark.integration
def test_old_and_unwanted_events_are_not_sent(
    receiver: Receiver, database_url: str, pg_schema: str
) -> None:
    config = NotifierConfig(webhooks=(f"{receiver.url}/ok",), max_event_age_s=3600)
    notifier = Notifier(config, ledger(database_url, pg_schema))
    stale = make_event()
    stale = AlertEvent(stale.type, stale.alert, stale.at - timedelta(hours=5))
    [skipped] = notifier.handle(stale)
    assert (skipped.status, skipped.attempts) == ("skipped", 0)
    assert "5.0 h old" in (skipped.last_error or "")
    assert notifier.handle(make_event("acknowledged")) == []
    assert notifier.stats.ignored == 1
    assert receiver.requests == []
    [row] = deliveries(database_url, pg_schema).values()
    assert row["status"] == "skipped"


@pytest.mark.integration
def test_stop_during_a_retry_leaves_that_delivery_for_the_next_start(
    receiver: Receiver, database_url: str, pg_schema: str
) -> None:
    config = NotifierConfig(
        webhooks=(f"{receiver.url}/ok", f"{receiver.url}/flaky/99"),
        retry=RetryPolicy(max_attempts=10, backoff_s=60, backoff_max_s=60, max_elapsed_s=600),
    )
    notifier = Notifier(config, ledger(database_url, pg_schema))
    ok, down = (d.name for d in notifier.destinations)
    event = make_event()

    def stop_once_it_waits_to_retry() -> None:
        deadline = time.monotonic() + 30
        while not receiver.got("/flaky/99") and time.monotonic() < deadline:
            time.sleep(0.05)
        notifier.stop()  # it now waits 30-60 s before its second attempt, or is about to

    stopper = threading.Thread(target=stop_once_it_waits_to_retry)
    stopper.start()
    with pytest.raises(Stopped):
        notifier.handle(event)
    stopper.join()
    rows = deliveries(database_url, pg_schema)
    assert set(rows) == {(event.event_id, ok)}  # the stopped one is not recorded as failed
    assert len(receiver.got("/flaky/99")) == 1
    assert down not in notifier.ledger.delivered(event.event_id)


@pytest.mark.integration
def test_notifier_delivers_the_alerts_topic_and_commits_offsets(
    settings, pg_schema: str, receiver: Receiver, smtp_server: SmtpServer
) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from cityos.topics import Topics

    settings = settings.model_copy(update={"database_schema": pg_schema})
    topic = Topics(settings.topic_prefix).alerts
    alert_id = f"alr_{uuid.uuid4().hex[:12]}"
    firing = make_event("firing", alert_id)
    updated = make_event("updated", alert_id, value=201.0)
    resolved = make_event("resolved", alert_id)
    other = make_event("firing", severity="warning", zone_id="tiantan")
    messages = [
        (firing.key, firing.to_json()),
        (updated.key, updated.to_json()),
        (b"junk", b"{not an alert event"),
        (resolved.key, resolved.to_json()),
        (other.key, other.to_json()),
    ]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for key, value in messages:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    config = NotifierConfig(
        webhooks=(f"{receiver.url}/flaky/1",),
        webhook_secret=SecretStr(SECRET),
        smtp=relay(smtp_server),
        email_to=("ops@example.org",),
        retry=FAST,
    )
    notifier = Notifier.from_settings(settings, config)
    handled, deadline = 0, time.monotonic() + 120  # a bound so a broken loop fails, not hangs
    while handled < len(messages) and time.monotonic() < deadline:
        handled += notifier.poll(0.5)
    notifier.close()
    assert handled == len(messages)

    sent = [firing, resolved, other]
    assert notifier.stats.delivered == 2 * len(sent)
    assert (notifier.stats.ignored, notifier.stats.bad, notifier.stats.failed) == (1, 1, 0)
    rows = deliveries(settings.database_url.get_secret_value(), pg_schema)
    assert {key[0] for key in rows} == {e.event_id for e in sent}
    assert {row["status"] for row in rows.values()} == {"delivered"}
    bodies = [raw for headers, raw in receiver.got("/flaky/1")[1:]]
    assert sorted(json.loads(raw)["event_id"] for raw in bodies) == sorted(e.event_id for e in sent)
    assert sorted(m["Subject"] for m in smtp_server.messages()) == [
        "[CityOS critical] PM2.5 in Dongsi above 150",
        "[CityOS resolved] PM2.5 in Dongsi above 150",
        "[CityOS warning] PM2.5 in Dongsi above 150",
    ]

    probe = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.topic_prefix + config.group_id,
            "enable.auto.commit": False,
        }
    )
    partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
    committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in committed]
    probe.close()
    assert [max(tp.offset, 0) for tp in committed] == ends
    assert sum(ends) == len(messages)

    # a notifier started again in the same group finds nothing left to do
    again = Notifier.from_settings(settings, config)
    deadline = time.monotonic() + 60
    while not again._consumer.assignment() and time.monotonic() < deadline:
        again.poll(0.5)
    assert again._consumer.assignment()
    for _ in range(4):
        again.poll(0.5)
    again.close()
    assert again.stats == type(again.stats)()
    assert len(smtp_server.messages()) == len(sent)


@pytest.mark.integration
def test_events_read_while_a_webhook_is_down_reach_it_when_it_answers_without_a_new_event(
    settings, pg_schema: str, receiver: Receiver
) -> None:
    """The notifier's own loop on the real topic: the offsets of the events read during the
    outage are committed, and its re-send pass gets them through once the webhook answers."""
    from confluent_kafka import Producer

    from cityos.topics import Topics

    settings = settings.model_copy(update={"database_schema": pg_schema})
    topic = Topics(settings.topic_prefix).alerts
    alert_id = f"alr_{uuid.uuid4().hex[:12]}"
    events = [
        make_event("firing", alert_id),
        make_event("firing", severity="warning", zone_id="tiantan"),
        make_event("resolved", alert_id),
    ]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for event in events:  # one partition: the order they are read in is the order sent
        producer.produce(topic, key=event.key, value=event.to_json(), partition=0)
    assert producer.flush(30) == 0

    config = NotifierConfig(
        webhooks=(f"{receiver.url}/flaky/8",), retry=FAST, resend_interval_s=0.2
    )
    notifier = Notifier.from_settings(settings, config)
    runner = threading.Thread(target=notifier.run, args=(0.2,))
    runner.start()
    try:
        deadline = time.monotonic() + 60  # joining the group takes seconds; a bound, not a wait
        while len(receiver.got("/flaky/8")) < 8 + len(events) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        notifier.stop()
        runner.join(30)
        notifier.close()
    assert not runner.is_alive()

    sent = [AlertEvent.from_json(raw) for _, raw in receiver.got("/flaky/8")[8:]]
    assert sent == events
    rows = deliveries(settings.database_url.get_secret_value(), pg_schema)
    assert {key[0]: row["status"] for key, row in rows.items()} == {
        e.event_id: "delivered" for e in events
    }
    assert notifier.stats.held >= 1  # some were read while it was down, and waited
    assert committed_offsets(settings, topic, config.group_id) == [len(events)]


def committed_offsets(settings: Any, topic: str, group_id: str) -> list[int]:
    """The offsets the notifier's group committed on the partitions that have messages."""
    from confluent_kafka import Consumer, TopicPartition

    probe = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": settings.topic_prefix + group_id,
            "enable.auto.commit": False,
        }
    )
    partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
    committed = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
    ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in committed]
    probe.close()
    return [tp.offset for tp, end in zip(committed, ends, strict=True) if end > 0]
