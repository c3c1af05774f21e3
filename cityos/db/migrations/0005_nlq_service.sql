-- The NL-query service's own state (nlq/): API tokens, the audit log of questions and replies,
-- control actions and their audit trail. Not part of the serving contract, and no foreign key
-- into the serving tables: the evaluation fixture drops and recreates those.

-- A token is shown once, when created; only its SHA-256 is kept.
CREATE TABLE api_tokens (
  token_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name         text        NOT NULL,          -- who holds it: a person or a service ('eval')
  role         text        NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
  token_sha256 text        NOT NULL UNIQUE,   -- hex digest of the token
  created_at   timestamptz NOT NULL DEFAULT now(),
  revoked_at   timestamptz,
  last_used_at timestamptz
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Every question asked through /api/v1/ask and the reply it got.
CREATE TABLE nlq_audit (
  audit_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  asked_at    timestamptz      NOT NULL DEFAULT now(),
  token_id    bigint           REFERENCES api_tokens,
  token_name  text             NOT NULL,
  role        text             NOT NULL,
  question    text             NOT NULL,      -- as received (NUL and lone surrogates replaced)
  as_of       timestamptz,                    -- NULL when the request's as_of was unreadable
  reply_kind  text             NOT NULL,      -- 'answer' | 'action' | 'clarification' | 'refusal'
  sql         text,                           -- answers: the Spark SQL executed
  row_count   integer,
  latency_ms  double precision NOT NULL,
  reply       jsonb            NOT NULL,      -- the reply exactly as sent
  error_id    text                            -- set when answering failed; also in the log
);
CREATE INDEX nlq_audit_by_token_name ON nlq_audit (token_name, asked_at DESC);

-- Control actions: proposed from an instruction, validated, approved or rejected by a person.
-- status: 'proposed' -> 'approved' -> 'applied' | 'failed'; or 'rejected' (by validation or by
-- an operator) or 'expired' (not approved within the TTL) or 'superseded' (a newer valid proposal
-- for the same intersection replaced it before anyone approved it).
CREATE TABLE actions (
  action_id       text        PRIMARY KEY,
  kind            text        NOT NULL CHECK (kind IN ('signal_timing', 'alert')),
  status          text        NOT NULL
                  CHECK (status IN ('proposed', 'rejected', 'approved', 'applied', 'failed',
                                    'expired', 'superseded')),
  target          jsonb       NOT NULL,       -- {"intersection_id"} | {"alert_id"} | {"zone_id"}
  params          jsonb       NOT NULL,
  reason          text        NOT NULL,       -- why rejected, or what it would change
  summary         text,                       -- the pipeline's reading of the instruction
  question        text,
  intersection_id text,                       -- signal_timing: one pending change per signal
  proposed_by     text        NOT NULL,       -- token name
  proposed_at     timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  decided_by      text,
  decided_at      timestamptz,
  applied_at      timestamptz,
  note            text                        -- e.g. why an approved change was not applied
);
CREATE UNIQUE INDEX actions_one_pending_per_intersection ON actions (intersection_id)
  WHERE status IN ('proposed', 'approved');
CREATE INDEX actions_by_status ON actions (status, proposed_at DESC);

-- Every step of every action: who, when, and the target's state before and after.
CREATE TABLE action_audit (
  audit_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  action_id     text        NOT NULL REFERENCES actions,
  step          text        NOT NULL
                CHECK (step IN ('propose', 'reject_invalid', 'approve', 'reject', 'apply',
                                'fail', 'expire', 'supersede', 'rollback')),
  actor         text        NOT NULL,         -- token name, or 'system' (expiry)
  actor_role    text,
  at            timestamptz NOT NULL,
  status_before text,
  status_after  text        NOT NULL,
  before        jsonb,                        -- the target's state before the step
  after         jsonb,                        -- and after it (a proposal: as it would be)
  note          text
);
CREATE INDEX action_audit_by_action ON action_audit (action_id, audit_id);
