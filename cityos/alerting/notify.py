"""The notifier: alert events from the Kafka ``alerts`` topic to webhooks and e-mail.

For each message of the topic (its own consumer group, offsets committed by hand):

1. an event whose type is not in ``NotifierConfig.events`` (by default ``firing`` and
   ``resolved``) or that is not an event at all (logged as ``topic[partition] offset=N``) is
   passed over;
2. the destinations that already have this ``event_id`` as ``delivered`` in ``alert_deliveries``
   are left out, so a replay after a restart never sends twice what arrived;
3. every other destination gets the event in its own thread, retried with exponential back-off
   and jitter until it arrives, fails for good (HTTP 4xx, SMTP 5xx), has had
   ``retry.max_attempts`` attempts or ``retry.max_elapsed_s`` would pass; a slow or dead
   destination holds up no other;
4. each outcome is upserted into ``alert_deliveries`` as soon as it is known (a ``delivered`` row
   is never overwritten), and the offset is committed only once all of them are there.

Nothing is lost to an outage: a delivery that failed in a way that may pass (no answer, refused
connection, HTTP 5xx/408/425/429, SMTP 4xx) is recorded with ``resend``, and the destination's
``resend`` rows are sent again, oldest first, before any newer event goes to it. While a
destination has such rows, every event for it first runs a re-send pass over them; a newer event
waits behind them (recorded ``failed`` with 0 attempts, ``resend``, "held back") until the pass
has got them all through, so each alert's events arrive in the order they were read. A pass ends
at the first failure that may pass (the destination is still down: the rest wait), after
``resend_batch`` rows or once it has used ``retry.max_elapsed_s``; a refusal for good (HTTP 4xx,
SMTP 5xx) is final and holds nothing back. ``run()`` also runs a pass every ``resend_interval_s``,
so a destination that answers again gets its backlog without waiting for the next alert. One
notifier at a time re-sends a destination's backlog (an advisory lock in PostgreSQL).

A destination whose last delivery failed gets one attempt per event (the oldest of its backlog)
until it answers again, so an outage does not slow the stream down by the whole retry budget for
every event; once it answers, the backlog gets the full retry policy. When ``max_event_age_s`` is
set, an event whose ``at`` (the time of the observation that caused the transition) is older than
that when read, or when its turn to be re-sent comes, is recorded as ``skipped`` rather than sent
late; off by default, since replayed historical data carries old times.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import psycopg
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from cityos.alerting.destinations import (
    DeliveryError,
    Destination,
    EmailDestination,
    NotifyError,
    SmtpConfig,
    WebhookDestination,
)
from cityos.alerting.events import EVENT_TYPES, AlertEvent
from cityos.errors import ConfigError

log = logging.getLogger(__name__)

CONSUMER_GROUP = "cityos-notifier"
DEFAULT_EVENTS = ("firing", "resolved")
Status = Literal["delivered", "failed", "skipped"]
HELD = "held back behind earlier events not yet delivered to this destination"
RESEND_LOCK = "cityos alert_deliveries resend "  # + schema + destination: who re-sends its backlog


@dataclass(frozen=True)
class RetryPolicy:
    """How long one delivery keeps trying: attempts, back-off and a bound on the total time.

    After the n-th failed attempt it waits ``min(backoff_max_s, backoff_s * 2**(n-1))``, of which
    the upper half is random (jitter, so many notifiers do not retry in step), or what the
    receiver asked for with Retry-After when that is longer (never above ``backoff_max_s``).
    It gives up when the next wait would end past ``max_elapsed_s`` since the first attempt, so a
    delivery takes at most ``max_elapsed_s`` plus one attempt's timeout.
    """

    max_attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_elapsed_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.backoff_s < 0 or self.max_elapsed_s < 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, failures: int, rng: random.Random, asked_s: float | None = None) -> float:
        cap = min(self.backoff_max_s, self.backoff_s * 2 ** (failures - 1))
        wait = cap / 2 + rng.uniform(0, cap / 2)
        if asked_s is not None:
            wait = max(wait, min(asked_s, self.backoff_max_s))
        return wait


ONE_ATTEMPT = RetryPolicy(max_attempts=1, max_elapsed_s=0)


@dataclass(frozen=True)
class NotifierConfig:
    """Where alert events go and how hard the notifier tries."""

    webhooks: tuple[str, ...] = ()
    webhook_secret: SecretStr | None = None  # signs every webhook body (X-CityOS-Signature)
    smtp: SmtpConfig | None = None
    email_to: tuple[str, ...] = ()
    events: frozenset[str] = frozenset(DEFAULT_EVENTS)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 10.0  # one attempt (HTTP request, SMTP session)
    max_event_age_s: float | None = None  # older events are 'skipped'; None: send any
    group_id: str = CONSUMER_GROUP
    resend_batch: int = 100  # failed events a re-send pass takes per destination, oldest first
    resend_interval_s: float = 30.0  # how often run() tries a pass besides those of new events

    def __post_init__(self) -> None:
        unknown = set(self.events) - set(EVENT_TYPES)
        if unknown:
            raise ConfigError(
                "CITYOS_NOTIFY_EVENTS",
                f"unknown event types {sorted(unknown)}; expected some of {list(EVENT_TYPES)}",
            )
        if self.email_to and self.smtp is None:
            raise ConfigError("CITYOS_NOTIFY_SMTP_HOST", "e-mail recipients are set but no relay")
        if self.resend_batch < 1 or self.resend_interval_s < 0:
            raise ValueError(f"invalid re-send bounds in {self}")

    @classmethod
    def from_settings(cls, settings: Any) -> NotifierConfig:
        """From the ``notify_*`` fields of :class:`cityos.settings.Settings`."""
        smtp = None
        if settings.notify_smtp_host:
            if not settings.notify_email_from:
                raise ConfigError("CITYOS_NOTIFY_EMAIL_FROM", "required with an SMTP relay")
            smtp = SmtpConfig(
                host=settings.notify_smtp_host,
                port=settings.notify_smtp_port,
                sender=settings.notify_email_from,
                security=settings.notify_smtp_security,
                user=settings.notify_smtp_user,
                password=settings.notify_smtp_password,
                ca_file=settings.notify_smtp_ca_file,
            )
        return cls(
            webhooks=tuple(settings.notify_webhooks),
            webhook_secret=settings.notify_webhook_secret,
            smtp=smtp,
            email_to=tuple(settings.notify_email_to),
            events=frozenset(settings.notify_events),
            retry=RetryPolicy(
                max_attempts=settings.notify_max_attempts,
                backoff_s=settings.notify_backoff_s,
                backoff_max_s=settings.notify_backoff_max_s,
                max_elapsed_s=settings.notify_max_elapsed_s,
            ),
            timeout_s=settings.notify_timeout_s,
            max_event_age_s=settings.notify_max_event_age_s,
            resend_batch=settings.notify_resend_batch,
            resend_interval_s=settings.notify_resend_interval_s,
        )

    def destinations(self) -> list[Destination]:
        found: list[Destination] = [
            WebhookDestination(url, secret=self.webhook_secret, timeout_s=self.timeout_s)
            for url in self.webhooks
        ]
        if self.smtp is not None:
            found += [
                EmailDestination(self.smtp, to, timeout_s=self.timeout_s) for to in self.email_to
            ]
        names = [d.name for d in found]
        if len(set(names)) != len(names):
            raise ConfigError("CITYOS_NOTIFY_*", f"a destination is listed twice: {names}")
        return found


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending one event to one destination (a row of ``alert_deliveries``)."""

    event_id: str
    destination: str
    status: Status
    attempts: int
    first_attempt_at: datetime
    last_attempt_at: datetime
    last_error: str | None = None
    delivered_at: datetime | None = None
    resend: bool = False  # failed in a way that may pass (or held back): to be sent again


class Stopped(NotifyError):
    """The notifier was asked to stop while a delivery waited to retry."""


def _now() -> datetime:
    return datetime.now(UTC)


def deliver(
    destination: Destination,
    event: AlertEvent,
    policy: RetryPolicy,
    *,
    rng: random.Random | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], datetime] = _now,
) -> Delivery:
    """Send ``event`` to ``destination``, retrying by ``policy``; raises Stopped if told to."""
    rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
    stop = stop or threading.Event()
    started, first_at = time.monotonic(), clock()
    attempts = 0
    while True:
        attempts += 1
        try:
            destination.send(event)
        except DeliveryError as err:
            error = err
        else:
            now = clock()
            return Delivery(
                event.event_id, destination.name, "delivered", attempts, first_at, now, None, now
            )
        reason = error.reason
        if not error.retryable:
            break
        if attempts >= policy.max_attempts:
            reason += f" (gave up after {attempts} attempt{'s' * (attempts > 1)})"
            break
        wait = policy.delay(attempts, rng, error.retry_after_s)
        if time.monotonic() - started + wait > policy.max_elapsed_s:
            reason += f" (gave up after {attempts} attempts within {policy.max_elapsed_s:g} s)"
            break
        log.info("%s: %s, attempt %d, next in %.1f s", destination.name, reason, attempts, wait)
        if stop.wait(wait):
            raise Stopped(f"stopped while retrying {destination.name}")
    log.warning("%s: event %s not delivered: %s", destination.name, event.event_id, reason)
    return Delivery(
        event.event_id,
        destination.name,
        "failed",
        attempts,
        first_at,
        clock(),
        reason,
        resend=error.retryable,
    )


Connect = Callable[[], AbstractContextManager[psycopg.Connection]]


class DeliveryLedger:
    """``alert_deliveries``: what was delivered where, so nothing is sent twice."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    def delivered(self, event_id: str) -> set[str]:
        """The destinations that have this event."""
        with self._connect() as conn:
            return _delivered(conn, event_id)

    def progress(self, event_id: str) -> tuple[set[str], set[str]]:
        """The destinations that have this event, and those with failed events to send again."""
        with self._connect() as conn:
            return _delivered(conn, event_id), _behind(conn)

    def behind(self) -> set[str]:
        """The destinations with failed events to send again."""
        with self._connect() as conn:
            return _behind(conn)

    @contextmanager
    def backlog(self, destination: str, limit: int) -> Iterator[list[AlertEvent] | None]:
        """The destination's events to send again, oldest first (at most ``limit``), while this
        notifier holds its re-send lock; None when another one holds it."""
        with self._connect() as conn:  # the lock lasts the transaction: the whole pass
            locked = conn.execute(
                "SELECT pg_try_advisory_xact_lock("
                " hashtextextended(%s || current_schema() || ' ' || %s, 0))",
                (RESEND_LOCK, destination),
            ).fetchone()
            if locked is None or not locked[0]:
                yield None
                return
            rows = conn.execute(
                "SELECT event::text FROM alert_deliveries WHERE destination = %s AND resend"
                " ORDER BY first_attempt_at, event_id LIMIT %s",
                (destination, limit),
            ).fetchall()
            yield [AlertEvent.from_json(row[0]) for row in rows]

    def record(self, delivery: Delivery, event: AlertEvent) -> None:
        """Upsert one outcome; attempts add up over replays and a delivered row stays as it is
        (a held-back event keeps its place: first_attempt_at is that of its first record)."""
        with self._connect() as conn:
            conn.execute(
                """
                INSERT INTO alert_deliveries AS d (event_id, destination, alert_id, event_type,
                  status, attempts, last_error, first_attempt_at, last_attempt_at, delivered_at,
                  event, resend)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                ON CONFLICT (event_id, destination) DO UPDATE SET
                  status = EXCLUDED.status,
                  attempts = d.attempts + EXCLUDED.attempts,
                  last_error = EXCLUDED.last_error,
                  last_attempt_at = EXCLUDED.last_attempt_at,
                  delivered_at = EXCLUDED.delivered_at,
                  resend = EXCLUDED.resend
                WHERE d.status <> 'delivered'
                """,
                (
                    delivery.event_id,
                    delivery.destination,
                    event.alert.alert_id,
                    event.type,
                    delivery.status,
                    delivery.attempts,
                    delivery.last_error,
                    delivery.first_attempt_at,
                    delivery.last_attempt_at,
                    delivery.delivered_at,
                    Jsonb(orjson.loads(event.to_json())),
                    delivery.status == "failed" and delivery.resend,
                ),
            )


def _delivered(conn: psycopg.Connection, event_id: str) -> set[str]:
    rows = conn.execute(
        "SELECT destination FROM alert_deliveries WHERE event_id = %s AND status = 'delivered'",
        (event_id,),
    )
    return {row[0] for row in rows.fetchall()}


def _behind(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT DISTINCT destination FROM alert_deliveries WHERE resend")
    return {row[0] for row in rows.fetchall()}


@dataclass
class NotifyStats:
    delivered: int = 0
    failed: int = 0
    skipped: int = 0  # too old to send
    held: int = 0  # (event, destination) pairs held back behind earlier undelivered events
    duplicates: int = 0  # (event, destination) pairs already delivered
    ignored: int = 0  # event types not notified
    bad: int = 0  # messages that are not alert events


class Notifier:
    """Delivers the alerts topic's events to the configured destinations (see the module doc).

    ``poll()`` handles at most one message; ``run()`` polls until ``stop()``.
    """

    def __init__(
        self,
        config: NotifierConfig,
        ledger: DeliveryLedger,
        consumer: Any = None,
        *,
        destinations: Iterable[Destination] | None = None,
        clock: Callable[[], datetime] = _now,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.destinations = list(config.destinations() if destinations is None else destinations)
        self._consumer = consumer  # confluent_kafka.Consumer, subscribed, no auto commit
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._stop = threading.Event()
        self._failing: set[str] = set()  # destinations whose last delivery failed
        self._lock = threading.Lock()  # _failing and stats, noted from the delivery threads
        self.stats = NotifyStats()

    @classmethod
    def from_settings(cls, settings: Any, config: NotifierConfig | None = None) -> Notifier:
        """Consumer on ``Topics(settings.topic_prefix).alerts``; database of the settings."""
        from cityos.db import connect
        from cityos.topics import Topics

        config = config or NotifierConfig.from_settings(settings)
        destinations = config.destinations()  # a bad one fails before Kafka is asked
        url, schema = settings.database_url.get_secret_value(), settings.database_schema
        consumer = alerts_consumer(
            settings.kafka_bootstrap,
            Topics(settings.topic_prefix).alerts,
            settings.topic_prefix + config.group_id,
            # between two polls: a re-send pass of run() and one of handle(), each up to about
            # two deliveries' budget, and the event itself
            max_poll_interval_s=5 * (config.retry.max_elapsed_s + config.timeout_s),
        )
        ledger = DeliveryLedger(lambda: connect(url, schema))
        return cls(config, ledger, consumer, destinations=destinations)

    def stop(self) -> None:
        """Ask ``run()`` to return; a delivery waiting to retry gives up its event (unrecorded,
        uncommitted: it is read again at the next start)."""
        self._stop.set()

    def close(self) -> None:
        for destination in self.destinations:
            destination.close()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _policy(self, destination: Destination) -> RetryPolicy:
        return ONE_ATTEMPT if destination.name in self._failing else self.config.retry

    def _note(self, delivery: Delivery) -> None:
        name = delivery.destination
        with self._lock:
            if delivery.status == "delivered":
                self.stats.delivered += 1
                if name in self._failing:
                    log.info("%s answers again", name)
                    self._failing.discard(name)
            elif delivery.status == "failed" and delivery.attempts == 0:
                self.stats.held += 1  # not tried: says nothing of the destination
            elif delivery.status == "failed":
                self.stats.failed += 1
                if name not in self._failing:
                    log.warning("%s is failing: one attempt per event until it answers", name)
                    self._failing.add(name)
            else:
                self.stats.skipped += 1

    def handle(self, event: AlertEvent) -> list[Delivery]:
        """Deliver one event where it has not arrived yet, after the failed events of each such
        destination (module doc); the outcomes, each recorded, re-sent ones included."""
        if event.type not in self.config.events:
            self.stats.ignored += 1
            return []
        done, behind = self.ledger.progress(event.event_id)
        pending = [d for d in self.destinations if d.name not in done]
        self.stats.duplicates += len(self.destinations) - len(pending)
        if not pending:
            return []
        age_s = (self._clock() - event.at).total_seconds()
        max_age = self.config.max_event_age_s
        if max_age is not None and age_s > max_age:
            now = self._clock()
            reason = f"the event was {age_s / 3600:.1f} h old when read (max {max_age:g} s)"
            log.warning("event %s not sent: %s", event.event_id, reason)
            skipped = [
                Delivery(event.event_id, d.name, "skipped", 0, now, now, reason) for d in pending
            ]
            return [self._record(delivery, event) for delivery in skipped]
        outcomes: list[Delivery] = []
        with ThreadPoolExecutor(len(pending), thread_name_prefix="notify") as pool:
            futures = [pool.submit(self._send, d, event, d.name in behind) for d in pending]
            stopped = None
            for future in as_completed(futures):
                try:
                    outcomes += future.result()
                except Stopped as err:  # the others still get recorded
                    stopped = err
        if stopped is not None:
            raise stopped
        return outcomes

    def catch_up(self) -> list[Delivery]:
        """A re-send pass for every destination with failed events to send again, each in its
        own thread; the outcomes, each recorded."""
        behind = self.ledger.behind()
        todo = [d for d in self.destinations if d.name in behind]
        if not todo:
            return []
        outcomes: list[Delivery] = []
        with ThreadPoolExecutor(len(todo), thread_name_prefix="notify") as pool:
            for future in as_completed([pool.submit(self._resend, d) for d in todo]):
                outcomes += future.result()[0]
        return outcomes

    def _send(self, destination: Destination, event: AlertEvent, behind: bool) -> list[Delivery]:
        """``event`` to one destination, after its backlog when it has one; in its own thread."""
        outcomes: list[Delivery] = []
        if behind:
            outcomes, through = self._resend(destination)
            if any(d.event_id == event.event_id for d in outcomes):
                return outcomes  # the event was one of them (read again)
            if not through:  # it waits its turn, behind them
                now = self._clock()
                held = Delivery(
                    event.event_id, destination.name, "failed", 0, now, now, HELD, resend=True
                )
                return [*outcomes, self._record(held, event)]
        policy = self._policy(destination)
        delivery = deliver(destination, event, policy, rng=self._rng, stop=self._stop)
        return [*outcomes, self._record(delivery, event)]

    def _resend(self, destination: Destination) -> tuple[list[Delivery], bool]:
        """Send the destination's failed events again, oldest first; the outcomes, and whether
        it has none left. Stops at a failure that may pass (still down), after ``resend_batch``
        events or once the pass has used ``retry.max_elapsed_s``: the rest wait for the next."""
        outcomes: list[Delivery] = []
        limit, max_age = self.config.resend_batch, self.config.max_event_age_s
        started = time.monotonic()
        with self.ledger.backlog(destination.name, limit + 1) as backlog:
            if backlog is None:
                log.info(
                    "%s: another notifier is sending its failed events again", destination.name
                )
                return outcomes, False
            for event in backlog[:limit]:
                now = self._clock()
                age_s = (now - event.at).total_seconds()
                if max_age is not None and age_s > max_age:
                    reason = (
                        f"the event was {age_s / 3600:.1f} h old when re-sent (max {max_age:g} s)"
                    )
                    skipped = Delivery(
                        event.event_id, destination.name, "skipped", 0, now, now, reason
                    )
                    outcomes.append(self._record(skipped, event))
                    continue
                policy = self._policy(destination)
                delivery = deliver(destination, event, policy, rng=self._rng, stop=self._stop)
                outcomes.append(self._record(delivery, event))
                if delivery.status == "failed" and delivery.resend:
                    return outcomes, False
                if time.monotonic() - started > self.config.retry.max_elapsed_s:
                    return outcomes, False
            if outcomes:
                log.info("%s: %d failed events sent again", destination.name, len(outcomes))
            return outcomes, len(backlog) <= limit

    def _record(self, delivery: Delivery, event: AlertEvent) -> Delivery:
        self.ledger.record(delivery, event)
        self._note(delivery)
        return delivery

    def poll(self, timeout_s: float = 1.0) -> int:
        """Handle the next message, if one comes within ``timeout_s``; returns 1 or 0."""
        from confluent_kafka import KafkaException, TopicPartition

        assert self._consumer is not None
        message = self._consumer.poll(timeout_s)
        if message is None:
            return 0
        if message.error():
            log.warning("alerts topic: %s", message.error())
            return 0
        where = f"{message.topic()}[{message.partition()}] offset={message.offset()}"
        try:
            event = AlertEvent.from_json(message.value() or b"")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.error("%s skipped: not an alert event: %s", where, err)
            self.stats.bad += 1
        else:
            again = TopicPartition(message.topic(), message.partition(), message.offset())
            try:
                self.handle(event)
            except Stopped:
                log.info("%s left for the next start: stopped while retrying", where)
                self._consumer.seek(again)
                return 0
            except psycopg.OperationalError as err:
                log.error("%s not done, read again later: %s", where, err)
                self._consumer.seek(again)
                self._stop.wait(1.0)  # the database is away: do not spin
                return 0
        try:
            self._consumer.commit(message=message, asynchronous=False)
        except KafkaException as err:  # the deliveries are recorded: a replay sends nothing twice
            log.warning("%s done, offset not committed: %s", where, err)
        return 1

    def run(self, timeout_s: float = 1.0) -> NotifyStats:
        """Poll until ``stop()``; the counts so far."""
        log.info(
            "notifying %s of %s events",
            ", ".join(d.name for d in self.destinations) or "nobody",
            "/".join(sorted(self.config.events)),
        )
        last_pass = float("-inf")  # a pass at once: failed events of before a restart
        while not self._stop.is_set():
            self.poll(timeout_s)
            if time.monotonic() - last_pass < self.config.resend_interval_s:
                continue
            last_pass = time.monotonic()
            try:
                self.catch_up()
            except Stopped:
                log.info("stopped while sending failed events again: the rest wait")
            except psycopg.OperationalError as err:
                log.error("failed events not sent again, the database is away: %s", err)
        return self.stats


def alerts_consumer(
    bootstrap: str, topic: str, group_id: str, *, max_poll_interval_s: float = 300.0
) -> Any:
    """A confluent-kafka consumer of ``topic`` in ``group_id`` (several notifiers share the
    partitions), from the group's committed offsets, else the earliest; no auto commit."""
    from confluent_kafka import Consumer, KafkaException

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": "cityos-notifier",
            # one event may take the whole retry budget between two polls
            "max.poll.interval.ms": max(300_000, int(max_poll_interval_s * 1000) + 60_000),
            "logger": logging.getLogger("kafka.librdkafka"),  # not raw to stderr
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
    except KafkaException as err:
        consumer.close()
        raise NotifyError(f"cannot reach Kafka at {bootstrap}: {err}") from err
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        consumer.close()
        raise NotifyError(f"the alerts topic {topic} does not exist (`cityos up` creates it)")
    consumer.subscribe([topic])
    return consumer
