-- How long each micro-batch took and how far behind its topic it was, for the pipeline-health
-- dashboard (issue 6). Internal state of the streaming job: the contract tables do not change.
--
-- batch_started_at   wall-clock time the job's foreachBatch began the batch; written with the
--                    row (the claim in the merge transaction). committed_at (0002) is that
--                    transaction's start, so committed_at - batch_started_at is the batch's work
--                    before its PostgreSQL merge (validate, lake, DLQ, window sums).
-- batch_duration_ms  Spark's duration of the whole micro-batch (progress batchDuration: trigger
--                    start to progress report, including offset planning, the merge, the score
--                    stage and the checkpoint commit).
-- offsets_behind     messages already in the topic when Spark planned the batch that the batch
--                    left for later ones: the sum over the source's partitions of its latest
--                    offset - the batch's end offset (0: the batch read everything there was).
--
-- The last two come from Spark's progress report, after the batch: the job's listener fills them
-- with an UPDATE of this row. They stay NULL when the report never arrived (a crash between the
-- merge and the report; PostgreSQL down then) and for rows written before this migration.
ALTER TABLE stream_commits
  ADD COLUMN batch_started_at  timestamptz,
  ADD COLUMN batch_duration_ms bigint CHECK (batch_duration_ms >= 0),
  ADD COLUMN offsets_behind    bigint CHECK (offsets_behind >= 0);

-- The dashboards read stream_commits by commit time.
CREATE INDEX stream_commits_committed_at ON stream_commits (committed_at);
