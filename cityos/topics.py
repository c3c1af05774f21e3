"""Every Kafka topic CityOS uses, named in one place.

A prefix isolates one deployment or one test from another on a shared broker.
"""

from __future__ import annotations

from dataclasses import dataclass

# A dead letter carries the original bytes plus reason headers, so its topic takes messages
# larger than any source topic would (the broker default is about 1 MiB): a 1 MB event that is
# rejected must still fit in the dead-letter topic, never stop the job.
DLQ_MAX_MESSAGE_BYTES = 8 << 20


@dataclass(frozen=True)
class Topics:
    prefix: str = ""

    def _name(self, base: str) -> str:
        return f"{self.prefix}{base}"

    @property
    def traffic(self) -> str:
        """TrafficFlowObserved events, keyed by sensor id."""
        return self._name("traffic")

    @property
    def environment(self) -> str:
        """AirQualityObserved and NoiseLevelObserved events, keyed by sensor id."""
        return self._name("environment")

    @property
    def alerts(self) -> str:
        return self._name("alerts")

    @property
    def control(self) -> str:
        """Approved control actions for the actuator."""
        return self._name("control")

    @staticmethod
    def dlq(topic: str) -> str:
        """Dead letters of a topic: the original bytes with the reason in the headers."""
        return f"{topic}.dlq"

    @staticmethod
    def configs(topic: str) -> dict[str, str]:
        """Topic-level settings beyond partitions and retention."""
        if topic.endswith(".dlq"):
            return {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
        return {}

    def sources(self) -> list[str]:
        return [self.traffic, self.environment]

    def all(self) -> list[str]:
        return [*self.sources(), *(self.dlq(t) for t in self.sources()), self.alerts, self.control]
