"""Slot words -> closed values: metrics, aggregations, groupings, orders, alert vocabularies.

The model says *which words* are the metric, the grouping, ...; these tables say what those words
mean. Each table is (pattern, value) tried in order, first hit wins, on the folded slot text.
"""

from __future__ import annotations

import re

from cityos.nlq.plan import Aggregation, GroupBy, Order

Table = list[tuple[re.Pattern[str], object]]


def _t(*pairs: tuple[str, object]) -> Table:
    return [(re.compile(p), v) for p, v in pairs]


METRIC = _t(
    (r"wind", "wind_speed_ms"),
    (r"humid", "relative_humidity"),
    (r"temp|degrees|warm|cold", "temperature_c"),
    (r"pm\s*2\s*[.,]?\s*5|fine partic|pm25", "pm25"),
    (r"pm\s*10|coarse", "pm10"),
    (r"no2|nitrogen", "no2"),
    (r"\bo3\b|ozone", "o3"),
    (r"so2|sul(ph|f)ur", "so2"),
    (r"\bco\b|carbon monoxide", "co"),
    (r"aqi|air quality|pollut|smog|air", "aqi"),
    (r"congest|jam|gridlock", "congestion_index"),
    (r"occupan", "occupancy"),
    (r"speed|fast|slow|km/?h", "avg_speed_kmh"),
    (r"vehicle|car|traffic|volume|count|flow|busy|intensity", "vehicle_count"),
)
METRIC_UNITS = {
    "avg_speed_kmh": "km/h", "vehicle_count": "vehicles", "occupancy": "", "congestion_index": "",
    "pm25": "µg/m³", "pm10": "µg/m³", "no2": "µg/m³", "o3": "µg/m³", "so2": "µg/m³",
    "co": "µg/m³", "aqi": "", "temperature_c": "°C", "relative_humidity": "%",
    "wind_speed_ms": "m/s",
}  # fmt: skip
METRIC_NAMES = {
    "avg_speed_kmh": "speed", "vehicle_count": "vehicles", "occupancy": "occupancy",
    "congestion_index": "congestion index", "pm25": "PM2.5", "pm10": "PM10", "no2": "NO2",
    "o3": "O3", "so2": "SO2", "co": "CO", "aqi": "AQI", "temperature_c": "temperature",
    "relative_humidity": "relative humidity", "wind_speed_ms": "wind speed",
}  # fmt: skip
AGGREGATION = _t(
    (r"how many|number of|total|sum|overall|combined|altogether", Aggregation.SUM),
    (r"max|highest|peak|top|most", Aggregation.MAX),
    (r"min|lowest|smallest|least", Aggregation.MIN),
    (r"av(era)?g|mean|typical", Aggregation.AVG),
)
# "which X": the places a ranking or filter is over
ENTITY = _t(
    (r"sub-?district|neighbou?rhood|quarter|stadtteil", "subdistrict"),
    (r"district|borough|zone|area|region", "district"),
    (r"intersection|junction|crossing|signal|traffic light", "intersection"),
    (r"street|road|avenue", "street"),
    (r"station|sensor|detector|loop|site|monitor", "sensor"),
    (r"city|cities", "city"),
)
GROUP = _t(
    (r"hour", GroupBy.HOUR),
    (r"\bday|daily", GroupBy.DAY),
    (r"sub-?district|neighbou?rhood|quarter", GroupBy.ZONE),
    (r"district|borough|zone|area", GroupBy.DISTRICT),
    (r"intersection|junction|crossing", GroupBy.INTERSECTION),
    (r"street|road", GroupBy.STREET),
    (r"station|sensor|detector|loop|site", GroupBy.SENSOR),
)
ALERT_GROUP = _t(
    (r"kind|type|categor", "kind"), (r"severit", "severity"), (r"status|state", "status")
)
ORDER = _t(
    (r"least|lowest|fewest|smallest|minimum|quietest|shortest|cleanest|best|fastest|"
     r"emptiest|calmest", Order.ASC),
    (r".", Order.DESC),
)  # fmt: skip
# an order word that also names the metric ("busiest" = most vehicles)
ORDER_METRIC = _t(
    (r"busiest|quietest|emptiest", "vehicle_count"),
    (r"slowest|fastest", "avg_speed_kmh"),
    (r"congested|gridlock", "congestion_index"),
    (r"polluted|cleanest|worst air|best air|smoggiest|dirtiest", "aqi"),
)
# "fastest" is the highest speed: the word's direction, for speed, is reversed
ORDER_FLIP = re.compile(r"fastest|best")
COMPARE = _t(
    (r"at least|no less than|>=|minimum of", ">="),
    (r"at most|no more than|<=|maximum of", "<="),
    (r"above|over|more than|higher than|greater than|exceed|beyond|>|worse than", ">"),
    (r"below|under|less than|lower than|beneath|fell|drop|<|slower than", "<"),
)
ALERT_STATUS = _t(
    (r"not ack|unack|pending|new", ("firing",)),
    (
        r"not resolved|unresolved|still open|\bopen|outstanding|active|live|current",
        ("firing", "acknowledged"),
    ),
    (r"fir(ing|ed)|raised|triggered", ("firing",)),
    (r"ack", ("acknowledged",)),
    (r"resolved|closed|cleared|done|finished|over", ("resolved",)),
)  # fmt: skip
ALERT_KIND = _t(
    (r"congest|traffic|jam", "congestion"),
    (r"air|pollut|smog|aqi|pm|no2|ozone", "air_quality"),
    (r"anomal|unusual|strange", "anomaly"),
    (r"offline|silent|dead|no data|outage|sensor", "sensor_offline"),
    (r"manual|operator|road ?works|closure|incident|event", "manual"),
)
SEVERITY = _t(
    (r"critical|severe|high|urgent|emergency", "critical"),
    (r"warn|medium|moderate", "warning"),
    (r"info|minor|low|notice", "info"),
)
ALERT_OP = _t(
    (r"ack|confirm|take|seen|noted", "acknowledge"),
    (r"resolv|close|clear|dismiss|done|finish|over|fixed|end", "resolve"),
    (r"raise|create|open|issue|send|new|add|post", "raise"),
)
PHASE_ATTRIBUTE = _t(
    (r"max", "max_green_s"),
    (r"min", "min_green_s"),
    (r"intergreen|yellow|amber|all-?red|clearance", "intergreen_s"),
    (r"cycle", "cycle"),
    (r".", "green_s"),
)
MOVEMENT = _t(
    (r"left", "left turns"),
    (r"right", "right turns"),
    (r"through|straight|main|ahead", "through"),
)
NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "twelve": 12, "fifteen": 15, "twenty": 20, "thirty": 30,
}  # fmt: skip
NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?|\b(" + "|".join(NUMBER_WORDS) + r")\b")


def lookup(table: Table, text: str) -> object | None:
    low = text.lower()
    for pattern, value in table:
        if pattern.search(low):
            return value
    return None


def number(text: str) -> float | None:
    m = NUMBER.search(text.lower())
    if not m:
        return None
    if m.group(1):
        return float(NUMBER_WORDS[m.group(1)])
    return float(m.group().replace(",", "."))
