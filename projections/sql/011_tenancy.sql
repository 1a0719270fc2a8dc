-- Tenancy (ADR 0051): the tenant of each workflow, run and node, from WorkflowRegistered v2,
-- RunStarted v3 and NodeCatalogEntry v2. Rows projected before tenancy belong to 'default'
-- (the events they came from carry no tenant, and decode with that default).
-- Mutations, replays and diagnoses belong to their workflow's tenant (joined, not copied).

ALTER TABLE workflows ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE runs ADD COLUMN tenant text NOT NULL DEFAULT 'default';
-- A node name belongs to the tenant of its first registered version ('default': the
-- platform's catalog, visible to every tenant).
ALTER TABLE nodes ADD COLUMN tenant text NOT NULL DEFAULT 'default';

CREATE INDEX workflows_tenant_idx ON workflows (tenant, workflow_id);
CREATE INDEX runs_tenant_started_idx ON runs (tenant, started_at DESC, run_id DESC);
CREATE INDEX runs_tenant_workflow_started_idx
    ON runs (tenant, workflow_id, started_at DESC, run_id DESC);
