"""`cityos doctor`: check every component of the platform and say, in plain words, what is wrong
and how to fix it.

    findings = diagnose(settings)      # list[Finding], one or more per component
    summary(findings)                  # one sentence for an operator

Checks, in order: PostgreSQL (reachable, migrations applied), the Kafka broker, the topics,
consumer lag of the streaming job (topic end offsets - the offsets its checkpoints have
processed), the streaming queries (recent ``stream_commits``; a supervisor alert), serving-table
freshness and silent sensors, Airflow, disk space, the models (NL-query model folder, the anomaly
model in production). A check that cannot run because what it needs is down says so (warn,
"not checked") instead of repeating the same failure. A check never raises: an unexpected error
is itself a finding, so the doctor always answers. The NL-query service calls :func:`diagnose`
and :func:`summary` to answer "is the pipeline healthy?" (``cityos.nlq.health``).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import psycopg

from cityos.db import connect
from cityos.settings import Settings
from cityos.topics import Topics

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail"]
STATUS_ORDER: dict[str, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Finding:
    """One check's verdict: what was checked, how it stands, and what to do about it."""

    component: str
    status: Status
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """When a reading becomes a warning or a failure (the defaults suit a live city)."""

    traffic_stale: timedelta = timedelta(minutes=30)  # newest traffic_5m window older: warn
    air_stale: timedelta = timedelta(hours=3)  # newest air_quality_1h window older: warn
    commit_stale: timedelta = timedelta(minutes=5)  # no batch merged for this long, with lag
    lag_warn: int = 10_000  # messages behind on one topic
    keeping_up_batches: int = 5  # a backlog growing over this many recent batches: falling behind
    keeping_up_period: timedelta = timedelta(minutes=15)  # "recent"
    disk_warn_free: float = 0.10  # share of the file system free
    disk_fail_free: float = 0.02
    disk_warn_bytes: int = 2 << 30
    disk_fail_bytes: int = 500 << 20
    timeout_s: float = 5.0


@dataclass
class _Context:
    """What one run of the checks has learnt so far (later checks depend on earlier ones)."""

    settings: Settings
    limits: Limits
    now: datetime
    airflow_url: str | None
    postgres_ok: bool = False
    broker_ok: bool = False
    topics_present: set[str] = field(default_factory=set)
    lag: dict[str, int | None] = field(default_factory=dict)  # topic -> messages behind

    def connect(self) -> psycopg.Connection:
        s = self.settings
        return connect(
            s.database_url.get_secret_value(),
            s.database_schema,
            connect_timeout=max(int(self.limits.timeout_s), 1),
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def _ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ----------------------------------------------------------------------------- PostgreSQL
def _expected_migrations() -> list[str]:
    folder = resources.files("cityos.db") / "migrations"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))


def check_postgres(ctx: _Context) -> Iterable[Finding]:
    schema = ctx.settings.database_schema
    try:
        with ctx.connect() as conn:
            conn.execute("SELECT 1")
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.schema_migrations",)
            ).fetchone()
            applied = (
                {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
                if exists and exists[0]
                else set()
            )
    except psycopg.Error as err:
        yield Finding(
            "postgres",
            "fail",
            f"PostgreSQL does not answer: {_first_line(err)}",
            "start the stack with `cityos up` (or check CITYOS_DATABASE_URL)",
        )
        return
    ctx.postgres_ok = True
    yield Finding("postgres", "ok", "PostgreSQL answers")
    missing = [name for name in _expected_migrations() if name not in applied]
    if missing:
        yield Finding(
            "migrations",
            "fail",
            f"{len(missing)} database migrations are not applied to schema {schema}: "
            f"{', '.join(missing)}",
            "run `cityos db migrate`",
        )
    else:
        yield Finding("migrations", "ok", f"all {len(applied)} migrations applied to {schema}")


# ----------------------------------------------------------------------------- Kafka
def _admin(bootstrap: str, timeout_s: float) -> Any:
    from kafka.admin import KafkaAdminClient

    ms = int(timeout_s * 1000)
    return KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="cityos-doctor",
        request_timeout_ms=ms,
        bootstrap_timeout_ms=ms,
    )


def check_broker(ctx: _Context) -> Iterable[Finding]:
    bootstrap = ctx.settings.kafka_bootstrap
    try:
        admin = _admin(bootstrap, ctx.limits.timeout_s)
        try:
            ctx.topics_present = set(admin.list_topics())
        finally:
            admin.close()
    except Exception as err:  # noqa: BLE001 - kafka-python raises many kinds when unreachable
        yield Finding(
            "kafka",
            "fail",
            f"the Kafka broker at {bootstrap} does not answer: {_first_line(err)}",
            "start the stack with `cityos up` (or check CITYOS_KAFKA_BOOTSTRAP)",
        )
        return
    ctx.broker_ok = True
    yield Finding("kafka", "ok", f"the Kafka broker at {bootstrap} answers")


def check_topics(ctx: _Context) -> Iterable[Finding]:
    wanted = Topics(ctx.settings.topic_prefix).all()
    if not ctx.broker_ok:
        yield Finding("topics", "warn", "topics not checked: the broker does not answer")
        return
    missing = [t for t in wanted if t not in ctx.topics_present]
    if missing:
        yield Finding(
            "topics",
            "fail",
            f"{len(missing)} Kafka topics are missing: {', '.join(missing)}",
            "run `cityos up`, which creates the missing topics",
        )
    else:
        yield Finding("topics", "ok", f"all {len(wanted)} topics exist")


def end_offsets(bootstrap: str, topics: list[str], timeout_s: float) -> dict[str, dict[int, int]]:
    """Per topic, partition -> end offset (the next offset to be written)."""
    from kafka import KafkaConsumer, TopicPartition

    ms = int(timeout_s * 1000)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap.split(","),
        client_id="cityos-doctor",
        enable_auto_commit=False,
        request_timeout_ms=max(ms, 1000) + 500,  # must exceed the session timeout's floor
        bootstrap_timeout_ms=ms,
    )
    try:
        parts = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = consumer.end_offsets(parts) if parts else {}
    finally:
        consumer.close()
    found: dict[str, dict[int, int]] = {t: {} for t in topics}
    for tp, offset in ends.items():
        found[tp.topic][tp.partition] = offset
    return found


def processed_offsets(checkpoint: Path, topic: str) -> dict[int, int] | None:
    """Partition -> end offset of the newest batch the query committed (None: never ran).

    A checkpoint writes ``offsets/<n>`` when batch n is planned and ``commits/<n>`` when it
    is done; the offsets of the newest committed batch are what the query has processed.
    """
    from cityos.streaming.bench import read_batch_offsets

    offsets, commits = checkpoint / "offsets", checkpoint / "commits"
    if not offsets.is_dir():
        return None
    ends = read_batch_offsets(offsets, topic)
    done = set()
    if commits.is_dir():
        done = {int(p.name) for p in commits.iterdir() if p.name.isdigit()}
    committed = sorted(b for b in ends if b in done)
    return ends[committed[-1]] if committed else None


def check_lag(ctx: _Context) -> Iterable[Finding]:
    from cityos.streaming.jobs.aggregate import query_name

    s = ctx.settings
    sources = Topics(s.topic_prefix).sources()
    if not ctx.broker_ok:
        yield Finding("consumer lag", "warn", "lag not checked: the broker does not answer")
        return
    present = [t for t in sources if t in ctx.topics_present]
    ends = end_offsets(s.kafka_bootstrap, present, ctx.limits.timeout_s) if present else {}
    for topic in present:
        name = query_name(topic)
        total = sum(ends.get(topic, {}).values())
        done = processed_offsets(s.state_dir / "checkpoints" / name, topic)
        if done is None:
            ctx.lag[topic] = total
            status: Status = "ok" if total == 0 else "warn"
            yield Finding(
                f"lag {topic}",
                status,
                f"the streaming job has never processed {topic} ({total} messages waiting)"
                if total
                else f"{topic} is empty and the job has not read it yet",
                "start the streaming job: `cityos stream run`" if total else None,
            )
            continue
        behind = sum(max(end - done.get(p, 0), 0) for p, end in ends.get(topic, {}).items())
        ctx.lag[topic] = behind
        if behind > ctx.limits.lag_warn:
            yield Finding(
                f"lag {topic}",
                "warn",
                f"the streaming job is {behind} messages behind on {topic}",
                "check that `cityos stream run` is running; if it is, it cannot keep up: raise "
                "CITYOS_MAX_OFFSETS_PER_TRIGGER or give Spark more cores (CITYOS_SPARK_MASTER)",
            )
        else:
            yield Finding(
                f"lag {topic}", "ok", f"the streaming job is {behind} messages behind on {topic}"
            )


# ----------------------------------------------------------------------------- streaming queries
def check_queries(ctx: _Context) -> Iterable[Finding]:
    from cityos.streaming.jobs.aggregate import query_name

    if not ctx.postgres_ok:
        yield Finding("streaming", "warn", "streaming queries not checked: PostgreSQL is down")
        return
    with ctx.connect() as conn:
        latest: dict[str, datetime] = dict(
            conn.execute(
                "SELECT query_name, max(committed_at) FROM stream_commits GROUP BY query_name"
            ).fetchall()
        )
        open_alerts = conn.execute(
            "SELECT count(*) FROM alerts WHERE alert_id LIKE 'pipeline_failing:%%'"
            " AND status IN ('firing', 'acknowledged')"
        ).fetchone()
    for topic in Topics(ctx.settings.topic_prefix).sources():
        name = query_name(topic)
        at = latest.get(name)
        behind = ctx.lag.get(topic)
        if at is None:
            yield Finding(
                f"query {name}",
                "warn" if behind else "ok",
                f"query {name} has not merged any batch yet"
                + (f" while {behind} messages wait" if behind else ""),
                "start the streaming job: `cityos stream run`" if behind else None,
            )
            continue
        age = ctx.now - at
        if age > ctx.limits.commit_stale and behind:
            yield Finding(
                f"query {name}",
                "fail",
                f"query {name} merged its last batch {_ago(age)} ago and {behind} messages wait: "
                "it is not running",
                "start it with `cityos stream run` (or `cityos stream supervise`); its log is "
                "in <state_dir>/logs",
            )
        else:
            idle = " (idle: nothing new to read)" if age > ctx.limits.commit_stale else ""
            yield Finding(
                f"query {name}", "ok", f"query {name} merged its last batch {_ago(age)} ago{idle}"
            )
    yield from _keeping_up(ctx)
    if open_alerts and open_alerts[0]:
        yield Finding(
            "supervisor",
            "fail",
            "the supervisor reports the streaming pipeline failing repeatedly (open "
            "pipeline_failing alert)",
            "read the job's log in <state_dir>/logs for the error; the supervisor keeps "
            "restarting it and resolves the alert once it runs again",
        )


def _keeping_up(ctx: _Context) -> Iterable[Finding]:
    """A query whose recent batches each left a growing backlog behind is falling behind: the
    batches take longer than the data takes to arrive (stream_commits.offsets_behind, written
    from Spark's progress reports)."""
    window = ctx.limits.keeping_up_batches
    with ctx.connect() as conn:
        rows = conn.execute(
            "SELECT query_name, array_agg(offsets_behind ORDER BY batch_id),"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY batch_duration_ms)"
            " FROM (SELECT query_name, batch_id, offsets_behind, batch_duration_ms,"
            "       row_number() OVER (PARTITION BY query_name ORDER BY batch_id DESC) AS n"
            "       FROM stream_commits WHERE offsets_behind IS NOT NULL"
            "        AND committed_at > %s) recent"
            " WHERE n <= %s GROUP BY query_name",
            (ctx.now - ctx.limits.keeping_up_period, window),
        ).fetchall()
    trigger = ctx.settings.trigger_seconds
    for name, behind, median_ms in rows:
        if len(behind) < window:
            continue  # too few recent batches to call a trend
        growing = all(b > a for a, b in zip(behind, behind[1:], strict=False))
        if growing and behind[-1] >= ctx.limits.lag_warn:
            took = (median_ms or 0) / 1000
            yield Finding(
                f"throughput {name}",
                "warn",
                f"query {name} is falling behind: each of its last {window} batches left more "
                f"messages unread ({behind[0]} -> {behind[-1]}); a batch takes {took:.1f} s "
                f"(trigger every {trigger:g} s)",
                "give Spark more cores (CITYOS_SPARK_MASTER, README 'Scaling out') or send fewer "
                "events; CITYOS_MAX_OFFSETS_PER_TRIGGER bounds a batch, not the backlog",
            )
        else:
            yield Finding(
                f"throughput {name}",
                "ok",
                f"query {name} keeps up ({behind[-1]} messages left by its last batch)",
            )


FRESHNESS_TABLES = (  # table, sensor kind, limit field of Limits
    ("traffic_5m", "traffic", "traffic_stale"),
    ("air_quality_1h", "air_quality", "air_stale"),
)


def check_freshness(ctx: _Context) -> Iterable[Finding]:
    if not ctx.postgres_ok:
        yield Finding("freshness", "warn", "serving tables not checked: PostgreSQL is down")
        return
    with ctx.connect() as conn:
        for table, _kind, limit_name in FRESHNESS_TABLES:
            limit: timedelta = getattr(ctx.limits, limit_name)
            row = conn.execute(
                f"WITH per_sensor AS (SELECT sensor_id, max(window_end) AS last FROM {table}"  # noqa: S608 - our names
                " GROUP BY sensor_id)"
                " SELECT max(last), count(*) FILTER (WHERE last < %s), count(*) FROM per_sensor",
                (ctx.now - limit,),
            ).fetchone()
            newest, silent, reporting = row or (None, 0, 0)  # an aggregate returns one row
            if newest is None:
                yield Finding(
                    f"freshness {table}",
                    "warn",
                    f"{table} is empty: no windows yet",
                    "start a source (`cityos stream twin` or `cityos stream replay`) and the "
                    "streaming job (`cityos stream run`)",
                )
                continue
            age = ctx.now - newest
            if age > limit:
                yield Finding(
                    f"freshness {table}",
                    "warn",
                    f"the newest window of {table} ended {_ago(age)} ago (limit {_ago(limit)}); "
                    "a replay of historical data also looks like this",
                    "check the sources and the streaming job (`cityos doctor` lag and query "
                    "lines); a live source should be running",
                )
            else:
                message = (
                    f"the newest window of {table} ended {_ago(age)} ago"
                    if age >= timedelta(0)
                    else f"the newest window of {table} is still open (it ends in {_ago(-age)})"
                )
                yield Finding(f"freshness {table}", "ok", message)
            if silent and age <= limit:
                yield Finding(
                    f"sensors {table}",
                    "warn",
                    f"{silent} of {reporting} sensors in {table} have been silent for more than "
                    f"{_ago(limit)}",
                    "their sensor_offline alerts name them; check those sources",
                )


# ----------------------------------------------------------------------------- Airflow
def check_airflow(ctx: _Context) -> Iterable[Finding]:
    if importlib.util.find_spec("airflow") is None:
        yield Finding(
            "airflow",
            "warn",
            "Airflow is not installed: the DAGs (retraining, data quality, retention) cannot run",
            "install the project with its dependencies (`pip install -e .`)",
        )
        return
    home = ctx.settings.state_dir / "airflow"
    if not (home / "airflow.db").exists():
        yield Finding(
            "airflow",
            "warn",
            f"Airflow has no metadata database in {home}",
            "run `cityos airflow migrate`, then `cityos airflow standalone`",
        )
    else:
        yield Finding("airflow", "ok", f"Airflow is installed, its home is {home}")
    if ctx.airflow_url:
        yield from _airflow_health(ctx.airflow_url, ctx.limits.timeout_s)


def _airflow_health(url: str, timeout_s: float) -> Iterable[Finding]:
    import httpx

    health = url.rstrip("/") + "/api/v2/monitor/health"
    try:
        reply = httpx.get(health, timeout=timeout_s)
        reply.raise_for_status()
        body = reply.json()
    except (httpx.HTTPError, ValueError) as err:
        yield Finding(
            "airflow api",
            "fail",
            f"the Airflow api-server at {url} does not answer: {_first_line(err)}",
            "start it: `cityos airflow standalone`",
        )
        return
    sick = sorted(
        name
        for name, part in body.items()
        if isinstance(part, dict) and part.get("status") not in (None, "healthy")
    )
    if sick:
        yield Finding(
            "airflow api",
            "fail",
            f"Airflow reports unhealthy: {', '.join(sick)}",
            "restart Airflow: `cityos airflow standalone`",
        )
    else:
        yield Finding("airflow api", "ok", f"Airflow at {url} reports healthy")


# ----------------------------------------------------------------------------- disk
def check_disk(ctx: _Context) -> Iterable[Finding]:
    s, lim = ctx.settings, ctx.limits
    places = {"state dir": s.state_dir, "lake": s.lake_dir}
    seen: set[int] = set()
    for label, path in places.items():
        probe = Path(path)  # type: ignore[arg-type]
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        device = probe.stat().st_dev
        if device in seen:
            continue
        seen.add(device)
        usage = shutil.disk_usage(probe)
        share = usage.free / usage.total if usage.total else 0.0
        text = f"{usage.free / (1 << 30):.1f} GiB free ({share:.0%}) for the {label} at {path}"
        if share < lim.disk_fail_free or usage.free < lim.disk_fail_bytes:
            status: Status = "fail"
        elif share < lim.disk_warn_free or usage.free < lim.disk_warn_bytes:
            status = "warn"
        else:
            status = "ok"
        fix = (
            None
            if status == "ok"
            else (
                "free space: the `retention` DAG trims the lake and old windows "
                "(`cityos airflow test retention`), or move CITYOS_LAKE_DIR to a larger disk"
            )
        )
        yield Finding(f"disk {label}", status, text, fix)


# ----------------------------------------------------------------------------- models
def check_models(ctx: _Context) -> Iterable[Finding]:
    s = ctx.settings
    if s.nlq_model_dir is not None:
        folders = [s.nlq_model_dir]
    else:
        from cityos.nlq.train import models_dir

        root = models_dir(s.cache_dir)
        folders = sorted(root.iterdir()) if root.is_dir() else []
    trained = [f for f in folders if (Path(f) / "model.safetensors").exists()]
    if trained:
        yield Finding("nlq model", "ok", f"NL-query model present ({Path(trained[-1]).name})")
    else:
        where = s.nlq_model_dir or "the model cache"
        yield Finding(
            "nlq model",
            "warn",
            f"no trained NL-query model in {where}: the service trains one at its first start "
            "(minutes)",
            "run `cityos nlq train` before starting the service",
        )
    if not ctx.postgres_ok:
        yield Finding("anomaly model", "warn", "model registry not checked: PostgreSQL is down")
        return
    with ctx.connect() as conn:
        row = conn.execute(
            "SELECT version, path FROM model_registry WHERE family = 'anomaly'"
            " AND status = 'production'"
        ).fetchone()
    if row is None:
        yield Finding(
            "anomaly model",
            "warn",
            "no anomaly model in production: windows are scored by untrained detectors",
            "train one: `cityos anomaly retrain --end <now, ISO-8601>` (it is promoted when it "
            "beats the current one)",
        )
    elif not Path(row[1]).exists():
        yield Finding(
            "anomaly model",
            "fail",
            f"the production anomaly model {row[0]} is registered but its folder {row[1]} is gone",
            "retrain (`cityos anomaly retrain`) or promote another (`cityos anomaly promote`)",
        )
    else:
        yield Finding("anomaly model", "ok", f"anomaly model {row[0]} in production")


# ----------------------------------------------------------------------------- running them
Check = Callable[[_Context], Iterable[Finding]]
CHECKS: tuple[tuple[str, Check], ...] = (  # order matters: later checks use what earlier learnt
    ("postgres", check_postgres),
    ("kafka", check_broker),
    ("topics", check_topics),
    ("consumer lag", check_lag),
    ("streaming", check_queries),
    ("freshness", check_freshness),
    ("airflow", check_airflow),
    ("disk", check_disk),
    ("models", check_models),
)


def diagnose(
    settings: Settings,
    *,
    airflow_url: str | None = None,
    limits: Limits | None = None,
    now: datetime | None = None,
) -> list[Finding]:
    """Every check's findings; never raises (a check that breaks is a finding itself)."""
    ctx = _Context(settings, limits or Limits(), now or datetime.now(UTC), airflow_url)
    findings: list[Finding] = []
    for name, check in CHECKS:
        try:
            findings.extend(check(ctx))
        except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
            log.exception("check %s broke", name)
            findings.append(
                Finding(
                    name,
                    "fail",
                    f"the {name} check could not run: {_first_line(err)}",
                    "run `cityos --verbose doctor` and read the error",
                )
            )
    return findings


def worst(findings: Iterable[Finding]) -> Status:
    return max((f.status for f in findings), key=STATUS_ORDER.__getitem__, default="ok")


def summary(findings: list[Finding]) -> str:
    """One sentence for an operator: healthy, or what is wrong and what to do first."""
    failed = [f for f in findings if f.status == "fail"]
    warned = [f for f in findings if f.status == "warn"]
    if not failed and not warned:
        return f"The platform is healthy: all {len(findings)} checks passed."
    top = (failed or warned)[0]
    verdict = "is not healthy" if failed else "works, with warnings"
    counts = ", ".join(
        part
        for part in (
            f"{len(failed)} failing" if failed else "",
            f"{len(warned)} warning{'s' if len(warned) != 1 else ''}" if warned else "",
        )
        if part
    )
    fix = f"; {top.fix}" if top.fix else ""
    return f"The platform {verdict} ({counts}): {top.message}{fix}."
