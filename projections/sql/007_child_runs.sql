-- Child runs (meta.workflow, meta.loop; docs/decisions/0025-child-runs-and-the-scheduler-outbox.md):
-- a child run records its parent (RunStarted v2 `parent`). The link is on the child's row; a
-- parent's children are found through the index. Runs written before this migration have none.

ALTER TABLE runs ADD COLUMN parent_run_id text;
ALTER TABLE runs ADD COLUMN parent_step_id text;
ALTER TABLE runs ADD COLUMN parent_attempt integer;
ALTER TABLE runs ADD COLUMN parent_iteration integer;

CREATE INDEX runs_parent_idx ON runs (parent_run_id, started_at, run_id)
    WHERE parent_run_id IS NOT NULL;
