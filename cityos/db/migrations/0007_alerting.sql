-- Alerting and anomaly scoring (cityos/alerting, anomaly/, streaming/jobs/score.py). Internal
-- tables beside the contract's `alerts`, which stays exactly as the contract has it.

-- One row per (rule, subject): the counters that give a rule persistence and hysteresis, and the
-- alert of the episode in progress. subject is 'sensor:<id>', 'zone:<id>' or 'intersection:<id>'.
-- armed = false after an operator resolved an alert whose condition still holds: it fires again
-- only once the condition has cleared first (no flapping back to firing).
CREATE TABLE alert_state (
  rule_id      text        NOT NULL,
  subject      text        NOT NULL,
  breaches     integer     NOT NULL DEFAULT 0,   -- consecutive observations beyond the threshold
  clears       integer     NOT NULL DEFAULT 0,   -- consecutive observations past the clear level
  first_breach timestamptz,                      -- when the current run of breaches began
  alert_id     text,                             -- the open alert of this rule and subject
  armed        boolean     NOT NULL DEFAULT true,
  last_at      timestamptz NOT NULL,             -- newest observation applied (older ones are replays)
  last_value   double precision,
  PRIMARY KEY (rule_id, subject)
);

-- Transitions waiting for (or done with) the Kafka `alerts` topic, written in the transaction
-- that changed the alert: an event is never lost between PostgreSQL and Kafka.
CREATE TABLE alert_outbox (
  event_id     text        PRIMARY KEY,
  alert_id     text        NOT NULL,
  payload      bytea       NOT NULL,             -- AlertEvent JSON, as published
  created_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz
);
CREATE INDEX alert_outbox_pending ON alert_outbox (created_at) WHERE published_at IS NULL;

-- How far each sensor's closed windows have been scored (alert rules, anomaly detector).
CREATE TABLE scoring_progress (
  stream       text        NOT NULL,             -- 'traffic' | 'air'
  sensor_id    text        NOT NULL,
  scored_until timestamptz NOT NULL,             -- window_end of the newest scored window
  PRIMARY KEY (stream, sensor_id)
);

-- The anomaly score of every closed window per sensor and metric.
CREATE TABLE anomaly_scores (
  sensor_id     text             NOT NULL,
  metric        text             NOT NULL,       -- 'vehicle_count', 'avg_speed_kmh', 'pm25', ...
  window_start  timestamptz      NOT NULL,
  value         double precision NOT NULL,
  expected      double precision,                -- the model's prediction for the window
  lower         double precision,                -- its prediction interval
  upper         double precision,
  score         double precision NOT NULL,       -- 0 normal .. 1 anomalous
  model_version text             NOT NULL,
  PRIMARY KEY (sensor_id, metric, window_start)
);

-- Forecasts issued as windows close: the next windows' expected value and interval.
CREATE TABLE forecasts (
  sensor_id     text             NOT NULL,
  metric        text             NOT NULL,
  issued_at     timestamptz      NOT NULL,       -- window_end of the window that was scored
  target_start  timestamptz      NOT NULL,       -- window forecast
  expected      double precision NOT NULL,
  lower         double precision,
  upper         double precision,
  model_version text             NOT NULL,
  PRIMARY KEY (sensor_id, metric, target_start)
);

-- Each sensor's online detector state per metric: a checkpoint, saved every so often (not per
-- window: a state is tens of kB). After a restart the job loads it and replays the windows from
-- scored_until to the sensor's scoring_progress into it, without scoring them again.
CREATE TABLE detector_state (
  sensor_id     text        NOT NULL,
  metric        text        NOT NULL,
  model_version text        NOT NULL,
  state         bytea       NOT NULL,
  scored_until  timestamptz NOT NULL,             -- window_end of the newest window it has seen
  updated_at    timestamptz NOT NULL,
  PRIMARY KEY (sensor_id, metric)
);

-- The model registry: every trained version, its files, metrics and training data range.
-- Exactly one version of a family is 'production'; the streaming job follows it.
CREATE TABLE model_registry (
  family       text        NOT NULL,             -- 'anomaly'
  version      text        NOT NULL,
  path         text        NOT NULL,             -- folder with the model's files
  status       text        NOT NULL CHECK (status IN ('candidate', 'production', 'archived', 'rejected')),
  metrics      jsonb       NOT NULL,
  data_start   timestamptz,                      -- training data range
  data_end     timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  promoted_at  timestamptz,
  note         text,
  PRIMARY KEY (family, version)
);
CREATE UNIQUE INDEX model_registry_production ON model_registry (family) WHERE status = 'production';
