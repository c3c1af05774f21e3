-- Approved signal changes reach the controller through Kafka (streaming/control.py): the service
-- marks them 'sent' when the control topic has them, the controller 'applied' once it read the
-- new plan back; `cityos actions rollback` restores the plan before an applied change
-- ('rolled_back'). A proposal may carry the twin's prediction of its effect (what_if).
--
-- status: 'proposed' -> 'approved' -> 'sent' -> 'applied' -> 'rolled_back'; 'failed' when the
-- controller refused or could not be reached.

ALTER TABLE actions ADD COLUMN what_if jsonb;  -- the simulated effect, filled before approval

ALTER TABLE actions DROP CONSTRAINT actions_status_check;
ALTER TABLE actions ADD CONSTRAINT actions_status_check
  CHECK (status IN ('proposed', 'rejected', 'approved', 'sent', 'applied', 'failed', 'expired',
                    'superseded', 'rolled_back'));

-- a change handed to the controller still holds its intersection until it is confirmed
DROP INDEX actions_one_pending_per_intersection;
CREATE UNIQUE INDEX actions_one_pending_per_intersection ON actions (intersection_id)
  WHERE status IN ('proposed', 'approved', 'sent');

ALTER TABLE action_audit DROP CONSTRAINT action_audit_step_check;
ALTER TABLE action_audit ADD CONSTRAINT action_audit_step_check
  CHECK (step IN ('propose', 'reject_invalid', 'approve', 'reject', 'send', 'apply', 'fail',
                  'expire', 'supersede', 'rollback'));
