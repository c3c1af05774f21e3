"""Every Kafka topic CityOS uses, named in one place.

A prefix isolates one deployment or one test from another on a shared broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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


def checkpoint_end_offsets(offsets_file: Path, topic: str) -> dict[int, int]:
    """{partition: end offset (exclusive)} of one topic in one batch of a Spark query, from the
    batch's file in the checkpoint's offset log (``<checkpoint>/offsets/<batch id>``: a version
    line, the batch metadata, then one JSON line per source). Spark writes it before the batch
    runs."""
    lines = offsets_file.read_text().splitlines()
    sources = [json.loads(line) for line in lines[2:] if line.startswith("{")]
    return {int(p): o for source in sources for p, o in source.get(topic, {}).items()}


def checkpoint_batch_time(offsets_file: Path) -> datetime | None:
    """The time Spark gave the batch when it planned it (``batchTimestampMs`` of the offset
    log's metadata line), or None when the file has none. A batch replayed after a crash keeps
    it, as it keeps its offsets: what is judged against it is judged the same way again."""
    try:
        meta = json.loads(offsets_file.read_text().splitlines()[1])
        return datetime.fromtimestamp(int(meta["batchTimestampMs"]) / 1000, UTC)
    except (OSError, IndexError, KeyError, TypeError, ValueError):
        return None
