"""The service's actuator: approved signal changes go to the Kafka control topic.

``KafkaActuator`` hands a change on and returns None: the action is ``sent`` until the
controller that reads the topic (``cityos.streaming.control.ControlLoop`` beside the SUMO twin)
confirms it. A message is keyed by intersection id, so the changes of one signal keep their
order; it is acknowledged by every in-sync replica (acks=all, idempotent) before ``apply``
returns, and a change that could not be delivered raises, so the approval records a failure.
A broker that cannot be reached when the service starts is tried again at the next change: an
approval meanwhile fails with the reason (and holds nothing), and the first one after the broker
is back goes through, without a restart.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cityos import metrics
from cityos.nlq.actions import Action, Applied
from cityos.nlq.errors import NLQError
from cityos.settings import Settings
from cityos.streaming.control import ControlChange
from cityos.topics import Topics

log = logging.getLogger(__name__)

DELIVERY_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_MS = 3000


class ActuatorError(NLQError):
    """The control topic could not be reached or did not take the change."""


class KafkaActuator:
    """Publishes approved changes (and rollbacks) to ``Topics(prefix).control``."""

    def __init__(self, bootstrap: str, topic: str, producer: Any = None) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._producer = producer  # made at the first change when not given
        self._lock = threading.Lock()  # the service approves from a thread pool

    @classmethod
    def connect(cls, settings: Settings) -> KafkaActuator:
        """The actuator for the settings' broker, connected now if it can be reached (logged if
        not: each change then tries again)."""
        actuator = cls(settings.kafka_bootstrap, Topics(settings.topic_prefix).control)
        try:
            with actuator._lock:
                actuator._connected()
        except ActuatorError as err:
            log.warning("%s; approved signal changes fail until it can be reached", err)
        return actuator

    def _connected(self) -> Any:
        """The producer, made now if there is none yet (ActuatorError: Kafka cannot be reached).
        Called under the lock."""
        if self._producer is None:
            self._producer = _producer(self._bootstrap)
        return self._producer

    def apply(self, action: Action) -> Applied | None:
        self.send(_change(action, float(action.params["green_s"]), "apply"))
        return None

    def rollback(self, action: Action, green_s: float) -> Applied | None:
        self.send(_change(action, green_s, "rollback"))
        return None

    def send(self, change: ControlChange) -> None:
        """Publish one change and wait until the broker has it."""
        from kafka.errors import KafkaError

        with self._lock:
            try:
                producer = self._connected()
            except ActuatorError:
                metrics.ACTUATOR_SENDS.labels(change.kind, "error").inc()  # issue 6
                raise
            try:
                future = producer.send(self.topic, key=change.key, value=change.encode())
                meta = future.get(timeout=DELIVERY_TIMEOUT_S)
            except KafkaError as err:
                metrics.ACTUATOR_SENDS.labels(change.kind, "error").inc()  # issue 6
                raise ActuatorError(
                    f"the control topic {self.topic} did not take it: {err}"
                ) from err
        metrics.ACTUATOR_SENDS.labels(change.kind, "ok").inc()  # issue 6
        log.info(
            "%s of %s sent to %s[%d] offset=%d",
            change.kind,
            change.action_id,
            meta.topic,
            meta.partition,
            meta.offset,
        )

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)


def _change(action: Action, green_s: float, kind: str) -> ControlChange:
    if action.intersection_id is None:
        raise ActuatorError(f"action {action.action_id} names no intersection")
    return ControlChange(
        action_id=action.action_id,
        intersection_id=action.intersection_id,
        phase_index=int(action.params["phase_index"]),
        green_s=green_s,
        kind=kind,  # type: ignore[arg-type]
    )


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    try:
        return KafkaProducer(
            bootstrap_servers=bootstrap.split(","),
            client_id="cityos-nlq-actuator",
            acks="all",
            enable_idempotence=True,
            retries=5,
            request_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000) // 2,
            delivery_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000),
            bootstrap_timeout_ms=CONNECT_TIMEOUT_MS,
        )
    except KafkaError as err:
        raise ActuatorError(f"cannot reach Kafka at {bootstrap}: {err}") from err
