"""Event producers: one small interface, a kafka-python and a confluent-kafka implementation.

Both are idempotent (``enable_idempotence``, ``acks=all``), key by ``refDevice``, stamp
``producedAt`` at send time, and count deliveries: a failed delivery is logged and counted,
never silent. ``send_raw`` exists for the load generator's malformed events.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cityos import metrics
from cityos.errors import CityOSError
from cityos.events import encode, key_of, stamp_produced

log = logging.getLogger(__name__)

Client = Literal["kafka-python", "confluent"]

# Throughput-minded batching: a few ms of linger fills 64 KiB batches at source rates,
# and adds no visible latency at twin/replay rates.
LINGER_MS = 10
BATCH_BYTES = 64 * 1024
# Below the broker's default message.max.bytes (1 MiB): an oversize event then fails locally and
# is counted, instead of being rejected by the broker, which an idempotent kafka-python
# producer treats as fatal for every batch in flight.
MAX_MESSAGE_BYTES = 1_000_000


class ProducerError(CityOSError):
    """The producer could not be created or could not flush its queue in time."""


@dataclass
class DeliveryStats:
    """Counts of deliveries; updated from the client's I/O thread."""

    sent: int = 0
    failed: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def ok(self, topic: str | None = None) -> None:
        with self._lock:
            self.sent += 1
        if topic is not None:  # issue 6: Prometheus counter per topic
            metrics.PRODUCER_SENT.labels(topic).inc()

    def fail(self, topic: str, key: bytes | None, error: object) -> None:
        with self._lock:
            self.failed += 1
            self.last_error = str(error)
        metrics.PRODUCER_FAILED.labels(topic).inc()  # issue 6: Prometheus counter per topic
        # the first failures in full, then every 1000th so a dead broker does not flood the log
        if self.failed <= 10 or self.failed % 1000 == 0:
            log.error(
                "delivery to %s failed (key=%r, %d failures so far): %s",
                topic,
                key,
                self.failed,
                error,
            )


class EventProducer(Protocol):
    stats: DeliveryStats

    def send(self, topic: str, event: dict[str, Any]) -> None:
        """Stamp producedAt, encode and enqueue one event keyed by its refDevice."""

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Enqueue bytes as they are (malformed-event tests)."""

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self) -> None: ...


class KafkaPythonProducer:
    """kafka-python's KafkaProducer with delivery accounting."""

    def __init__(self, bootstrap: str, *, client_id: str = "cityos-source", **overrides: Any):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.stats = DeliveryStats()
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap.split(","),
            "client_id": client_id,
            "enable_idempotence": True,
            "acks": "all",
            "linger_ms": LINGER_MS,
            "batch_size": BATCH_BYTES,
            "max_in_flight_requests_per_connection": 5,
            "max_request_size": MAX_MESSAGE_BYTES,
        }
        config.update(overrides)
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as err:
            raise ProducerError(f"cannot reach Kafka at {bootstrap}: {err}") from err

    def send(self, topic: str, event: dict[str, Any]) -> None:
        stamped = stamp_produced(event)
        self.send_raw(topic, key_of(stamped), encode(stamped))

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value)
        except Exception as err:  # noqa: BLE001 - buffer full, too large, closed: count it
            self.stats.fail(topic, key, err)
            return
        future.add_callback(lambda _meta: self.stats.ok(topic))
        future.add_errback(lambda err: self.stats.fail(topic, key, err))

    def flush(self, timeout: float | None = None) -> None:
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError as err:
            raise ProducerError(f"flush did not finish within {timeout} s") from err

    def close(self) -> None:
        self._producer.close(timeout=30)


class ConfluentProducer:
    """confluent-kafka (librdkafka) with the same behaviour, for comparison and high rates."""

    def __init__(self, bootstrap: str, *, client_id: str = "cityos-source", **overrides: Any):
        from confluent_kafka import KafkaException, Producer

        self.stats = DeliveryStats()
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": LINGER_MS,
            "batch.size": BATCH_BYTES,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            # librdkafka's own log lines through Python logging (the CLI quiets "kafka"), not
            # printed raw to stderr
            "logger": logging.getLogger("kafka.librdkafka"),
        }
        config.update(overrides)
        try:
            self._producer = Producer(config)
        except KafkaException as err:
            raise ProducerError(f"cannot create a producer for {bootstrap}: {err}") from err

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.stats.ok(msg.topic())
        else:
            self.stats.fail(msg.topic(), msg.key(), err)

    def send(self, topic: str, event: dict[str, Any]) -> None:
        stamped = stamp_produced(event)
        self.send_raw(topic, key_of(stamped), encode(stamped))

    def send_raw(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.1)  # local queue full: serve callbacks, then retry
            except Exception as err:  # noqa: BLE001 - too large, unknown topic: count it
                self.stats.fail(topic, key, err)
                break
        self._producer.poll(0)

    def flush(self, timeout: float | None = None) -> None:
        left = self._producer.flush(-1 if timeout is None else timeout)
        if left:
            raise ProducerError(f"{left} messages still queued after {timeout} s")

    def close(self) -> None:
        self._producer.flush(30)


PRODUCERS: dict[str, type[KafkaPythonProducer] | type[ConfluentProducer]] = {
    "kafka-python": KafkaPythonProducer,
    "confluent": ConfluentProducer,
}


def make_producer(bootstrap: str, client: str = "kafka-python", **overrides: Any) -> EventProducer:
    """A producer of the named client library (``CITYOS_PRODUCER_CLIENT``).

    Measured at our load (150,000 TrafficFlowObserved events, acks=all, idempotent, 2 cores;
    `make bench-streaming`): confluent-kafka sent 64,354 events/s, kafka-python 6,693. Yet
    kafka-python stays the default for the sources: in the broker-restart test
    (tests/integration/test_reliability.py) kafka-python lost nothing, while the confluent
    producer reported 259 of 418 messages as timed out after the restart (once in a full-suite
    run; 3 of 3 runs of the test alone passed: intermittent). The load generator
    and the benchmark, which need the rate, use confluent-kafka.
    """
    try:
        cls = PRODUCERS[client]
    except KeyError:
        raise ProducerError(f"unknown client {client!r}; one of {', '.join(PRODUCERS)}") from None
    return cls(bootstrap, **overrides)
