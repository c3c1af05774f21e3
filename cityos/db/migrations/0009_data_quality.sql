-- Data-quality results of the `data_quality` DAG (cityos/quality.py): one row per check, sensor
-- and data interval, upserted, so a re-run or a backfill of an interval replaces its own rows.
--   freshness     value = minutes from the sensor's newest window end to the interval end
--   completeness  value = windows present / windows expected in the interval (0..1)
--   out_of_range  value = windows with a reading outside its plausible range (details: per column)
--   silent        value = minutes the sensor has been silent at the interval end (0: reporting;
--                 NULL: it never reported); feeds the `sensor_offline` alert rule
CREATE TABLE data_quality_checks (
  check_name     text             NOT NULL,
  sensor_id      text             NOT NULL,
  interval_start timestamptz      NOT NULL,
  interval_end   timestamptz      NOT NULL,
  passed         boolean          NOT NULL,
  value          double precision,
  threshold      double precision,
  details        jsonb            NOT NULL DEFAULT '{}',
  checked_at     timestamptz      NOT NULL,
  PRIMARY KEY (check_name, sensor_id, interval_start, interval_end)
);
CREATE INDEX data_quality_checks_failed ON data_quality_checks (interval_start) WHERE NOT passed;
