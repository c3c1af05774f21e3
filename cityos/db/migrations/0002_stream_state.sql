-- Internal state of the streaming job (streaming/jobs): not part of the serving contract.

-- The speed limit per traffic sensor (for the congestion index) is the internal table
-- sensor_speed_limits of 0003, written by the sources when they register sensors; a sensor
-- without one gets 50 km/h. The contract tables stay exactly as the contract has them.

-- One row per micro-batch merged into PostgreSQL, written in the batch's own transaction: a
-- batch found here is skipped on replay, so a restart from the checkpoint never double counts.
-- watermark: the topic's event-time watermark after the batch (max event time - lateness).
CREATE TABLE stream_commits (
  query_name   text        NOT NULL,
  batch_id     bigint      NOT NULL,
  watermark    timestamptz,
  valid_rows   bigint      NOT NULL,
  dead_letters bigint      NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (query_name, batch_id)
);

-- Additive partial sums per 5-minute window; traffic_5m is recomputed from them.
CREATE TABLE traffic_5m_acc (
  sensor_id        text             NOT NULL,
  window_start     timestamptz      NOT NULL,
  window_end       timestamptz      NOT NULL,
  vehicles         bigint           NOT NULL,
  speed_x_vehicles double precision NOT NULL,
  speed_vehicles   bigint           NOT NULL,
  speed_sum        double precision NOT NULL,
  speed_n          bigint           NOT NULL,
  occupancy_sum    double precision NOT NULL,
  occupancy_n      bigint           NOT NULL,
  readings         bigint           NOT NULL,
  PRIMARY KEY (sensor_id, window_start)
);

-- Additive partial sums per hour; air_quality_1h is recomputed from them.
CREATE TABLE air_quality_1h_acc (
  sensor_id    text        NOT NULL,
  window_start timestamptz NOT NULL,
  window_end   timestamptz NOT NULL,
  pm25_sum double precision NOT NULL, pm25_n bigint NOT NULL,
  pm10_sum double precision NOT NULL, pm10_n bigint NOT NULL,
  no2_sum  double precision NOT NULL, no2_n  bigint NOT NULL,
  o3_sum   double precision NOT NULL, o3_n   bigint NOT NULL,
  so2_sum  double precision NOT NULL, so2_n  bigint NOT NULL,
  co_sum   double precision NOT NULL, co_n   bigint NOT NULL,
  temperature_c_sum     double precision NOT NULL, temperature_c_n     bigint NOT NULL,
  relative_humidity_sum double precision NOT NULL, relative_humidity_n bigint NOT NULL,
  wind_speed_ms_sum     double precision NOT NULL, wind_speed_ms_n     bigint NOT NULL,
  readings     bigint      NOT NULL,
  PRIMARY KEY (sensor_id, window_start)
);
