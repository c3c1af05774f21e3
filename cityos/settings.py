"""One settings class, read from the environment (prefix ``CITYOS_``) and the stack's env file.

This is the only module that reads the environment. The embedded stack writes the values it
generates (database URL with a random password, broker address) to ``<state_dir>/cityos.env``,
which is read after the real environment, so an explicit ``CITYOS_*`` variable always wins.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cityos.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


def _default_state_dir() -> Path:
    return REPO_ROOT / ".state"


def _default_cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cityos"


def state_dir_from_env() -> Path:
    """Where the stack keeps its state, needed before Settings can find its env file."""
    raw = os.environ.get("CITYOS_STATE_DIR")
    return Path(raw).resolve() if raw else _default_state_dir()


def cache_dir_from_env() -> Path:
    """Where downloaded jars live, needed by the stack before Settings can be complete."""
    raw = os.environ.get("CITYOS_CACHE_DIR")
    return Path(raw).resolve() if raw else _default_cache_dir()


def data_dir_from_env() -> Path:
    """The shared data, needed by commands that run without a stack (``cityos nlq train``)."""
    raw = os.environ.get("CITYOS_DATA_DIR")
    return Path(raw).resolve() if raw else SHARED_DIR / "data"


def java_home_from_env() -> Path | None:
    """The JDK to run Kafka and Spark with (the standard JAVA_HOME), or None to use PATH."""
    raw = os.environ.get("JAVA_HOME")
    return Path(raw) if raw else None


class Settings(BaseSettings):
    """Every knob of CityOS. Required values have no default; secrets are SecretStr."""

    model_config = SettingsConfigDict(env_prefix="CITYOS_", extra="ignore")

    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    data_dir: Path = Field(default_factory=lambda: SHARED_DIR / "data")

    # connections: written to <state_dir>/cityos.env by `cityos up`, or set by the operator
    kafka_bootstrap: str = Field(
        description="Kafka bootstrap servers, host:port[,host:port]",
    )
    database_url: SecretStr = Field(
        description="PostgreSQL URL of the serving database (postgresql://user:pass@host:port/db)",
    )
    topic_prefix: str = ""
    producer_client: Literal["kafka-python", "confluent"] = "kafka-python"  # streaming/producer.py

    # embedded stack ports (only `cityos up` uses them)
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    postgres_port: int = 15432
    kafka_partitions: int = Field(default=4, ge=1)
    kafka_retention_hours: int = Field(default=72, ge=1)

    # streaming
    spark_master: str = "local[2]"
    spark_shuffle_partitions: int = Field(default=4, ge=1)
    trigger_seconds: float = Field(default=2.0, gt=0)
    traffic_watermark: str = "10 minutes"
    air_watermark: str = "2 hours"
    max_future_skew_s: int = Field(default=3600, ge=0)
    earliest_event_time: str = "2000-01-01T00:00:00Z"
    max_event_bytes: int = Field(default=64 * 1024, ge=1024)
    lake_dir: Path | None = None  # raw valid events as Parquet; None means <state_dir>/lake
    max_offsets_per_trigger: int | None = Field(default=None, ge=1)  # per micro-batch; None = all
    sensor_refresh_s: float = Field(default=60.0, gt=0)  # how often the job re-reads `sensors`
    database_schema: str = "public"  # schema holding the serving tables (tests use one per test)

    # the traffic twin
    twin_network: str = "cologne8"
    twin_speedup: float = Field(default=60.0, gt=0)
    twin_start: str | None = None  # ISO-8601 UTC for simulated t=0; default: now
    # an approved signal change the controller has not applied this many seconds after its
    # approval fails instead (streaming/control.py): an approval is a decision about the traffic
    # of its time, not of whenever the controller comes back; at most a day (an older approval
    # never describes the traffic now); rollbacks, which restore an approved plan, are not bounded
    control_max_delay_s: float = Field(default=900.0, gt=0, le=86400)
    aqi_standard: Literal["us_epa", "china_hj633"] = "us_epa"

    # NL-query service (nlq/service.py; tokens, actions and audit in the tables of 0005)
    nlq_host: str = "127.0.0.1"
    nlq_port: int = Field(default=8080, ge=1, le=65535)
    nlq_rate_per_minute: int = Field(default=120, ge=1)  # per token; bursts of as many
    nlq_action_ttl_s: int = Field(default=900, ge=1)  # a proposal not approved by then expires
    nlq_min_cycle_s: float = Field(default=30.0, gt=0)  # signal cycle bounds after a change
    nlq_max_cycle_s: float = Field(default=180.0, gt=0)
    nlq_max_question_chars: int = Field(default=2000, ge=1)
    nlq_db_pool_size: int = Field(default=4, ge=1)  # connections the service keeps
    nlq_whatif_minutes: float = Field(default=30.0, ge=0, le=240)  # per proposal; 0: no what-if
    nlq_model_dir: Path | None = None  # a trained model folder; None: the one for this code

    # anomaly scoring and alerting (streaming/jobs/score.py, cityos/alerting, anomaly/)
    score_windows: bool = True  # the streaming job scores closed windows and raises alerts
    alert_rules_file: Path | None = None  # None: the packaged cityos/alerting/rules.toml
    forecast_minutes: int = Field(default=60, ge=5, le=360)  # predictive alerts look this far
    detector_checkpoint_s: float = Field(default=60.0, gt=0)  # detector states saved this often
    model_dir: Path | None = None  # registered model versions; None means <state_dir>/models

    # alert notifier (cityos/alerting/notify.py, `cityos alerts notify`)
    notify_webhooks: list[str] = []  # URLs POSTed each event's JSON; env: a JSON list
    notify_webhook_secret: SecretStr | None = None  # HMAC-SHA256 key of X-CityOS-Signature
    notify_smtp_host: str | None = None  # the relay; None: no e-mail
    notify_smtp_port: int = Field(default=587, ge=1, le=65535)
    notify_smtp_security: Literal["starttls", "ssl", "none"] = "starttls"  # ssl: port 465
    notify_smtp_user: str | None = None  # log in when set
    notify_smtp_password: SecretStr | None = None
    notify_smtp_ca_file: Path | None = None  # a private CA for the relay; None: the system's
    notify_email_from: str | None = None  # required with a relay
    notify_email_to: list[str] = []  # one e-mail per recipient and event; env: a JSON list
    notify_events: list[Literal["firing", "updated", "acknowledged", "resolved"]] = [
        "firing",
        "updated",  # an escalation to a higher severity (an open alert's severity only rises)
        "resolved",
    ]
    notify_max_attempts: int = Field(default=5, ge=1)  # per event and destination
    notify_backoff_s: float = Field(default=1.0, ge=0)  # first retry wait, doubling (+ jitter)
    notify_backoff_max_s: float = Field(default=30.0, ge=0)
    notify_max_elapsed_s: float = Field(default=120.0, ge=0)  # retries of one delivery end then
    notify_timeout_s: float = Field(default=10.0, gt=0)  # one HTTP request / SMTP session
    # a destination that was down gets the events it missed, oldest first, once it answers
    notify_resend_batch: int = Field(default=100, ge=1)  # rows per pass and destination
    notify_resend_interval_s: float = Field(default=30.0, ge=0)  # passes besides new events
    notify_max_event_age_s: float | None = Field(default=None, gt=0)  # older `at`: 'skipped'

    # lake and Airflow (streaming/lake.py, dags/, cityos/airflow.py)
    lake_retention_days: int = Field(default=30, ge=1)  # raw lake dates older than this go
    retrain_lookback_days: int = Field(default=14, ge=1)  # the retrain DAG's training data
    retrain_holdout_hours: int = Field(default=24, ge=1)  # its last part, held out to compare
    airflow_port: int = Field(default=8088, ge=1, le=65535)  # `cityos airflow standalone` UI/API
    airflow_url: str | None = None  # an Airflow api-server for `cityos doctor`; None: not checked

    # operations (cityos/metrics.py, streaming/supervisor.py, cityos/doctor.py)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus; None: off
    metrics_host: str = "127.0.0.1"  # compose sets 0.0.0.0 inside its network
    supervisor_max_failures: int = Field(default=5, ge=1)  # failures in the window -> alert
    supervisor_window_s: float = Field(default=900.0, gt=0)
    supervisor_backoff_s: float = Field(default=5.0, ge=0)  # first restart wait, doubling
    supervisor_backoff_max_s: float = Field(default=300.0, ge=0)
    supervisor_healthy_after_s: float = Field(default=300.0, gt=0)  # resets back-off, resolves

    # Grafana (cityos/grafana, `cityos grafana push`)
    grafana_url: str | None = None  # base URL of an existing Grafana
    grafana_token: SecretStr | None = None  # a service-account token with editor rights
    grafana_db_host: str | None = None  # host:port of PostgreSQL as Grafana reaches it
    grafana_db_user: str = "grafana_reader"  # the read-only role dashboards query as
    grafana_db_password: SecretStr | None = None  # that role's password; never the owner's

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_is_postgres(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _default_lake_dir(self) -> Settings:
        if self.lake_dir is None:
            self.lake_dir = self.state_dir / "lake"
        if self.model_dir is None:
            self.model_dir = self.state_dir / "models"
        return self

    @model_validator(mode="after")
    def _retention_keeps_the_retrain_data(self) -> Settings:
        # the retrain of day D (and its rerun after the retention of D+1) reads its look-back
        needed = self.retrain_lookback_days + -(-self.retrain_holdout_hours // 24) + 1
        if self.lake_retention_days < needed:
            raise ValueError(
                f"CITYOS_LAKE_RETENTION_DAYS={self.lake_retention_days} would expire lake dates"
                f" the anomaly retrain still reads: it needs at least {needed} days (the"
                f" look-back CITYOS_RETRAIN_LOOKBACK_DAYS={self.retrain_lookback_days} + the"
                f" held-out CITYOS_RETRAIN_HOLDOUT_HOURS={self.retrain_holdout_hours} h + 1 day)"
            )
        return self

    @property
    def env_file(self) -> Path:
        return self.state_dir / "cityos.env"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as the stack writes them; comments and blanks skipped."""
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    return values


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, then the stack's env file; a clear error names the setting."""
    file_values = read_env_file(state_dir_from_env() / "cityos.env")
    merged: dict[str, object] = {}
    for key, value in file_values.items():
        if key.startswith("CITYOS_") and key not in os.environ:
            merged[key.removeprefix("CITYOS_").lower()] = value
    merged.update(overrides)
    try:
        return Settings(**merged)  # type: ignore[arg-type]
    except ValidationError as err:
        first = err.errors()[0]
        name = "CITYOS_" + str(first["loc"][0]).upper() if first["loc"] else "CITYOS_*"
        hint = ""
        if first["type"] == "missing":
            hint = " (start the embedded stack with `cityos up`, or export it)"
        raise ConfigError(name, first["msg"] + hint) from err


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
