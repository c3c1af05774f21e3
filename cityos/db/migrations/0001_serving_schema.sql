-- The serving tables: ../shared/contracts/serving-schema.md (public contract, v1), verbatim.
-- Names, types, units and meanings are fixed there; add columns or tables, never rename.

CREATE TABLE cities (
  city_id   text PRIMARY KEY,            -- 'cologne'
  name      text NOT NULL,               -- 'Cologne'
  local_name text,                       -- 'Köln'
  timezone  text NOT NULL,               -- IANA name, 'Europe/Berlin'; "today" means today here
  aqi_standard text NOT NULL             -- 'us_epa' | 'china_hj633' | 'eu_eaqi': how aqi is computed
);

CREATE TABLE zones (
  zone_id        text PRIMARY KEY,       -- 'cologne-stb-5', 'cologne-stt-502'
  city_id        text NOT NULL REFERENCES cities,
  name           text NOT NULL,          -- 'Nippes'
  local_name     text,                   -- name in the local script, e.g. '朝阳区'
  level          text NOT NULL,          -- 'district' | 'subdistrict' | 'special' (e.g. low-emission zone)
  parent_zone_id text REFERENCES zones,  -- a subdistrict's district
  geometry       text NOT NULL,          -- GeoJSON Polygon/MultiPolygon
  area_km2       double precision NOT NULL
);

CREATE TABLE intersections (           -- signalised intersections
  intersection_id text PRIMARY KEY,      -- the signal controller's id
  city_id   text NOT NULL REFERENCES cities,
  name      text NOT NULL,               -- 'Neusser Str. / Wilhelmstr.'
  zone_id   text REFERENCES zones,       -- smallest zone that contains it
  latitude  double precision NOT NULL,
  longitude double precision NOT NULL
);

CREATE TABLE signal_phases (            -- the plan in force now: its green phases only
  intersection_id text NOT NULL REFERENCES intersections,
  phase_index  integer NOT NULL,         -- 0-based over the green phases, in cycle order
  description  text NOT NULL,            -- e.g. 'Neusser Str. north-south through'
  green_s      double precision NOT NULL,
  intergreen_s double precision NOT NULL, -- yellow + all-red after this green; cycle = Σ(green_s + intergreen_s)
  min_green_s  double precision NOT NULL,
  max_green_s  double precision NOT NULL,
  PRIMARY KEY (intersection_id, phase_index)
);

CREATE TABLE sensors (
  sensor_id  text PRIMARY KEY,
  city_id    text NOT NULL REFERENCES cities,
  kind       text NOT NULL,              -- 'traffic' | 'air_quality'
  name       text NOT NULL,              -- 'Neusser Str. southbound at Wilhelmstr.', 'Dongsi'
  zone_id    text REFERENCES zones,      -- smallest zone that contains it
  road_name  text,                       -- traffic sensors: the street
  intersection_id text REFERENCES intersections, -- traffic sensors on a signal approach
  latitude   double precision NOT NULL,
  longitude  double precision NOT NULL
);

CREATE TABLE traffic_5m (               -- 5-minute event-time windows per traffic sensor
  sensor_id    text NOT NULL REFERENCES sensors,
  zone_id      text,                     -- copied from sensors.zone_id
  window_start timestamptz NOT NULL,
  window_end   timestamptz NOT NULL,
  vehicle_count    integer NOT NULL,     -- vehicles counted (smart-data-models: intensity)
  avg_speed_kmh    double precision,     -- NULL when no vehicle passed
  occupancy        double precision,     -- 0..1 share of time the detector was occupied
  congestion_index double precision,     -- 0 free flow .. 1 standstill; definition documented by the project
  PRIMARY KEY (sensor_id, window_start)
);

CREATE TABLE air_quality_1h (           -- hourly event-time windows per air-quality station
  sensor_id    text NOT NULL REFERENCES sensors,
  zone_id      text,
  window_start timestamptz NOT NULL,
  window_end   timestamptz NOT NULL,
  pm25 double precision, pm10 double precision, no2 double precision,
  o3 double precision, so2 double precision, co double precision,   -- µg/m³, NULL if not measured
  temperature_c double precision, relative_humidity double precision, wind_speed_ms double precision,
  aqi          integer,                  -- air quality index under cities.aqi_standard
  aqi_category text,                     -- that standard's category name ('Unhealthy', 'Lightly Polluted', ...)
  PRIMARY KEY (sensor_id, window_start)
);

CREATE TABLE alerts (
  alert_id   text PRIMARY KEY,
  kind       text NOT NULL,              -- 'congestion' | 'air_quality' | 'anomaly' | 'sensor_offline' | 'manual'
  severity   text NOT NULL,              -- 'info' | 'warning' | 'critical'
  status     text NOT NULL,              -- 'firing' | 'acknowledged' | 'resolved'
  city_id    text NOT NULL REFERENCES cities,
  zone_id    text, sensor_id text, intersection_id text,
  metric     text, value double precision, threshold double precision, -- value: the reading that raised it
  message    text NOT NULL,
  started_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  resolved_at timestamptz
);
