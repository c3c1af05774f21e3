-- Internal (not part of the serving contract): the posted speed limit at each traffic sensor,
-- written by the sources when they register sensors. The congestion index of traffic_5m is
-- clip(1 - avg_speed_kmh / speed_limit_kmh, 0, 1), so the streaming job needs it per sensor.
CREATE TABLE IF NOT EXISTS sensor_speed_limits (
  sensor_id       text PRIMARY KEY REFERENCES sensors ON DELETE CASCADE,
  speed_limit_kmh double precision NOT NULL CHECK (speed_limit_kmh > 0)
);
