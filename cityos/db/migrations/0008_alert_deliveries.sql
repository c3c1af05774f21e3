-- The notifier (cityos/alerting/notify.py): every delivery of an alert event to a destination.
-- Internal table beside the contract's `alerts`.
--
-- One row per (event, destination), written as soon as the delivery ends and before the event's
-- Kafka offset is committed: a restart or a replayed event skips what is already 'delivered'.
-- destination names a webhook without its URL (secrets often live in it) or an e-mail recipient:
-- 'webhook:<host>#<hash of the URL>', 'mailto:<address>'.
-- status: 'delivered'; 'failed' after the last attempt (last_error says why); 'skipped' when the
-- event was too old to be worth sending when the notifier read it.
CREATE TABLE alert_deliveries (
  event_id         text        NOT NULL,            -- AlertEvent.event_id
  destination      text        NOT NULL,
  alert_id         text        NOT NULL,
  event_type       text        NOT NULL,            -- 'firing' | 'resolved' | ...
  status           text        NOT NULL CHECK (status IN ('delivered', 'failed', 'skipped')),
  attempts         integer     NOT NULL CHECK (attempts >= 0),  -- over every try of this pair
  last_error       text,
  first_attempt_at timestamptz NOT NULL,
  last_attempt_at  timestamptz NOT NULL,
  delivered_at     timestamptz,
  event            jsonb       NOT NULL,            -- the AlertEvent as read, to redeliver later
  PRIMARY KEY (event_id, destination)
);
CREATE INDEX alert_deliveries_alert ON alert_deliveries (alert_id);
CREATE INDEX alert_deliveries_failed ON alert_deliveries (last_attempt_at) WHERE status = 'failed';
