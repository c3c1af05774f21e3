-- Internal state of the streaming job: each sensor's event-time progress per query. A reading
-- older than its own sensor's latest event time minus the allowed lateness is late (it goes to
-- the dead-letter topic with reason 'late'). Per sensor rather than per topic, so one source
-- far ahead (a live twin) never makes another (a replay, a sensor that reconnects) late.
-- Written in the same transaction as the batch's stream_commits row.
CREATE TABLE sensor_watermarks (
  query_name     text        NOT NULL,
  sensor_id      text        NOT NULL,
  max_event_time timestamptz NOT NULL,
  PRIMARY KEY (query_name, sensor_id)
);
