-- Execution and queue timeouts (docs/decisions/0013-execution-and-queue-timeouts.md): a step is
-- 'running' once a worker started its attempt (StepStarted). started_at now says when the worker
-- started it; dispatched_at says when the invocation was sent (what started_at held before).
-- Rows written before this migration keep their started_at (the dispatch time, the best known).

ALTER TABLE steps ADD COLUMN dispatched_at timestamptz;
ALTER TABLE steps ADD COLUMN worker text;  -- the worker process running the current attempt
UPDATE steps SET dispatched_at = started_at WHERE started_at IS NOT NULL;

ALTER TABLE steps DROP CONSTRAINT steps_status_check;
ALTER TABLE steps ADD CONSTRAINT steps_status_check
    CHECK (status IN ('scheduled', 'dispatched', 'running', 'retry_wait', 'succeeded', 'failed',
                      'skipped', 'timed_out', 'cancelled'));

DROP INDEX steps_status_idx;
CREATE INDEX steps_status_idx ON steps (status)
    WHERE status IN ('scheduled', 'dispatched', 'running', 'retry_wait');
