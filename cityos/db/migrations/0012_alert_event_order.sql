-- Alert events in order, and none lost at a destination that was down (cityos/alerting).
--
-- alert_outbox.seq: the order events were queued in. created_at is the writing transaction's
-- start, shared by every event it wrote (a 'firing', 'updated' and 'resolved' of one alert in one
-- batch), so ordering by it and then event_id put 'resolved' before 'updated'. One alert's events
-- are written under a lock of its row (alert_state / alerts), so their seq follows their commit
-- order. Existing rows are numbered in their old order.
ALTER TABLE alert_outbox ADD COLUMN seq bigint;
UPDATE alert_outbox o SET seq = ordered.n
  FROM (SELECT event_id, row_number() OVER (ORDER BY created_at, event_id) AS n
          FROM alert_outbox) ordered
 WHERE o.event_id = ordered.event_id;
ALTER TABLE alert_outbox ALTER COLUMN seq SET NOT NULL;
ALTER TABLE alert_outbox ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('alert_outbox', 'seq'), coalesce(max(seq), 0) + 1, false)
  FROM alert_outbox;
DROP INDEX alert_outbox_pending;
CREATE INDEX alert_outbox_pending ON alert_outbox (seq) WHERE published_at IS NULL;

-- alert_deliveries.resend: a 'failed' delivery the notifier sends again, oldest first, once the
-- destination answers: its failure may pass (no answer, refused connection, HTTP 5xx/408/425/429,
-- SMTP 4xx), or it was held back behind such (attempts 0) so that it does not overtake them.
-- false for a refusal for good (HTTP 4xx, SMTP 5xx: sending again gets the same answer), and for
-- rows written before this migration (they are not re-sent).
ALTER TABLE alert_deliveries ADD COLUMN resend boolean NOT NULL DEFAULT false;
CREATE INDEX alert_deliveries_resend ON alert_deliveries (destination, first_attempt_at, event_id)
  WHERE resend;
