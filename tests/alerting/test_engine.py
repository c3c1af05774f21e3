"""The alert lifecycle against real PostgreSQL and Kafka, fed a real Beijing PM2.5 record."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from cityos.alerting.engine import AlertEngine, Observation, OutboxPublisher
from cityos.alerting.events import AlertEvent
from cityos.alerting.rules import RuleError, Verdict, load_rules
from cityos.db import connect
from cityos.settings import data_dir_from_env
from cityos.streaming.jobs.aqi import aqi
from tests.sql import scalar

DONGSI = "beijing-aq-dongsi"
TZ = "Asia/Shanghai"


# ----------------------------------------------------------------------------- rules as data
def test_the_packaged_rules_load_and_judge_with_hysteresis() -> None:
    rules = load_rules()
    assert {"aqi", "congestion", "speed_drop", "anomaly", "pm25_forecast", "sensor_offline"} <= set(
        rules
    )
    aqi_rule = rules["aqi"]
    assert aqi_rule.judge(151) is Verdict.BREACH
    assert aqi_rule.judge(145) is Verdict.BAND  # between clear (141) and threshold
    assert aqi_rule.judge(141) is Verdict.CLEAR
    assert aqi_rule.severity_of(160) == "warning" and aqi_rule.severity_of(230) == "critical"
    speed = rules["speed_drop"]  # a '<=' rule: low is bad
    assert speed.judge(0.3) is Verdict.BREACH and speed.judge(0.6) is Verdict.CLEAR
    offline = rules["sensor_offline"]  # thresholds per sensor kind
    assert offline.judge(20, "traffic") is Verdict.BREACH
    assert offline.judge(100, "air_quality") is Verdict.BAND
    assert offline.judge(200, "air_quality") is Verdict.BREACH
    # zone predictive rules: judged like their sensor rules, only for zones of 2+ sensors
    for zone_rule, sensor_rule in (
        ("pm25_forecast_zone", "pm25_forecast"),
        ("congestion_forecast_zone", "congestion_forecast"),
    ):
        zone, sensor = rules[zone_rule], rules[sensor_rule]
        assert (zone.kind, zone.metric, zone.levels) == (sensor.kind, sensor.metric, sensor.levels)
        assert zone.min_sensors == 2 and sensor.min_sensors == 1
    assert rules["pm25_forecast_zone"].judge(150) is Verdict.BREACH
    assert rules["pm25_forecast_zone"].judge(130) is Verdict.BAND


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('id = "x"\nkind = "congestion"\nop = ">"', "op"),
        ('id = "x"\nkind = "traffic_jam"\nop = ">="', "kind"),
        (
            'id = "x"\nkind = "congestion"\nop = ">="\nseverity = "warning"\nfire_after = 0',
            "fire_after",
        ),
        (
            'id = "x"\nkind = "congestion"\nop = ">="\nseverity = "warning"\nfire_after = 1\n'
            'clear_after = 1\nmetric = "m"\nmessage = "m"\nthreshold = 1\nclear = 2',
            "clear",
        ),
        (
            'id = "x"\nkind = "congestion"\nop = ">="\nseverity = "warning"\nfire_after = 1\n'
            "clear_after = 1\nmin_sensors = 0",
            "min_sensors",
        ),
    ],
)
def test_a_bad_rule_file_names_the_rule_and_the_field(
    tmp_path: Path, body: str, names: str
) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]]\n" + body + "\n")
    with pytest.raises(RuleError, match=rf"'x'.*{names}"):
        load_rules(path)


# ----------------------------------------------------------------------------- lifecycle
def dongsi_hours(start: str, end: str) -> list[tuple[datetime, int, str]]:
    """(hour in UTC, AQI, category) of Dongsi under China HJ 633, from the PRSA file."""
    folder = data_dir_from_env() / "beijing-air-quality-prsa"
    df = pd.read_csv(next(folder.glob("PRSA_Data_Dongsi_*.csv")))
    df["at"] = pd.to_datetime(df[["year", "month", "day", "hour"]]).dt.tz_localize(TZ)
    df = df[(df["at"] >= pd.Timestamp(start, tz=TZ)) & (df["at"] < pd.Timestamp(end, tz=TZ))]
    hours = []
    for row in df.itertuples(index=False):
        index, category = aqi(
            "china_hj633",
            {
                "pm25": None if pd.isna(row[5]) else float(row[5]),
                "pm10": None if pd.isna(row[6]) else float(row[6]),
            },
        )
        if index is not None:
            hours.append(
                (row.at.tz_convert(UTC).to_pydatetime() + timedelta(hours=1), index, category)
            )
    return hours


@pytest.fixture
def beijing(database_url: str, pg_schema: str) -> str:
    """The Beijing city, its districts and its 12 PRSA stations in this test's schema."""
    from cityos.streaming.sources.registry import open_city, write_city, write_sensors
    from cityos.streaming.sources.replay import beijing_sensors

    data_dir = data_dir_from_env()
    city = open_city("beijing", data_dir)
    with connect(database_url, pg_schema) as conn:
        write_city(conn, city)
        write_sensors(conn, city, beijing_sensors(data_dir))
    return pg_schema


def observe_hourly(engine: AlertEngine, url: str, schema: str, hours) -> list[AlertEvent]:
    events = []
    with connect(url, schema) as conn:
        for at, index, category in hours:  # one call per closing window, as the job makes them
            events += engine.observe(
                conn,
                [
                    Observation(
                        "aqi",
                        "beijing",
                        index,
                        at,
                        sensor_id=DONGSI,
                        detail={"category": category},
                    )
                ],
                now=at,
            )
    return events


@pytest.mark.integration
def test_a_winter_month_of_dongsi_fires_once_per_episode_and_resolves_with_hysteresis(
    database_url: str, beijing: str
) -> None:
    hours = dongsi_hours("2013-12-01", "2014-01-01")
    engine = AlertEngine(load_rules())
    events = observe_hourly(engine, database_url, beijing, hours)
    rule = engine.rules["aqi"]

    fired = [e for e in events if e.type == "firing"]
    resolved = [e for e in events if e.type == "resolved"]
    crossings = sum(
        1 for (_, a, _), (_, b, _) in zip(hours, hours[1:], strict=False) if a < 151 <= b
    )
    assert fired, "December 2013 had smog episodes in Beijing: some hour must fire"
    # de-duplication and hysteresis: fewer alerts than upward crossings of the threshold
    assert len(fired) < crossings
    by_hour = {at: index for at, index, _ in hours}
    ordered = [at for at, _, _ in hours]
    for event in fired:
        assert by_hour[event.at] >= 151
        assert event.alert.sensor_id == DONGSI and event.alert.zone_id is not None
        assert "Dongsi" in event.alert.message and event.alert.threshold == 151
    for event in resolved:  # each resolution follows clear_after hours at or below 141
        i = ordered.index(event.at)
        assert all(by_hour[at] <= 141 for at in ordered[i - rule.clear_after + 1 : i + 1])
    # an open alert only escalates, and the update carries the reading that raised it
    updated = [e for e in events if e.type == "updated"]
    assert updated, "December 2013 had episodes that fired below AQI 201 and passed it"
    for event in updated:
        value = by_hour[event.at]
        assert event.alert.severity == "critical" == rule.severity_of(value)
        assert event.alert.value == value and f"is {value}" in event.alert.message
    assert len({e.alert.alert_id for e in updated}) == len(updated)  # once per alert
    # and the month has the case: after an escalation, hours back below 201 yet still at or
    # above 151 (a breach) while the alert stayed open, which used to flap it to warning
    ends = {e.alert.alert_id: e.at for e in resolved}
    far = datetime.max.replace(tzinfo=UTC)
    assert any(
        151 <= by_hour[at] < 201
        for e in updated
        for at in ordered
        if e.at < at < ends.get(e.alert.alert_id, far)
    )
    # alternation: never two open alerts of one subject
    kinds = [e.type for e in events if e.type in ("firing", "resolved")]
    assert all(a != b for a, b in zip(kinds, kinds[1:], strict=False))

    with connect(database_url, beijing) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM alerts WHERE sensor_id = %s GROUP BY status",
            (DONGSI,),
        ).fetchall()
        outbox = scalar(conn, "SELECT count(*) FROM alert_outbox")
        latest = {  # each alert's last transition is what its row says
            alert_id: (severity, value, message)
            for alert_id, severity, value, message in conn.execute(
                "SELECT alert_id, severity, value, message FROM alerts"
            ).fetchall()
        }
    last = {e.alert.alert_id: e.alert for e in events}
    assert latest == {i: (a.severity, a.value, a.message) for i, a in last.items()}
    counts: dict[str, int] = dict(rows)
    assert counts.get("resolved", 0) == len(resolved)
    assert counts.get("firing", 0) == len(fired) - len(resolved)
    assert outbox == len(events)

    # replaying the whole month is harmless: nothing new fires, nothing is duplicated
    assert observe_hourly(engine, database_url, beijing, hours) == []


@pytest.mark.integration
def test_acknowledged_alerts_resolve_and_operator_resolution_disarms(
    database_url: str, beijing: str
) -> None:
    hours = dongsi_hours("2013-12-01", "2014-01-01")
    engine = AlertEngine(load_rules())
    first_fire = next(i for i, h in enumerate(hours) if h[1] >= 151)
    events = observe_hourly(engine, database_url, beijing, hours[: first_fire + 1])
    alert_id = events[-1].alert.alert_id
    with connect(database_url, beijing) as conn:  # an operator acknowledges it
        conn.execute("UPDATE alerts SET status = 'acknowledged' WHERE alert_id = %s", (alert_id,))
        conn.commit()
    # run on until the episode ends: the acknowledged alert resolves by itself
    rest = hours[first_fire + 1 :]
    later = observe_hourly(engine, database_url, beijing, rest)
    ends = next(e for e in later if e.alert.alert_id == alert_id and e.type == "resolved")
    assert ends.alert.status == "resolved"

    # again from the start: this time an operator resolves the alert while the smog persists
    with connect(database_url, beijing) as conn:
        conn.execute("DELETE FROM alert_state")
        conn.execute("DELETE FROM alerts")
        conn.commit()
    long = next(i for i in range(len(hours) - 2) if min(h[1] for h in hours[i : i + 3]) >= 151)
    (event,) = observe_hourly(engine, database_url, beijing, hours[long : long + 1])
    with connect(database_url, beijing) as conn:
        conn.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = updated_at WHERE alert_id = %s",
            (event.alert.alert_id,),
        )
        conn.commit()
    clean = next(i for i in range(long + 1, len(hours)) if hours[i][1] <= 141)
    assert observe_hourly(engine, database_url, beijing, hours[long + 1 : clean]) == []
    # once the air has cleared, the rule is armed again and the next episode fires
    after = observe_hourly(engine, database_url, beijing, hours[clean:])
    assert any(e.type == "firing" for e in after)


@pytest.mark.integration
def test_transitions_reach_the_alerts_topic_through_the_outbox(
    settings, database_url: str, beijing: str
) -> None:
    from confluent_kafka import Consumer

    hours = dongsi_hours("2013-12-01", "2013-12-15")
    engine = AlertEngine(load_rules())
    events = observe_hourly(engine, database_url, beijing, hours)
    assert events
    from cityos.topics import Topics

    topic = Topics(settings.topic_prefix).alerts
    publisher = OutboxPublisher(settings.kafka_bootstrap, topic)
    with connect(database_url, beijing) as conn:
        assert publisher.publish_pending(conn) == len(events)
        assert publisher.publish_pending(conn) == 0  # published once
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received: list[AlertEvent] = []
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while len(received) < len(events) and datetime.now(UTC) < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            value = msg.value()
            assert value is not None
            received.append(AlertEvent.from_json(value))
            assert msg.key() == received[-1].alert.alert_id.encode()
    consumer.close()
    assert sorted(e.event_id for e in received) == sorted(e.event_id for e in events)


# ----------------------------------------------------------------------------- event order
def one_alerts_transitions(
    engine: AlertEngine, url: str, schema: str, *, batch: bool
) -> list[AlertEvent]:
    """An AQI alert at Dongsi that fires (160), escalates (230) and resolves (two hours at 100):
    written in one transaction (one batch of the job), else one per hour."""
    start = datetime(2013, 12, 1, tzinfo=UTC)
    hours = [
        (start + timedelta(hours=n), index, "")
        for n, index in enumerate((160, 230, 100, 100), start=1)
    ]
    if not batch:
        return observe_hourly(engine, url, schema, hours)
    with connect(url, schema) as conn:
        observations = [
            Observation("aqi", "beijing", index, at, sensor_id=DONGSI, detail={"category": "x"})
            for at, index, _ in hours
        ]
        return engine.observe(conn, observations, now=start)


def read_topic(bootstrap: str, topic: str, count: int) -> list[AlertEvent]:
    """The first ``count`` events of the topic, in the order a consumer gets them."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{topic}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    received: list[AlertEvent] = []
    deadline = datetime.now(UTC) + timedelta(seconds=60)
    while len(received) < count and datetime.now(UTC) < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            received.append(AlertEvent.from_json(msg.value() or b""))
    consumer.close()
    return received


@pytest.mark.integration
def test_an_alerts_transitions_of_one_batch_reach_the_topic_in_order(
    settings, database_url: str, beijing: str
) -> None:
    from cityos.topics import Topics

    events = one_alerts_transitions(AlertEngine(load_rules()), database_url, beijing, batch=True)
    assert [e.type for e in events] == ["firing", "updated", "resolved"]
    topic = Topics(settings.topic_prefix).alerts
    publisher = OutboxPublisher(settings.kafka_bootstrap, topic)
    with connect(database_url, beijing) as conn:
        assert publisher.publish_pending(conn) == 3
    publisher.close()
    # one transaction, one created_at: "resolved" used to sort before "updated" (event_id text)
    received = read_topic(settings.kafka_bootstrap, topic, 3)
    assert [e.event_id for e in received] == [e.event_id for e in events]


@pytest.mark.integration
def test_a_second_publisher_never_overtakes_one_still_sending(
    settings, database_url: str, beijing: str
) -> None:
    """One publisher holds the alert's firing event, its broker not answering; another one
    called meanwhile must not send the alert's later events ahead of it."""
    from cityos.topics import Topics

    events = one_alerts_transitions(AlertEngine(load_rules()), database_url, beijing, batch=False)
    assert [e.type for e in events] == ["firing", "updated", "resolved"]
    topic = Topics(settings.topic_prefix).alerts
    stuck = OutboxPublisher("127.0.0.1:9", topic, timeout_s=3.0)  # nothing listens there
    name = f"stuck-{uuid.uuid4().hex[:8]}"

    def publish_into_the_void() -> None:
        with connect(database_url, beijing, application_name=name) as conn:
            stuck.publish_pending(conn, limit=1)  # the firing event: never acknowledged

    first = threading.Thread(target=publish_into_the_void)
    first.start()
    with connect(database_url, beijing, autocommit=True) as watch:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while datetime.now(UTC) < deadline:  # until it holds its row and waits for the broker
            state = watch.execute(
                "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchone()
            if state and state[0] == "idle in transaction" and "FROM alert_outbox" in state[1]:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the first publisher never took its row")
    second = OutboxPublisher(settings.kafka_bootstrap, topic)
    with connect(database_url, beijing) as conn:
        assert second.publish_pending(conn) == 0  # it leaves the outbox to the one at work
        first.join(30)
        assert second.publish_pending(conn) == 3  # and drains it, in order, once that one is done
    second.close()
    stuck.close()
    received = read_topic(settings.kafka_bootstrap, topic, 3)
    assert [e.event_id for e in received] == [e.event_id for e in events]
