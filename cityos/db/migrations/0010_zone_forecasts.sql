-- Zone forecasts (streaming/jobs/score.py): the per-sensor forecasts of `forecasts` combined per
-- zone, for the zone-level predictive alerts (cityos/alerting/rules.toml, `*_forecast_zone`).
-- A zone's sensors are those whose zone is it or one of its sub-zones (sensors.zone_id, then
-- zones.parent_zone_id upwards), as the contract defines "in zone X".
--
-- Written in the transaction that writes the sensor forecasts, recomputed for every zone and
-- target that transaction touched from the sensors' newest forecasts of that target, and upserted
-- on the key: replaying a batch rewrites the same rows.
CREATE TABLE zone_forecasts (
  zone_id       text             NOT NULL,
  metric        text             NOT NULL,       -- as in forecasts: 'congestion_index', 'pm25'
  target_start  timestamptz      NOT NULL,       -- window forecast
  issued_at     timestamptz      NOT NULL,       -- newest issued_at of the sensor forecasts combined
  expected      double precision NOT NULL,       -- mean of the sensors' expected values
  lower         double precision,                -- mean of their interval bounds: the interval of
  upper         double precision,                -- the mean if the sensors' errors move together,
                                                 -- wider than it otherwise (conservative)
  sensors       integer          NOT NULL,       -- how many sensors' forecasts were combined
  model_version text             NOT NULL,       -- the sensors' model version(s), comma-separated
  PRIMARY KEY (zone_id, metric, target_start)
);
